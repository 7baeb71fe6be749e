"""The client's queries: orchestrations by status, name, creation time and tags, in stable pages;
entities by name, key prefix and last modification; the clean-up of entity storage.

A page costs one pipelined round of index range reads (O(log n + page) on each partition, see
:mod:`durable._store.listing`) and one of hash reads. The filter that picks the index (a tag, else
the name, else the status) is exact; further filters (a second tag, the name beside a tag) are
applied to what the index returned, so such a page may hold fewer than ``limit`` instances: go on
while :attr:`OrchestrationPage.continuation_token` is not None.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ._core.entities import EntityId, EntityRecord, EntityState
from ._core.model import (
    FailureDetails,
    OrchestrationState,
    OrchestrationStatus,
    datetime_to_ms,
    decode_tags,
    ms_to_datetime,
    tag_index_part,
)
from ._core.serialization import decode, is_blob_ref, unpack_record
from ._store import listing
from ._store.store import Store

StatusFilter = OrchestrationStatus | str | Sequence[OrchestrationStatus | str] | None

#: index rounds one page may take when filters beyond the index drop instances
_MAX_ROUNDS = 8
_TOKEN_PREFIX = {"o": "o1:", "e": "e1:"}


class OrchestrationPage(list[OrchestrationState]):
    """One page of :meth:`AsyncClient.list_orchestrations`: a list of states, newest first, and the
    token of the next page (None on the last page)."""

    def __init__(self, items: Sequence[OrchestrationState] = (), continuation_token: str | None = None):
        super().__init__(items)
        self.continuation_token = continuation_token


class EntityPage(list[EntityState]):
    """One page of entities (in entity id order) and the token of the next (None on the last)."""

    def __init__(self, items: Sequence[EntityState] = (), continuation_token: str | None = None):
        super().__init__(items)
        self.continuation_token = continuation_token


def make_token(kind: str, position: str) -> str:
    return base64.urlsafe_b64encode((_TOKEN_PREFIX[kind] + position).encode()).decode().rstrip("=")


def parse_token(kind: str, token: str | None) -> str | None:
    """The position in a continuation token; ValueError for a token of another query or garbage."""
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError(f"invalid continuation token {token[:40]!r}") from None
    prefix = _TOKEN_PREFIX[kind]
    if not text.startswith(prefix) or len(text) == len(prefix):
        raise ValueError(f"invalid continuation token {token[:40]!r}")
    return text[len(prefix) :]


# -- orchestration states ------------------------------------------------------------------------
async def resolved(store: Store, fields: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """Replace references to large payloads by the payloads."""
    for key in (b"input", b"output", b"custom"):
        if is_blob_ref(fields.get(key)):
            fields[key] = await store.resolve(fields[key]) or b""
    return fields


def state_from(instance_id: str, f: dict[bytes, bytes]) -> OrchestrationState:
    """An instance hash's fields as an :class:`OrchestrationState` (payloads decoded)."""

    def payload(key: bytes) -> Any:
        raw = f.get(key)
        return decode(raw) if raw else None

    failure_raw = f.get(b"failure")
    parent_raw = f.get(b"parent")
    scheduled = f.get(b"scheduled")
    status = f.get(b"status", b"PENDING").decode()
    if status == OrchestrationStatus.CONTINUED_AS_NEW.value:
        status = OrchestrationStatus.RUNNING.value
    return OrchestrationState(
        instance_id=instance_id,
        name=f.get(b"name", b"").decode(),
        runtime_status=OrchestrationStatus(status),
        input=payload(b"input"),
        output=payload(b"output"),
        custom_status=payload(b"custom"),
        failure_details=FailureDetails.from_record(unpack_record(failure_raw)) if failure_raw else None,
        created_at=ms_to_datetime(int(f.get(b"created", b"0"))),
        last_updated_at=ms_to_datetime(int(f.get(b"updated", b"0"))),
        scheduled_start_at=ms_to_datetime(int(scheduled)) if scheduled else None,
        parent_instance_id=unpack_record(parent_raw).get("iid") if parent_raw else None,
        tags=decode_tags(f.get(b"tags")),
        version=f.get(b"ver", b"").decode(),
    )


def _statuses(status: StatusFilter) -> list[str] | None:
    if status is None:
        return None
    items = [status] if isinstance(status, (str, OrchestrationStatus)) else list(status)
    out: set[str] = set()
    for s in items:
        value = OrchestrationStatus(s.upper() if isinstance(s, str) else s).value
        out.add(OrchestrationStatus.RUNNING.value if value == "CONTINUED_AS_NEW" else value)
    return sorted(out) or None


def _indexes(statuses: list[str] | None, name: str | None, tags: dict[str, str]) -> list[str]:
    """The query indexes whose union holds every match (the most selective filter picks them)."""
    if tags:
        part = tag_index_part(*sorted(tags.items())[0])
        return [f"ts:{s}:{part}" for s in statuses] if statuses else [f"t:{part}"]
    if name is not None:
        return [f"ns:{s}:{name}" for s in statuses] if statuses else [f"n:{name}"]
    if statuses:
        return [f"s:{s}" for s in statuses]
    return ["all"]


async def list_orchestrations(
    store: Store,
    *,
    status: StatusFilter = None,
    name: str | None = None,
    created_from: _dt.datetime | None = None,
    created_to: _dt.datetime | None = None,
    tags: dict[str, str] | None = None,
    limit: int = 100,
    continuation_token: str | None = None,
) -> OrchestrationPage:
    """One page of instances, newest first (see :meth:`AsyncClient.list_orchestrations`)."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    statuses = _statuses(status)
    tags = dict(tags or {})
    for key, value in tags.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"tags must map str to str: {key!r}: {value!r}")
    lo = datetime_to_ms(created_from) if created_from is not None else None
    hi = datetime_to_ms(created_to) if created_to is not None else None
    indexes = _indexes(statuses, name, tags)
    after = parse_token("o", continuation_token)
    out: list[OrchestrationState] = []
    more = True
    for _ in range(_MAX_ROUNDS):
        members, more = await listing.orchestration_members(store, indexes, lo, hi, after, limit - len(out))
        if not members:
            more = False
            break
        after = members[-1]
        ids = [listing.member_id(m) for m in members]
        for iid, fields in zip(ids, await store.get_instances(ids), strict=True):
            if not fields or b"status" not in fields:
                continue  # purged meanwhile
            state = state_from(iid, await resolved(store, fields))
            if _matches(state, statuses, name, lo, hi, tags):
                out.append(state)
        if len(out) >= limit or not more:
            break
    return OrchestrationPage(out, make_token("o", after) if more and after else None)


def _matches(
    state: OrchestrationState,
    statuses: list[str] | None,
    name: str | None,
    lo: int | None,
    hi: int | None,
    tags: dict[str, str],
) -> bool:
    """The filters, checked against the instance itself (it may have moved since the index read)."""
    created = datetime_to_ms(state.created_at)
    return (
        (statuses is None or state.runtime_status.value in statuses)
        and (name is None or state.name == name)
        and (lo is None or created >= lo)
        and (hi is None or created <= hi)
        and all(state.tags.get(k) == v for k, v in tags.items())
    )


# -- entities ------------------------------------------------------------------------------------
def _entity_range(name: str | None, key_prefix: str | None) -> str:
    """The id prefix every match starts with (a lex range of the entity index)."""
    if name is None:
        return "@"
    if "@" in name or not name:
        raise ValueError(f"invalid entity name {name!r}")
    return f"@{name.lower()}@{key_prefix or ''}"


async def _entity_states(
    store: Store,
    ids: Sequence[str],
    include_state: bool,
    key_prefix: str | None,
    lo: int | None,
    hi: int | None,
) -> list[EntityState]:
    out: list[EntityState] = []
    for target, (main, control) in zip(
        ids, await listing.entity_records(store, ids, include_state), strict=True
    ):
        try:
            entity_id = EntityId.parse(target)
            state = EntityRecord.from_fields(main, control).to_state(entity_id)
        except ValueError:
            continue
        if state is None:
            continue  # deleted meanwhile
        if key_prefix is not None and not entity_id.key.startswith(key_prefix):
            continue
        modified = datetime_to_ms(state.last_modified_at)
        if (lo is not None and modified < lo) or (hi is not None and modified > hi):
            continue
        out.append(state)
    return out


async def entity_page(
    store: Store,
    *,
    name: str | None = None,
    key_prefix: str | None = None,
    last_modified_from: _dt.datetime | None = None,
    last_modified_to: _dt.datetime | None = None,
    include_state: bool = True,
    limit: int = 100,
    continuation_token: str | None = None,
) -> EntityPage:
    """One page of entities in entity id order (stable while entities change)."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    prefix = _entity_range(name, key_prefix)
    post_prefix = key_prefix if name is None else None
    lo = datetime_to_ms(last_modified_from) if last_modified_from is not None else None
    hi = datetime_to_ms(last_modified_to) if last_modified_to is not None else None
    after = parse_token("e", continuation_token)
    out: list[EntityState] = []
    more = True
    for _ in range(_MAX_ROUNDS):
        ids, more = await listing.entity_ids(store, prefix, after, limit - len(out))
        if not ids:
            more = False
            break
        after = ids[-1]
        out.extend(await _entity_states(store, ids, include_state, post_prefix, lo, hi))
        if len(out) >= limit or not more:
            break
    return EntityPage(out, make_token("e", after) if more and after else None)


async def list_entities(
    store: Store,
    *,
    name: str | None = None,
    key_prefix: str | None = None,
    last_modified_from: _dt.datetime | None = None,
    last_modified_to: _dt.datetime | None = None,
    include_state: bool = True,
    limit: int = 100,
) -> list[EntityState]:
    """Entities of a name (and key prefix) in id order; without those, the most recently modified
    first (see :meth:`AsyncClient.list_entities`)."""
    if name is not None or key_prefix is not None:
        out: list[EntityState] = []
        token: str | None = None
        while len(out) < limit:
            page = await entity_page(
                store,
                name=name,
                key_prefix=key_prefix,
                last_modified_from=last_modified_from,
                last_modified_to=last_modified_to,
                include_state=include_state,
                limit=limit - len(out),
                continuation_token=token,
            )
            out.extend(page)
            token = page.continuation_token
            if token is None:
                break
        return out[:limit]
    lo = datetime_to_ms(last_modified_from) if last_modified_from is not None else None
    hi = datetime_to_ms(last_modified_to) if last_modified_to is not None else None
    rows = await listing.recent_entity_ids(store, lo, hi, limit)
    states = await _entity_states(store, [e for e, _ in rows], include_state, None, lo, hi)
    return states[:limit]


async def clean_entity_storage(
    store: Store, *, remove_empty: bool = True, release_orphaned_locks: bool = True
) -> tuple[int, int]:
    """(entities removed, locks released); see :meth:`AsyncClient.clean_entity_storage`."""
    released = 0
    if release_orphaned_locks:
        for entity_id in await listing.control_entities(store, locked_only=True):
            pk = store.keys_for(entity_id)
            raw = (await store.load_records(pk.index, [pk.entity_control(entity_id)]))[0].get(b"l")
            if not raw:
                continue
            request_id, orchestration_id = (str(x) for x in unpack_record(raw))
            owner = await store.get_instance(orchestration_id)
            status = (owner or {}).get(b"status", b"").decode()
            if owner and status and not OrchestrationStatus(status).is_terminal:
                continue  # the holder is alive: its lock is not orphaned
            await listing.send_unlock(store, entity_id, request_id, orchestration_id)
            released += 1
    removed = 0
    if remove_empty:
        for entity_id in await listing.control_entities(store, locked_only=False):
            if await listing.remove_empty_entity(store, entity_id):
                removed += 1
    return removed, released


class AsyncQueries:
    """The query methods of :class:`~durable.AsyncClient`."""

    if TYPE_CHECKING:  # provided by the client this mixin is part of

        async def _get_store(self) -> Store: ...

    async def list_orchestrations(
        self,
        *,
        status: StatusFilter = None,
        name: str | None = None,
        created_from: _dt.datetime | None = None,
        created_to: _dt.datetime | None = None,
        tags: dict[str, str] | None = None,
        limit: int = 100,
        continuation_token: str | None = None,
    ) -> OrchestrationPage:
        """One page of instances, newest first, filtered by status(es), name, creation time and
        tags (every given tag must match). The list's ``continuation_token`` (None on the last page)
        asks for the next page; paging is stable while instances start and finish."""
        return await list_orchestrations(
            await self._get_store(),
            status=status,
            name=name,
            created_from=created_from,
            created_to=created_to,
            tags=tags,
            limit=limit,
            continuation_token=continuation_token,
        )

    async def query_orchestrations(
        self,
        *,
        status: StatusFilter = None,
        name: str | None = None,
        created_from: _dt.datetime | None = None,
        created_to: _dt.datetime | None = None,
        tags: dict[str, str] | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[OrchestrationState]:
        """Every instance that matches, newest first, read a page at a time."""
        token: str | None = None
        while True:
            page = await self.list_orchestrations(
                status=status,
                name=name,
                created_from=created_from,
                created_to=created_to,
                tags=tags,
                limit=page_size,
                continuation_token=token,
            )
            for state in page:
                yield state
            token = page.continuation_token
            if token is None:
                return

    async def list_entities(
        self,
        *,
        name: str | None = None,
        key_prefix: str | None = None,
        last_modified_from: _dt.datetime | None = None,
        last_modified_to: _dt.datetime | None = None,
        include_state: bool = True,
        limit: int = 100,
    ) -> list[EntityState]:
        """Entities of entity ``name`` (whose keys start with ``key_prefix``) in id order; without a
        name or prefix, the most recently modified first. ``last_modified_from``/``_to`` bound the
        last modification; with ``include_state=False`` the states are not read (``state`` None)."""
        return await list_entities(
            await self._get_store(),
            name=name,
            key_prefix=key_prefix,
            last_modified_from=last_modified_from,
            last_modified_to=last_modified_to,
            include_state=include_state,
            limit=limit,
        )

    async def entity_page(
        self, *, limit: int = 100, continuation_token: str | None = None, **filters: Any
    ) -> EntityPage:
        """One page of :meth:`query_entities` (entity id order) with its ``continuation_token``."""
        return await entity_page(
            await self._get_store(), limit=limit, continuation_token=continuation_token, **filters
        )

    async def query_entities(
        self,
        *,
        name: str | None = None,
        key_prefix: str | None = None,
        last_modified_from: _dt.datetime | None = None,
        last_modified_to: _dt.datetime | None = None,
        include_state: bool = True,
        page_size: int = 100,
    ) -> AsyncIterator[EntityState]:
        """Every entity that matches, in entity id order, read a page at a time."""
        token: str | None = None
        while True:
            page = await self.entity_page(
                name=name,
                key_prefix=key_prefix,
                last_modified_from=last_modified_from,
                last_modified_to=last_modified_to,
                include_state=include_state,
                limit=page_size,
                continuation_token=token,
            )
            for state in page:
                yield state
            token = page.continuation_token
            if token is None:
                return

    async def clean_entity_storage(
        self, *, remove_empty: bool = True, release_orphaned_locks: bool = True
    ) -> tuple[int, int]:
        """Remove what deleted entities left behind (their request ids) and release the locks held
        by orchestrations that no longer exist or have finished; returns (removed, released).

        A lock is released by a message to its entity, applied by a worker shortly after."""
        return await clean_entity_storage(
            await self._get_store(), remove_empty=remove_empty, release_orphaned_locks=release_orphaned_locks
        )


class SyncQueries:
    """The query methods of :class:`~durable.Client` (blocking)."""

    _async: AsyncQueries

    if TYPE_CHECKING:  # provided by the client this mixin is part of

        def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any: ...

    def list_orchestrations(
        self,
        *,
        status: StatusFilter = None,
        name: str | None = None,
        created_from: _dt.datetime | None = None,
        created_to: _dt.datetime | None = None,
        tags: dict[str, str] | None = None,
        limit: int = 100,
        continuation_token: str | None = None,
    ) -> OrchestrationPage:
        """See :meth:`AsyncClient.list_orchestrations`."""
        return self._call(  # type: ignore[no-any-return]
            self._async.list_orchestrations,
            status=status,
            name=name,
            created_from=created_from,
            created_to=created_to,
            tags=tags,
            limit=limit,
            continuation_token=continuation_token,
        )

    def query_orchestrations(
        self,
        *,
        status: StatusFilter = None,
        name: str | None = None,
        created_from: _dt.datetime | None = None,
        created_to: _dt.datetime | None = None,
        tags: dict[str, str] | None = None,
        page_size: int = 100,
    ) -> Iterator[OrchestrationState]:
        """See :meth:`AsyncClient.query_orchestrations`: reads one page at a time."""
        filters: dict[str, Any] = dict(
            status=status, name=name, created_from=created_from, created_to=created_to, tags=tags
        )
        token: str | None = None
        while True:
            page = self.list_orchestrations(**filters, limit=page_size, continuation_token=token)
            yield from page
            token = page.continuation_token
            if token is None:
                return

    def list_entities(
        self,
        *,
        name: str | None = None,
        key_prefix: str | None = None,
        last_modified_from: _dt.datetime | None = None,
        last_modified_to: _dt.datetime | None = None,
        include_state: bool = True,
        limit: int = 100,
    ) -> list[EntityState]:
        """See :meth:`AsyncClient.list_entities`."""
        return self._call(  # type: ignore[no-any-return]
            self._async.list_entities,
            name=name,
            key_prefix=key_prefix,
            last_modified_from=last_modified_from,
            last_modified_to=last_modified_to,
            include_state=include_state,
            limit=limit,
        )

    def query_entities(
        self,
        *,
        name: str | None = None,
        key_prefix: str | None = None,
        last_modified_from: _dt.datetime | None = None,
        last_modified_to: _dt.datetime | None = None,
        include_state: bool = True,
        page_size: int = 100,
    ) -> Iterator[EntityState]:
        """See :meth:`AsyncClient.query_entities`: reads one page at a time."""
        filters: dict[str, Any] = dict(
            name=name,
            key_prefix=key_prefix,
            last_modified_from=last_modified_from,
            last_modified_to=last_modified_to,
            include_state=include_state,
        )
        token: str | None = None
        while True:
            page: EntityPage = self._call(
                self._async.entity_page, **filters, limit=page_size, continuation_token=token
            )
            yield from page
            token = page.continuation_token
            if token is None:
                return

    def clean_entity_storage(
        self, *, remove_empty: bool = True, release_orphaned_locks: bool = True
    ) -> tuple[int, int]:
        """See :meth:`AsyncClient.clean_entity_storage`."""
        return self._call(  # type: ignore[no-any-return]
            self._async.clean_entity_storage,
            remove_empty=remove_empty,
            release_orphaned_locks=release_orphaned_locks,
        )
