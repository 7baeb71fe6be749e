"""The protocol's entity client RPCs (``SignalEntity``, ``GetEntity``, ``QueryEntities``,
``CleanEntityStorage``) on the engine's client operations; for entities that native workers run
and for those that SDK workers run alike (they share one store)."""

from __future__ import annotations

import datetime as _dt
from typing import Any

import grpc
from durabletask.internal import orchestrator_service_pb2 as pb

from .._client import AsyncClient
from .._core.entities import EntityState
from . import convert

#: the most entities one QueryEntities page holds when the request names no page size
DEFAULT_PAGE = 100
_SCAN_ALL = 1_000_000


def _time(value: Any) -> _dt.datetime:
    return value.ToDatetime(tzinfo=_dt.UTC)  # type: ignore[no-any-return]


def entity_metadata(state: EntityState, include_state: bool) -> pb.EntityMetadata:
    meta = pb.EntityMetadata(
        instanceId=str(state.entity_id),
        lastModifiedTime=convert.timestamp_of(state.last_modified_at),
        backlogQueueSize=state.backlog,
    )
    if state.locked_by:
        meta.lockedBy.value = state.locked_by
    text = convert.to_json(state.state)
    if include_state and text is not None:
        meta.serializedState.value = text
    return meta


def _normalised_prefix(prefix: str) -> str:
    """An entity id prefix with the name part lower-cased, as entity ids are stored."""
    if not prefix.startswith("@"):
        return prefix
    name, sep, key = prefix[1:].partition("@")
    return f"@{name.lower()}{sep}{key}"


class EntityRpcs:
    """Entity client RPCs; mixed into the service, which sets :attr:`client`."""

    client: AsyncClient

    async def SignalEntity(self, request: pb.SignalEntityRequest, context: Any) -> pb.SignalEntityResponse:
        value = convert.json_value(convert.optional_text(request, "input"))
        at = _time(request.scheduledTime) if request.HasField("scheduledTime") else None
        try:
            await self.client.signal_entity(
                request.instanceId,
                request.name,
                input=value,
                signal_at=at,
                signal_id=request.requestId or None,
            )
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return pb.SignalEntityResponse()

    async def GetEntity(self, request: pb.GetEntityRequest, context: Any) -> pb.GetEntityResponse:
        try:
            state = await self.client.get_entity(request.instanceId)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if state is None:
            return pb.GetEntityResponse(exists=False)
        return pb.GetEntityResponse(exists=True, entity=entity_metadata(state, request.includeState))

    async def QueryEntities(self, request: pb.QueryEntitiesRequest, context: Any) -> pb.QueryEntitiesResponse:
        """Entities with a state, most recently modified first; ``includeTransient`` adds nothing
        (an entity without a state is not kept)."""
        query = request.query
        token = query.continuationToken.value if query.HasField("continuationToken") else ""
        try:
            offset = int(token or 0)
        except ValueError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad continuation token {token!r}")
        size = (
            query.pageSize.value if query.HasField("pageSize") and query.pageSize.value > 0 else DEFAULT_PAGE
        )
        prefix = _normalised_prefix(convert.optional_text(query, "instanceIdStartsWith") or "")
        lo = _time(query.lastModifiedFrom) if query.HasField("lastModifiedFrom") else None
        hi = _time(query.lastModifiedTo) if query.HasField("lastModifiedTo") else None
        filtered = bool(prefix or lo or hi)
        states = await self.client.list_entities(limit=_SCAN_ALL if filtered else offset + size + 1)
        matching = [
            s
            for s in states
            if str(s.entity_id).startswith(prefix)
            and (lo is None or s.last_modified_at >= lo)
            and (hi is None or s.last_modified_at <= hi)
        ]
        page = matching[offset : offset + size]
        out = pb.QueryEntitiesResponse(entities=[entity_metadata(s, query.includeState) for s in page])
        if len(matching) > offset + size:
            out.continuationToken.value = str(offset + size)
        return out

    async def CleanEntityStorage(
        self, request: pb.CleanEntityStorageRequest, context: Any
    ) -> pb.CleanEntityStorageResponse:
        """Nothing to clean on this engine: an entity whose state is deleted is removed in the same
        commit, and an orchestration's locks are released when it ends (completes, fails, is
        terminated or continues as new), so there are no empty entities or orphaned locks."""
        return pb.CleanEntityStorageResponse(emptyEntitiesRemoved=0, orphanedLocksReleased=0)
