"""Schedules in the ops HTTP API (``/v1/schedules``) and their JSON view, shared with the CLI.

Routes::

    GET    /v1/schedules?status=&prefix=          -> [schedule, ...]
    POST   /v1/schedules                          body: schedule fields -> 201 schedule | 409 exists
    GET    /v1/schedules/{id}                     -> schedule | 404
    PATCH  /v1/schedules/{id}                     body: the fields to change -> 200 schedule | 404
    DELETE /v1/schedules/{id}                     -> 200 {"schedule_id", "deleted": true} | 404
    POST   /v1/schedules/{id}/pause               body: "reason" or {"reason"} -> 200 schedule
    POST   /v1/schedules/{id}/resume              -> 200 schedule
    POST   /v1/schedules/{id}/trigger             -> 202 {"schedule_id", "instance_id"}

The JSON form of a schedule has :class:`durable.ScheduleDescription`'s field names; ``interval``
and ``catchup_window`` are seconds and the times ISO-8601. A body takes the same names, with
``orchestration`` (or ``orchestration_name``) for the orchestrator; invalid fields are 400.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any

from .._core.schedules import (
    ScheduleAlreadyExistsError,
    ScheduleDescription,
    ScheduleNotFoundError,
    ScheduleStatus,
)
from .._core.serialization import SerializationError
from .http import HTTPError, Request, Response, Route, json_body, json_response, payload_error
from .views import to_json_value

__all__ = ["ScheduleRoutes", "schedule_fields", "schedule_json"]

#: Body fields of a new schedule (besides the id and the orchestration); all may be changed.
_FIELDS = ("cron", "interval", "input", "timezone", "start_at", "end_at", "overlap", "catchup_window")


def schedule_json(desc: ScheduleDescription) -> dict[str, Any]:
    """The JSON form of a schedule (ScheduleDescription field names; seconds, ISO-8601 times)."""
    out: dict[str, Any] = to_json_value(desc)
    out["status"] = desc.status.value
    return out


def _seconds(name: str, value: Any) -> _dt.timedelta:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    return _dt.timedelta(seconds=value)


def _time(name: str, value: Any) -> _dt.datetime:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be an ISO-8601 date-time string, got {value!r}")
    try:
        parsed = _dt.datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        raise ValueError(f"{name} must be an ISO-8601 date-time, got {value!r}") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=_dt.UTC)


def schedule_fields(body: dict[str, Any], allowed: tuple[str, ...] = _FIELDS) -> dict[str, Any]:
    """Client keyword arguments from JSON fields (seconds, ISO-8601 strings); ValueError when a
    field is unknown or has the wrong type."""
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}; expected some of {', '.join(allowed)}")
    out: dict[str, Any] = {}
    for name, value in body.items():
        if name in ("interval", "catchup_window"):
            out[name] = None if value is None and name == "interval" else _seconds(name, value)
        elif name in ("start_at", "end_at"):
            out[name] = None if value is None else _time(name, value)
        elif name in ("cron", "timezone", "overlap"):
            if not (isinstance(value, str) or (value is None and name == "cron")):
                raise ValueError(f"{name} must be a string, got {value!r}")
            out[name] = value
        elif name == "paused":
            if not isinstance(value, bool):
                raise ValueError(f"paused must be true or false, got {value!r}")
            out[name] = value
        else:
            out[name] = value
    return out


def _not_found(schedule_id: str) -> HTTPError:
    return HTTPError(404, "not_found", f"no schedule with id {schedule_id!r}")


def _invalid(exc: Exception) -> HTTPError:
    return payload_error(exc, "invalid_schedule")


def _object_body(request: Request) -> dict[str, Any]:
    body = json_body(request)
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise HTTPError(400, "invalid_body", "expected a JSON object")
    return body


class ScheduleRoutes:
    """The ``/v1/schedules`` handlers over a client (an :class:`~durable.AsyncClient`)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def routes(self) -> list[Route]:
        s = "schedules"
        return [
            Route(("v1", s), {"GET": self.list_schedules, "POST": self.create}),
            Route(("v1", s, None), {"GET": self.get, "PATCH": self.update, "DELETE": self.delete}),
            Route(("v1", s, None, "pause"), {"POST": self.pause}),
            Route(("v1", s, None, "resume"), {"POST": self.resume}),
            Route(("v1", s, None, "trigger"), {"POST": self.trigger}),
        ]

    async def list_schedules(self, request: Request, params: list[str]) -> Response:
        statuses = [v.upper() for v in request.params("status")]
        valid = {s.value for s in ScheduleStatus}
        bad = [v for v in statuses if v not in valid]
        if bad:
            detail = f"unknown status {bad[0]!r}; use one of {', '.join(sorted(valid))}"
            raise HTTPError(400, "invalid_status", detail)
        found = await self.client.list_schedules(
            status=list(statuses) or None, prefix=request.param("prefix")
        )
        return json_response(200, [schedule_json(d) for d in found])

    async def create(self, request: Request, params: list[str]) -> Response:
        body = _object_body(request)
        schedule_id = body.pop("schedule_id", None)
        name = body.pop("orchestration", None) or body.pop("orchestration_name", None)
        if not isinstance(schedule_id, str) or not isinstance(name, str) or not name:
            raise HTTPError(400, "invalid_schedule", "the body needs schedule_id and orchestration (strings)")
        try:
            kwargs = schedule_fields(body, (*_FIELDS, "paused"))
            desc = await self.client.create_schedule(schedule_id, name, **kwargs)
        except ScheduleAlreadyExistsError as exc:
            raise HTTPError(409, "already_exists", str(exc)) from None
        except (ValueError, SerializationError) as exc:
            raise _invalid(exc) from None
        location = f"/v1/schedules/{schedule_id}"
        return json_response(201, schedule_json(desc), {"Location": location})

    async def get(self, request: Request, params: list[str]) -> Response:
        try:
            desc = await self.client.get_schedule(params[0])
        except ValueError as exc:
            raise HTTPError(400, "invalid_schedule", str(exc)) from None
        if desc is None:
            raise _not_found(params[0])
        return json_response(200, schedule_json(desc))

    async def update(self, request: Request, params: list[str]) -> Response:
        try:
            kwargs = schedule_fields(_object_body(request))
            desc = await self.client.update_schedule(params[0], **kwargs)
        except ScheduleNotFoundError:
            raise _not_found(params[0]) from None
        except (ValueError, SerializationError) as exc:
            raise _invalid(exc) from None
        return json_response(200, schedule_json(desc))

    async def delete(self, request: Request, params: list[str]) -> Response:
        try:
            deleted = await self.client.delete_schedule(params[0])
        except ValueError as exc:
            raise HTTPError(400, "invalid_schedule", str(exc)) from None
        if not deleted:
            raise _not_found(params[0])
        return json_response(200, {"schedule_id": params[0], "deleted": True})

    async def pause(self, request: Request, params: list[str]) -> Response:
        body = json_body(request)
        reason = body.get("reason") if isinstance(body, dict) else body
        if reason is not None and not isinstance(reason, str):
            raise HTTPError(400, "invalid_body", 'expected a JSON string or {"reason": "..."}')
        return await self._act(params[0], "pause_schedule", reason=reason)

    async def resume(self, request: Request, params: list[str]) -> Response:
        return await self._act(params[0], "resume_schedule")

    async def _act(self, schedule_id: str, method: str, **kwargs: Any) -> Response:
        try:
            await getattr(self.client, method)(schedule_id, **kwargs)
            desc = await self.client.get_schedule(schedule_id)
        except ScheduleNotFoundError:
            raise _not_found(schedule_id) from None
        except ValueError as exc:
            raise HTTPError(400, "invalid_schedule", str(exc)) from None
        if desc is None:
            raise _not_found(schedule_id)
        return json_response(200, schedule_json(desc))

    async def trigger(self, request: Request, params: list[str]) -> Response:
        try:
            iid = await self.client.trigger_schedule(params[0])
        except ScheduleNotFoundError:
            raise _not_found(params[0]) from None
        except ValueError as exc:
            raise HTTPError(400, "invalid_schedule", str(exc)) from None
        return json_response(202, {"schedule_id": params[0], "instance_id": iid})
