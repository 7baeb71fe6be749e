"""The lifecycle routes of the ops JSON API (:class:`~durable._ops.server.OpsApp` routes here)::

POST /v1/orchestrations/{instance_id}/rewind     body: reason -> 200 | 202 not applied yet | 404 | 409
POST /v1/orchestrations/{instance_id}/restart[?new_instance_id=true]  -> 202 {"instance_id"}
POST /v1/orchestrations/purge                    body: {"status", "name", "created_from",
                                                 "created_to"} -> 200 {"purged": n} | 202
"""

from __future__ import annotations

import datetime as _dt
from typing import Any
from urllib.parse import quote

from .._client import AsyncClient
from .._core.model import OrchestrationAlreadyExistsError, OrchestrationNotFoundError, OrchestrationStatus
from .http import HTTPError, Request, Response, json_body, json_response

#: How long a rewind request waits for a worker to apply it (then 202: it is applied later).
REWIND_TIMEOUT_SECONDS = 10.0
#: How long ``POST /v1/orchestrations/purge`` waits for every partition's count (then 202).
PURGE_TIMEOUT_SECONDS = 60.0
_FILTERS = frozenset({"status", "name", "created_from", "created_to"})


def flag(request: Request, name: str, default: bool) -> bool:
    """Query parameter ``name`` as a boolean (true/false, 1/0, yes/no)."""
    raw = request.param(name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise HTTPError(400, "invalid_parameter", f"{name} must be true or false, got {raw!r}")


def _not_found(instance_id: str) -> HTTPError:
    return HTTPError(404, "not_found", f"no orchestration with id {instance_id!r}")


def _iso(value: Any, name: str) -> _dt.datetime | None:
    if value is None:
        return None
    try:
        parsed = _dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise HTTPError(400, "invalid_body", f"{name} must be an ISO-8601 date-time, got {value!r}") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=_dt.UTC)


def _terminal_statuses(raw: Any) -> list[OrchestrationStatus | str] | None:
    values = [raw] if isinstance(raw, str) else raw or []
    if not isinstance(values, list):
        raise HTTPError(400, "invalid_body", "status must be a status or a list of statuses")
    out: list[OrchestrationStatus | str] = []
    for value in values:
        try:
            status = OrchestrationStatus[str(value).upper()]
        except KeyError:
            raise HTTPError(400, "invalid_status", f"unknown status {value!r}") from None
        if not status.is_terminal:
            raise HTTPError(
                400, "invalid_status", "only COMPLETED, FAILED and TERMINATED instances can be purged"
            )
        out.append(status)
    return out or None


async def purge_matching(client: AsyncClient, request: Request) -> Response:
    body = json_body(request)
    if body is None:
        body = {}
    if not isinstance(body, dict) or not set(body) <= _FILTERS:
        raise HTTPError(
            400,
            "invalid_body",
            'expected {"status": [...], "name": ..., "created_from": ..., "created_to": ...}',
        )
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise HTTPError(400, "invalid_body", "name must be a string")
    statuses = _terminal_statuses(body.get("status"))
    times = {k: _iso(body.get(k), k) for k in ("created_from", "created_to")}
    try:
        count = await client.purge_orchestrations(
            status=statuses, name=name, timeout=PURGE_TIMEOUT_SECONDS, **times
        )
    except TimeoutError as exc:  # partitions without a live owner: their part goes on later
        return json_response(202, {"purged": None, "detail": str(exc)})
    return json_response(200, {"purged": count})


async def rewind(client: AsyncClient, instance_id: str, reason: str | None) -> Response:
    body: dict[str, Any] = {"instance_id": instance_id, "action": "rewind"}
    try:
        await client.rewind_orchestration(instance_id, reason=reason, timeout=REWIND_TIMEOUT_SECONDS)
    except OrchestrationNotFoundError:
        raise _not_found(instance_id) from None
    except ValueError as exc:
        raise HTTPError(409, "cannot_rewind", str(exc)) from None
    except TimeoutError as exc:
        return json_response(202, {**body, "applied": False, "detail": str(exc)})
    return json_response(200, {**body, "applied": True})


async def restart(client: AsyncClient, request: Request, instance_id: str) -> Response:
    try:
        new_id = await client.restart_orchestration(
            instance_id, new_instance_id=flag(request, "new_instance_id", False)
        )
    except OrchestrationNotFoundError:
        raise _not_found(instance_id) from None
    except (ValueError, OrchestrationAlreadyExistsError) as exc:
        raise HTTPError(409, "cannot_restart", str(exc)) from None
    location = f"/v1/orchestrations/{quote(new_id, safe='')}"
    return json_response(202, {"instance_id": new_id, "restarted": instance_id}, {"Location": location})
