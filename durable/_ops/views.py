"""The JSON views of the ops HTTP API, which the operator CLI prints with ``--output json`` too.

Pure functions shape what the client and :mod:`durable._ops_queries` read (orchestration states,
history events, entity states, partitions, workers, entities, the scale recommendation); the
small async helpers read and shape in one call, so the HTTP handlers and the CLI commands cannot
drift apart. Payloads are converted for JSON by :func:`to_json_value` (datetimes ISO-8601, bytes
base64, tuples lists, ...).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import decimal
import enum
import inspect
import json
import math
import uuid
from collections.abc import Callable, Collection, Mapping
from typing import Any

from .._core.model import FailureDetails, OrchestrationState, ms_to_datetime
from .._store import queries as q
from .._store.store import Store

__all__ = [
    "EntitiesUnavailableError",
    "call_entity_method",
    "entities_view",
    "entity_json",
    "entity_row",
    "entity_view",
    "history_event_json",
    "iso_ms",
    "partitions_json",
    "partitions_view",
    "scale_view",
    "signal_entity_view",
    "state_json",
    "to_json_value",
    "workers_json",
    "workers_view",
]


# -- JSON conversion -------------------------------------------------------------------------------
def _iso(value: _dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def iso_ms(ms: Any) -> str | None:
    """Epoch milliseconds as an ISO-8601 string (None for anything but a number)."""
    if isinstance(ms, bool) or not isinstance(ms, int | float):
        return None
    return ms_to_datetime(int(ms)).isoformat()


def _json_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    converted = to_json_value(key)
    if isinstance(converted, str):
        return converted
    return json.dumps(converted, separators=(",", ":"), sort_keys=True)


def to_json_value(value: Any) -> Any:
    """Convert a payload value to something :func:`json.dumps` accepts, sensibly.

    datetimes, dates and times become ISO-8601 strings, timedeltas seconds, UUIDs and decimals
    strings, bytes base64 strings, tuples and sets lists, enums their value, dataclasses dicts,
    non-finite floats the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``; dict keys become
    strings; anything else its ``repr``.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        return {_json_key(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_value(v) for v in value]
    if isinstance(value, set | frozenset):
        items = [to_json_value(v) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return to_json_value(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json_value({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    code, data = getattr(value, "code", None), getattr(value, "data", None)
    if isinstance(code, int) and isinstance(data, bytes):  # msgpack.ExtType of an unknown kind
        return {"ext_type": code, "data": base64.b64encode(data).decode("ascii")}
    return repr(value)


# -- orchestrations --------------------------------------------------------------------------------
def failure_json(failure: FailureDetails | None) -> dict[str, Any] | None:
    """The JSON form of failure details, with their cause (``inner_failure``), if any."""
    if failure is None:
        return None
    return {
        "message": failure.message,
        "error_type": failure.error_type,
        "stack_trace": failure.stack_trace,
        "inner_failure": failure_json(failure.inner_failure),
    }


def state_json(state: OrchestrationState) -> dict[str, Any]:
    """The JSON form of an orchestration state (OrchestrationState field names)."""
    failure = state.failure_details
    return {
        "instance_id": state.instance_id,
        "name": state.name,
        "runtime_status": state.runtime_status.name,
        "input": to_json_value(state.input),
        "output": to_json_value(state.output),
        "custom_status": to_json_value(state.custom_status),
        "failure_details": failure_json(failure),
        "created_at": _iso(state.created_at),
        "last_updated_at": _iso(state.last_updated_at),
        "scheduled_start_at": _iso(state.scheduled_start_at),
        "parent_instance_id": state.parent_instance_id,
        "tags": dict(getattr(state, "tags", None) or {}),
        "version": state.version,
    }


def history_event_json(event: Mapping[str, Any]) -> dict[str, Any]:
    """One history event: ``event_id``, ``kind``, ``timestamp`` (ISO) and its own fields."""
    out: dict[str, Any] = {
        "event_id": event.get("eid"),
        "kind": event.get("k"),
        "timestamp": iso_ms(event.get("ts")),
    }
    for key, value in event.items():
        if key in ("k", "eid", "ts"):
            continue
        if key == "fire_at" and iso_ms(value) is not None:
            out[key] = iso_ms(value)
        else:
            out[key] = to_json_value(value)
    return out


# -- entities --------------------------------------------------------------------------------------
class EntitiesUnavailableError(Exception):
    """The client has no entity support (an older durable client)."""


def _entity_method(client: Any, name: str) -> Callable[..., Any]:
    method = getattr(client, name, None)
    if method is None or not callable(method):
        raise EntitiesUnavailableError(
            f"entities are not available: this version of the durable client has no {name}()"
        )
    return method  # type: ignore[no-any-return]


async def call_entity_method(client: Any, name: str, *args: Any, **kwargs: Any) -> Any:
    """``client.<name>(*args, **kwargs)``, awaited when it returns an awaitable.

    Raises :class:`EntitiesUnavailableError` when the client has no such method; what the
    method raises propagates.
    """
    method = _entity_method(client, name)
    result = method(*args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


def entity_json(result: Any, entity_id: str) -> dict[str, Any]:
    """An entity state (as the client returns it) in the form of ``GET /v1/entities/{name}/{key}``."""
    canonical = str(getattr(result, "entity_id", entity_id))
    try:
        name, key = q.split_entity_id(canonical)
    except ValueError:
        name, key = q.split_entity_id(entity_id)
    body: dict[str, Any] = {
        "entity_id": canonical,
        "name": name,
        "key": key,
        "state": to_json_value(getattr(result, "state", None)),
        "last_modified_at": to_json_value(getattr(result, "last_modified_at", None)),
    }
    for extra in ("locked_by", "backlog"):
        if hasattr(result, extra):
            body[extra] = to_json_value(getattr(result, extra))
    return body


async def entity_view(client: Any, entity_id: str) -> dict[str, Any] | None:
    """The entity's :func:`entity_json`, None when it does not exist.

    Raises :class:`EntitiesUnavailableError`, and TypeError or ValueError for an invalid id.
    """
    result = await call_entity_method(client, "get_entity", entity_id)
    return entity_json(result, entity_id) if result is not None else None


async def signal_entity_view(client: Any, entity_id: str, operation: str, data: Any) -> dict[str, Any]:
    """Signal ``operation`` with input ``data`` to the entity; ``entity_id``, ``operation`` and,
    when the client returns one, ``signal_id``.

    Raises :class:`EntitiesUnavailableError`; the client's errors propagate.
    """
    result = await call_entity_method(client, "signal_entity", entity_id, operation, input=data)
    body: dict[str, Any] = {"entity_id": entity_id, "operation": operation}
    if isinstance(result, str):
        body["signal_id"] = result
    return body


def entity_row(state: Any, include_state: bool) -> dict[str, Any]:
    """An entity in the list form of ``GET /v1/entities`` (with ``state`` when asked for)."""
    entity_id = str(state.entity_id)
    name, key = q.split_entity_id(entity_id)
    row: dict[str, Any] = {
        "entity_id": entity_id,
        "name": name,
        "key": key,
        "last_modified_at": to_json_value(state.last_modified_at),
    }
    if include_state:
        row["state"] = to_json_value(state.state)
    return row


async def entities_view(store: Store, name: str | None, limit: int) -> list[dict[str, Any]]:
    """``GET /v1/entities``: entity id, name, key and ``last_modified_at`` (ISO), newest first."""
    rows = await q.list_entities(store, name, limit)
    for row in rows:
        row["last_modified_at"] = iso_ms(row.pop("last_modified_at_ms"))
    return rows


# -- hub state -------------------------------------------------------------------------------------
def partitions_json(infos: list[q.PartitionInfo], owned: Collection[int] = ()) -> list[dict[str, Any]]:
    """The partitions' facts, each with ``owned_by_this_worker`` (in ``owned``)."""
    out = []
    for info in infos:
        row = info.to_json()
        row["owned_by_this_worker"] = info.partition in owned
        out.append(row)
    return out


async def partitions_view(store: Store, owned: Collection[int] = ()) -> list[dict[str, Any]]:
    """``GET /v1/partitions``: owner, lease, backlog, timers of every partition."""
    return partitions_json(await q.partitions_info(store), owned)


def workers_json(rows: list[dict[str, Any]], me: str | None = None) -> list[dict[str, Any]]:
    """Rows of :func:`durable._ops_queries.live_workers` with ``this_worker`` (worker id ``me``)
    and the times as ISO strings (``expires_at``, ``heartbeat_at``)."""
    out = []
    for row in rows:
        view = dict(row)
        view["this_worker"] = view["worker_id"] == me
        view["expires_at"] = iso_ms(view.pop("expires_at_ms"))
        view["heartbeat_at"] = iso_ms(view.pop("heartbeat_at_ms"))
        out.append(view)
    return out


async def workers_view(store: Store, me: str | None = None) -> list[dict[str, Any]]:
    """``GET /v1/workers``: the live workers, newest first."""
    return workers_json(await q.live_workers(store), me)


async def scale_view(store: Store, target_per_worker: int = q.DEFAULT_TARGET_PER_WORKER) -> dict[str, Any]:
    """``GET /v1/scale``: the recommended worker count and its inputs."""
    return (await q.scale_recommendation(store, target_per_worker)).to_json()
