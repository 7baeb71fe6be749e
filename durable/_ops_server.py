"""The operations HTTP server: metrics, health probes, a JSON API and the dashboard.

A deliberately small HTTP/1.1 server on anyio TCP streams (so it runs inside the worker's own
event loop, under asyncio or trio): one request per connection (``Connection: close``), bodies
with ``Content-Length`` only, at most :data:`MAX_BODY_BYTES`. Every route is cheap and reads
Redis through its own connection pool (the client's), never through the partition loops.

Routes::

    GET    /                                          the dashboard (static HTML, no data)
    GET    /metrics                                   Prometheus text exposition
    GET    /healthz                                   liveness of the worker's own loops
    GET    /readyz                                    readiness: Redis reachable, balanced, not draining
    GET    /v1/hub                                    hub name, partition count, this worker, auth
    POST   /v1/orchestrations/{name}[?instance_id=ID] body: input   -> 202 {"instance_id"}
    GET    /v1/orchestrations?status=&name=&limit=    -> [state, ...]
    GET    /v1/orchestrations/{instance_id}           -> state | 404
    GET    /v1/orchestrations/{instance_id}/history   -> [event, ...] | 404
    POST   /v1/orchestrations/{instance_id}/events/{event}    body: data -> 202
    POST   /v1/orchestrations/{instance_id}/terminate|suspend|resume    -> 202
    DELETE /v1/orchestrations/{instance_id}           -> 200 purged | 404 | 409 still running
    GET    /v1/entities?name=&limit=                  -> [{entity_id, name, key, last_modified_at}]
    GET    /v1/entities/{name}/{key}                  -> {"state": ...} | 404 | 501
    POST   /v1/entities/{name}/{key}/{operation}      body: input -> 202 | 501
    GET    /v1/scale[?target_per_worker=N]            -> recommended worker count and its inputs
    GET    /v1/partitions                             -> owner, lease, backlog, timers per partition
    GET    /v1/workers                                -> live workers

Authentication: when a token is configured (the ``token`` argument, else ``$DURABLE_OPS_TOKEN``;
an empty string disables it) every route requires ``Authorization: Bearer <token>`` *except*
``/healthz`` and ``/readyz`` (the kubelet cannot send a token) and ``/`` (a static page with no
data, which asks for the token and sends it with its API calls). ``/metrics`` is protected:
it names orchestrations and activities, and the Helm chart's ServiceMonitor sends the token.

``GET /metrics`` first refreshes the gauges only this server can see: the activity slots of the
worker and, for the partitions it owns, their inbox backlog, oldest message age and pending timers.
The dashboard's throughput is the rate of ``durable_orchestrations_finished_total`` of *this*
process.

Payloads are converted for JSON by :func:`to_json_value` (datetimes ISO-8601, bytes base64,
tuples lists, ...). Errors are JSON: ``{"error": "<code>", "detail": "<human readable>"}``.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as _dt
import decimal
import enum
import hmac
import importlib.metadata
import importlib.resources
import inspect
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream
from prometheus_client.exposition import generate_latest
from redis.exceptions import RedisError

from . import _metrics
from . import _ops_queries as q
from ._client import AsyncClient
from ._model import (
    OrchestrationAlreadyExistsError,
    OrchestrationNotFoundError,
    OrchestrationState,
    OrchestrationStatus,
    ms_to_datetime,
)
from ._runtime import Runtime
from ._serialization import PayloadTooLargeError, SerializationError
from ._store import Store

__all__ = [
    "MAX_BODY_BYTES",
    "TOKEN_ENV",
    "history_event_json",
    "serve_ops",
    "state_json",
    "to_json_value",
]

log = logging.getLogger("durable.ops")

#: Environment variable holding the bearer token when ``serve_ops(token=None)``.
TOKEN_ENV = "DURABLE_OPS_TOKEN"
#: Largest accepted request body (the payload cap of the engine).
MAX_BODY_BYTES = 2 * 1024 * 1024
#: Largest accepted request line plus headers.
MAX_HEADER_BYTES = 64 * 1024
#: Time allowed to receive a whole request.
READ_TIMEOUT_SECONDS = 15.0
#: Time allowed for the Redis reads of a probe.
PROBE_TIMEOUT_SECONDS = 2.0
#: Extra seconds on top of three balance intervals before /healthz calls the worker stuck.
LIVENESS_MARGIN_SECONDS = 5.0
#: Requests handled at the same time; further connections wait.
MAX_CONCURRENT_REQUESTS = 64
#: Largest page of ``GET /v1/orchestrations`` and ``GET /v1/entities``.
MAX_LIST_LIMIT = 1000

_REASONS = {
    100: "Continue",
    200: "OK",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}

_PUBLIC_PATHS = frozenset({"/", "/index.html", "/healthz", "/readyz"})

_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


# -- JSON conversion -------------------------------------------------------------------------------
def _iso(value: _dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _iso_ms(ms: Any) -> str | None:
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
        "failure_details": (
            {"message": failure.message, "error_type": failure.error_type, "stack_trace": failure.stack_trace}
            if failure is not None
            else None
        ),
        "created_at": _iso(state.created_at),
        "last_updated_at": _iso(state.last_updated_at),
        "scheduled_start_at": _iso(state.scheduled_start_at),
        "parent_instance_id": state.parent_instance_id,
    }


def history_event_json(event: Mapping[str, Any]) -> dict[str, Any]:
    """One history event: ``event_id``, ``kind``, ``timestamp`` (ISO) and its own fields."""
    out: dict[str, Any] = {
        "event_id": event.get("eid"),
        "kind": event.get("k"),
        "timestamp": _iso_ms(event.get("ts")),
    }
    for key, value in event.items():
        if key in ("k", "eid", "ts"):
            continue
        if key == "fire_at" and _iso_ms(value) is not None:
            out[key] = _iso_ms(value)
        else:
            out[key] = to_json_value(value)
    return out


# -- HTTP plumbing ---------------------------------------------------------------------------------
class HTTPError(Exception):
    """Ends a request with a JSON error response."""

    def __init__(
        self, status: int, error: str, detail: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = dict(headers or {})


@dataclass
class Request:
    method: str
    path: str
    segments: list[str]
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""

    def param(self, name: str) -> str | None:
        """The last value of query parameter ``name`` (None when absent or empty)."""
        values = self.query.get(name)
        return values[-1] if values and values[-1] != "" else None

    def params(self, name: str) -> list[str]:
        """All values of ``name``; comma-separated values are split."""
        out: list[str] = []
        for value in self.query.get(name, []):
            out.extend(v.strip() for v in value.split(",") if v.strip())
        return out


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self, head_only: bool = False) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}"]
        headers = {
            "Content-Type": self.content_type,
            "Content-Length": str(len(self.body)),
            "Connection": "close",
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            **self.headers,
        }
        lines.extend(f"{k}: {v}" for k, v in headers.items())
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + self.body


def json_response(status: int, value: Any, headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps(to_json_value(value), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return Response(status, body.encode("utf-8"), "application/json; charset=utf-8", dict(headers or {}))


def error_response(exc: HTTPError) -> Response:
    return json_response(exc.status, {"error": exc.error, "detail": exc.detail}, exc.headers)


def _parse_request_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise HTTPError(400, "bad_request", "request head is not valid latin-1") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HTTPError(400, "bad_request", f"malformed request line {lines[0][:100]!r}")
    method, target, _ = parts
    if not method.isalpha() or not method.isupper():
        raise HTTPError(400, "bad_request", f"malformed method {method[:20]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HTTPError(400, "bad_request", f"malformed header line {line[:100]!r}")
        key = name.lower()
        value = value.strip()
        if key in headers:
            if key == "content-length" and headers[key] != value:
                raise HTTPError(400, "bad_request", "conflicting Content-Length headers")
            headers[key] = f"{headers[key]}, {value}" if key != "content-length" else value
        else:
            headers[key] = value
    return method, target, headers


def _split_target(target: str) -> tuple[str, list[str], dict[str, list[str]]]:
    if not target.startswith("/"):
        raise HTTPError(400, "bad_request", "the request target must be an absolute path")
    parts = urlsplit(target)
    raw_path = parts.path or "/"
    raw_segments = raw_path.split("/")[1:]
    if len(raw_segments) > 1 and raw_segments[-1] == "":
        raw_segments = raw_segments[:-1]  # tolerate one trailing slash
    segments = [unquote(s, errors="strict") for s in raw_segments]
    if raw_path == "/":
        segments = []
    path = "/" + "/".join(raw_segments)
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPError(400, "bad_request", f"malformed query string: {exc}") from None
    return path, segments, query


# -- the application -------------------------------------------------------------------------------
Handler = Callable[[Request, list[str]], Awaitable[Response]]


@dataclass(frozen=True)
class _Route:
    pattern: tuple[str | None, ...]  # None matches any one segment
    methods: dict[str, Handler]

    def match(self, segments: list[str]) -> list[str] | None:
        if len(segments) != len(self.pattern):
            return None
        params: list[str] = []
        for want, got in zip(self.pattern, segments, strict=True):
            if want is None:
                if got == "":
                    return None
                params.append(got)
            elif want != got:
                return None
        return params


def _status_filter(values: list[str]) -> list[OrchestrationStatus | str] | None:
    if not values:
        return None
    out: list[OrchestrationStatus | str] = []
    for value in values:
        try:
            out.append(OrchestrationStatus[value.upper()])
        except KeyError:
            valid = ", ".join(s.name for s in OrchestrationStatus)
            raise HTTPError(400, "invalid_status", f"unknown status {value!r}; use one of {valid}") from None
    return out


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.param(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPError(400, "invalid_parameter", f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise HTTPError(400, "invalid_parameter", f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _datetime_param(request: Request, name: str) -> _dt.datetime | None:
    raw = request.param(name)
    if raw is None:
        return None
    try:
        value = _dt.datetime.fromisoformat(raw.replace("Z", "+00:00") if raw.endswith("Z") else raw)
    except ValueError:
        raise HTTPError(
            400, "invalid_parameter", f"{name} must be an ISO-8601 date-time, got {raw!r}"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=_dt.UTC)


def _json_body(request: Request) -> Any:
    """The request body parsed as JSON; an empty body is ``null``."""
    if not request.body.strip():
        return None
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPError(400, "invalid_json", f"the body is not UTF-8: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise HTTPError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise HTTPError(400, "invalid_json", "the body is nested too deeply") from None


def _reason_body(request: Request) -> str | None:
    body = _json_body(request)
    if body is None or isinstance(body, str):
        return body
    if isinstance(body, dict) and isinstance(body.get("reason"), str | type(None)):
        return body.get("reason")
    raise HTTPError(400, "invalid_body", 'expected a JSON string or {"reason": "..."}')


def _payload_error(exc: Exception) -> HTTPError:
    if isinstance(exc, PayloadTooLargeError):
        return HTTPError(413, "payload_too_large", str(exc))
    return HTTPError(400, "invalid_payload", str(exc))


class OpsApp:
    """Request handling, independent of the socket plumbing (see :func:`serve_ops`)."""

    def __init__(self, runtime: Runtime | None, client: AsyncClient, token: str | None) -> None:
        self.runtime = runtime
        self.client = client
        self.token = token or None
        self._dashboard: bytes | None = None
        self._published_partitions: set[str] = set()
        o = "orchestrations"
        self.routes: list[_Route] = [
            _Route((), {"GET": self.dashboard}),
            _Route(("index.html",), {"GET": self.dashboard}),
            _Route(("metrics",), {"GET": self.metrics}),
            _Route(("healthz",), {"GET": self.healthz}),
            _Route(("readyz",), {"GET": self.readyz}),
            _Route(("v1", "hub"), {"GET": self.hub_info}),
            _Route(("v1", o), {"GET": self.list_orchestrations}),
            _Route(
                ("v1", o, None),
                {"GET": self.get_orchestration, "POST": self.start_orchestration, "DELETE": self.purge},
            ),
            _Route(("v1", o, None, "history"), {"GET": self.history}),
            _Route(("v1", o, None, "terminate"), {"POST": self.terminate}),
            _Route(("v1", o, None, "suspend"), {"POST": self.suspend}),
            _Route(("v1", o, None, "resume"), {"POST": self.resume}),
            _Route(("v1", o, None, "events", None), {"POST": self.raise_event}),
            _Route(("v1", "entities"), {"GET": self.list_entities}),
            _Route(("v1", "entities", None, None), {"GET": self.get_entity}),
            _Route(("v1", "entities", None, None, None), {"POST": self.signal_entity}),
            _Route(("v1", "scale"), {"GET": self.scale}),
            _Route(("v1", "partitions"), {"GET": self.partitions}),
            _Route(("v1", "workers"), {"GET": self.workers}),
        ]

    @property
    def entities_supported(self) -> bool:
        """Whether the client can signal entities and read their state (newer clients can)."""
        return all(callable(getattr(self.client, m, None)) for m in ("get_entity", "signal_entity"))

    # -- dispatch --------------------------------------------------------------------------------
    def authorized(self, request: Request) -> bool:
        if self.token is None or request.path in _PUBLIC_PATHS:
            return True
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.strip().encode(), self.token.encode())

    def resolve(self, request: Request) -> tuple[Handler, list[str]]:
        method = "GET" if request.method == "HEAD" else request.method
        allowed: set[str] = set()
        for route in self.routes:
            params = route.match(request.segments)
            if params is None:
                continue
            handler = route.methods.get(method)
            if handler is not None:
                return handler, params
            allowed.update(route.methods)
        if allowed:
            if "GET" in allowed:
                allowed.add("HEAD")
            raise HTTPError(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed on {request.path}; use {', '.join(sorted(allowed))}",
                {"Allow": ", ".join(sorted(allowed))},
            )
        raise HTTPError(404, "not_found", f"no route for {request.path}")

    async def handle(self, request: Request) -> Response:
        try:
            if not self.authorized(request):
                raise _unauthorized()
            handler, params = self.resolve(request)
            return await handler(request, params)
        except HTTPError as exc:
            return error_response(exc)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("ops request %s %s: Redis unavailable: %s", request.method, request.path, exc)
            return error_response(HTTPError(503, "unavailable", f"Redis is unavailable: {exc}"))
        except Exception as exc:
            log.exception("ops request %s %s failed", request.method, request.path)
            return error_response(HTTPError(500, "internal_error", f"{type(exc).__name__}: {exc}"))

    async def _store(self) -> Store:
        return await self.client._get_store()

    # -- static and probes -----------------------------------------------------------------------
    async def dashboard(self, request: Request, params: list[str]) -> Response:
        if self._dashboard is None:
            resource = importlib.resources.files("durable").joinpath("static/dashboard.html")
            self._dashboard = resource.read_bytes()
        return Response(200, self._dashboard, "text/html; charset=utf-8", {"Content-Security-Policy": _CSP})

    async def metrics(self, request: Request, params: list[str]) -> Response:
        rt = self.runtime
        if rt is not None:
            _metrics.set_worker_slots(rt.activities.slots_used, rt.config.concurrency)
            owned = rt.owned_partitions()
            _metrics.PARTITIONS_OWNED.set(len(owned))
            await self._publish_partition_gauges(owned)
        return Response(200, generate_latest(_metrics.REGISTRY), _metrics.CONTENT_TYPE)

    async def _publish_partition_gauges(self, owned: list[int]) -> None:
        """Backlog, oldest message age and pending timers of the partitions this worker owns."""
        labels: set[str] = set()
        if not owned and not self._published_partitions:
            return
        try:
            with anyio.fail_after(PROBE_TIMEOUT_SECONDS):
                infos = await q.partitions_info(await self._store(), only=owned)
        except (RedisError, OSError, TimeoutError) as exc:
            log.debug("partition gauges not refreshed: %s", exc)
            return
        for info in infos:
            label = _metrics.partition_label(info.partition)
            labels.add(label)
            _metrics.PARTITION_BACKLOG.labels(partition=label).set(info.backlog)
            _metrics.PARTITION_OLDEST_MESSAGE_AGE.labels(partition=label).set(info.oldest_age_seconds)
            _metrics.TIMERS_PENDING.labels(partition=label).set(info.timers)
        for label in self._published_partitions - labels:
            for gauge in (
                _metrics.PARTITION_BACKLOG,
                _metrics.PARTITION_OLDEST_MESSAGE_AGE,
                _metrics.TIMERS_PENDING,
            ):
                with contextlib.suppress(KeyError):
                    gauge.remove(label)
        self._published_partitions = labels

    async def healthz(self, request: Request, params: list[str]) -> Response:
        rt = self.runtime
        if rt is None:
            return json_response(200, {"status": "ok", "worker": False})
        if rt.stopped.is_set():
            return json_response(503, {"status": "failing", "reasons": ["the worker has stopped"]})
        if rt.draining:
            # shutting down on purpose: the loops wind down, that is not a reason to restart it
            return json_response(200, {"status": "ok", "worker": True, "draining": True})
        interval = rt.config.balance_interval_ms / 1000
        limit = 3 * interval + LIVENESS_MARGIN_SECONDS
        age = time.monotonic() - rt.last_balance
        body: dict[str, Any] = {
            "status": "ok",
            "worker": True,
            "worker_id": rt.worker_id,
            "last_balance_seconds_ago": round(age, 3),
            "limit_seconds": limit,
        }
        if age > limit:
            body["status"] = "failing"
            body["reasons"] = [f"the balance loop last ran {age:.1f}s ago (limit {limit:.1f}s)"]
            return json_response(503, body)
        return json_response(200, body)

    async def readyz(self, request: Request, params: list[str]) -> Response:
        rt = self.runtime
        reasons: list[str] = []
        checks: dict[str, Any] = {}
        store: Store | None = None
        try:
            with anyio.fail_after(PROBE_TIMEOUT_SECONDS):
                store = await self._store()
                await q.ping(store)
            checks["redis"] = "ok"
        except (RedisError, OSError, TimeoutError) as exc:
            checks["redis"] = f"unreachable: {exc or type(exc).__name__}"
            reasons.append(f"Redis is unreachable: {exc or type(exc).__name__}")
        if rt is not None:
            owned = rt.owned_partitions()
            checks["draining"] = rt.draining
            checks["partitions_owned"] = len(owned)
            if rt.draining:
                reasons.append("the worker is draining")
            registered = False
            if store is not None and checks["redis"] == "ok":
                try:
                    with anyio.fail_after(PROBE_TIMEOUT_SECONDS):
                        registered = await q.is_worker_registered(store, rt.worker_id)
                except (RedisError, OSError, TimeoutError):
                    registered = False
            checks["registered"] = registered
            if not owned and not registered:
                reasons.append("partition balancing has not run yet")
        status = 503 if reasons else 200
        body: dict[str, Any] = {"status": "ready" if not reasons else "not_ready", "checks": checks}
        if reasons:
            body["reasons"] = reasons
        return json_response(status, body)

    async def hub_info(self, request: Request, params: list[str]) -> Response:
        store = await self._store()
        rt = self.runtime
        return json_response(
            200,
            {
                "hub": self.client.hub,
                "partitions": await q.partition_count(store),
                "worker_id": rt.worker_id if rt is not None else None,
                "owned_partitions": rt.owned_partitions() if rt is not None else [],
                "auth_required": self.token is not None,
                "entities_supported": self.entities_supported,
                "version": _package_version(),
            },
        )

    # -- orchestrations --------------------------------------------------------------------------
    async def start_orchestration(self, request: Request, params: list[str]) -> Response:
        name = params[0]
        data = _json_body(request)
        start_at = _datetime_param(request, "start_at")
        try:
            iid = await self.client.schedule_new_orchestration(
                name, input=data, instance_id=request.param("instance_id"), start_at=start_at
            )
        except OrchestrationAlreadyExistsError as exc:
            raise HTTPError(409, "already_exists", str(exc)) from None
        except (SerializationError, PayloadTooLargeError) as exc:
            raise _payload_error(exc) from None
        except ValueError as exc:
            raise HTTPError(400, "invalid_request", str(exc)) from None
        return json_response(202, {"instance_id": iid}, {"Location": f"/v1/orchestrations/{_quote(iid)}"})

    async def get_orchestration(self, request: Request, params: list[str]) -> Response:
        state = await self.client.get_orchestration_state(params[0])
        if state is None:
            raise _not_found(params[0])
        return json_response(200, state_json(state))

    async def list_orchestrations(self, request: Request, params: list[str]) -> Response:
        statuses = _status_filter(request.params("status"))
        limit = _int_param(request, "limit", 100, 1, MAX_LIST_LIMIT)
        states = await self.client.list_orchestrations(
            status=statuses,
            name=request.param("name"),
            created_from=_datetime_param(request, "created_from"),
            created_to=_datetime_param(request, "created_to"),
            limit=limit,
        )
        return json_response(200, [state_json(s) for s in states])

    async def history(self, request: Request, params: list[str]) -> Response:
        iid = params[0]
        if await self.client.get_orchestration_state(iid) is None:
            raise _not_found(iid)
        events = await self.client.get_orchestration_history(iid)
        return json_response(200, [history_event_json(e) for e in events])

    async def raise_event(self, request: Request, params: list[str]) -> Response:
        iid, event = params
        data = _json_body(request)
        try:
            await self.client.raise_orchestration_event(iid, event, data=data)
        except OrchestrationNotFoundError:
            raise _not_found(iid) from None
        except (SerializationError, PayloadTooLargeError) as exc:
            raise _payload_error(exc) from None
        return json_response(202, {"instance_id": iid, "event": event})

    async def terminate(self, request: Request, params: list[str]) -> Response:
        iid = params[0]
        output = _json_body(request)
        try:
            await self.client.terminate_orchestration(iid, output=output)
        except OrchestrationNotFoundError:
            raise _not_found(iid) from None
        except (SerializationError, PayloadTooLargeError) as exc:
            raise _payload_error(exc) from None
        return json_response(202, {"instance_id": iid, "action": "terminate"})

    async def suspend(self, request: Request, params: list[str]) -> Response:
        iid = params[0]
        try:
            await self.client.suspend_orchestration(iid, reason=_reason_body(request))
        except OrchestrationNotFoundError:
            raise _not_found(iid) from None
        return json_response(202, {"instance_id": iid, "action": "suspend"})

    async def resume(self, request: Request, params: list[str]) -> Response:
        iid = params[0]
        try:
            await self.client.resume_orchestration(iid, reason=_reason_body(request))
        except OrchestrationNotFoundError:
            raise _not_found(iid) from None
        return json_response(202, {"instance_id": iid, "action": "resume"})

    async def purge(self, request: Request, params: list[str]) -> Response:
        iid = params[0]
        try:
            purged = await self.client.purge_orchestration(iid)
        except ValueError as exc:
            raise HTTPError(409, "still_running", str(exc)) from None
        if not purged:
            raise _not_found(iid)
        return json_response(200, {"instance_id": iid, "purged": True})

    # -- entities --------------------------------------------------------------------------------
    def _entity_method(self, name: str) -> Callable[..., Any]:
        method = getattr(self.client, name, None)
        if method is None or not callable(method):
            raise HTTPError(
                501,
                "not_implemented",
                f"entities are not available: this version of the durable client has no {name}()",
            )
        return method  # type: ignore[no-any-return]

    @staticmethod
    def _entity_id(name: str, key: str) -> str:
        """``@name@key``; entity names are case-insensitive and stored lower-cased."""
        if "@" in name:
            raise HTTPError(400, "invalid_entity_id", f"entity names cannot contain '@': {name!r}")
        return f"@{name.lower()}@{key}"

    async def list_entities(self, request: Request, params: list[str]) -> Response:
        limit = _int_param(request, "limit", 100, 1, MAX_LIST_LIMIT)
        rows = await q.list_entities(await self._store(), request.param("name"), limit)
        for row in rows:
            row["last_modified_at"] = _iso_ms(row.pop("last_modified_at_ms"))
        return json_response(200, rows)

    async def get_entity(self, request: Request, params: list[str]) -> Response:
        name, key = params
        entity_id = self._entity_id(name, key)
        get = self._entity_method("get_entity")
        try:
            result = get(entity_id)
            if inspect.isawaitable(result):
                result = await result
        except (TypeError, ValueError) as exc:
            raise HTTPError(400, "invalid_entity_id", str(exc)) from None
        if result is None:
            raise HTTPError(404, "not_found", f"no entity with id {entity_id!r}")
        canonical = str(getattr(result, "entity_id", entity_id))
        with contextlib.suppress(ValueError):
            name, key = q.split_entity_id(canonical)
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
        return json_response(200, body)

    async def signal_entity(self, request: Request, params: list[str]) -> Response:
        name, key, operation = params
        entity_id = self._entity_id(name, key)
        data = _json_body(request)
        signal = self._entity_method("signal_entity")
        try:
            result = signal(entity_id, operation, input=data)
            if inspect.isawaitable(result):
                result = await result
        except (SerializationError, PayloadTooLargeError) as exc:
            raise _payload_error(exc) from None
        except (TypeError, ValueError) as exc:
            raise HTTPError(400, "invalid_request", str(exc)) from None
        body = {"entity_id": entity_id, "operation": operation}
        if isinstance(result, str):
            body["signal_id"] = result
        return json_response(202, body)

    # -- hub state -------------------------------------------------------------------------------
    async def scale(self, request: Request, params: list[str]) -> Response:
        target = _int_param(request, "target_per_worker", q.DEFAULT_TARGET_PER_WORKER, 1, 1_000_000)
        rec = await q.scale_recommendation(await self._store(), target)
        return json_response(200, rec.to_json())

    async def partitions(self, request: Request, params: list[str]) -> Response:
        infos = await q.partitions_info(await self._store())
        mine = set(self.runtime.owned_partitions()) if self.runtime is not None else set()
        out = []
        for info in infos:
            row = info.to_json()
            row["owned_by_this_worker"] = info.partition in mine
            out.append(row)
        return json_response(200, out)

    async def workers(self, request: Request, params: list[str]) -> Response:
        rows = await q.live_workers(await self._store())
        me = self.runtime.worker_id if self.runtime is not None else None
        for row in rows:
            row["this_worker"] = row["worker_id"] == me
            row["expires_at"] = _iso_ms(row.pop("expires_at_ms"))
            row["heartbeat_at"] = _iso_ms(row.pop("heartbeat_at_ms"))
        return json_response(200, rows)


def _unauthorized() -> HTTPError:
    return HTTPError(
        401,
        "unauthorized",
        "this route requires the header 'Authorization: Bearer <token>'",
        {"WWW-Authenticate": 'Bearer realm="durable"'},
    )


def _not_found(instance_id: str) -> HTTPError:
    return HTTPError(404, "not_found", f"no orchestration with id {instance_id!r}")


def _quote(segment: str) -> str:
    return quote(segment, safe="")


def _package_version() -> str:
    try:
        return importlib.metadata.version("durable")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# -- the socket server -----------------------------------------------------------------------------
class _Connection:
    """Reads one request from a stream, answers it and closes."""

    def __init__(self, app: OpsApp, stream: anyio.abc.SocketStream) -> None:
        self.app = app
        self.stream = stream
        self.reader = BufferedByteReceiveStream(stream)
        self.body_consumed = True

    async def read_request(self) -> Request:
        try:
            head = await self.reader.receive_until(b"\r\n\r\n", MAX_HEADER_BYTES)
        except anyio.DelimiterNotFound:
            raise HTTPError(
                431, "headers_too_large", f"request head exceeds {MAX_HEADER_BYTES} bytes"
            ) from None
        method, target, headers = _parse_request_head(head)
        try:
            path, segments, query = _split_target(target)
        except UnicodeDecodeError:
            raise HTTPError(400, "bad_request", "the request path is not valid UTF-8") from None
        request = Request(method, path, segments, query, headers)
        encoding = headers.get("transfer-encoding", "identity").lower()
        if encoding != "identity":
            self.body_consumed = False
            raise HTTPError(
                411, "length_required", "chunked request bodies are not supported; send Content-Length"
            )
        raw_length = headers.get("content-length", "0")
        if not raw_length.isdigit():
            raise HTTPError(400, "bad_request", f"invalid Content-Length {raw_length[:30]!r}")
        length = int(raw_length)
        if not self.app.authorized(request):
            # refuse before reading (or inviting, with 100-continue) the body
            self.body_consumed = length == 0
            raise _unauthorized()
        if length > MAX_BODY_BYTES:
            self.body_consumed = False
            raise HTTPError(
                413, "payload_too_large", f"the request body ({length} bytes) exceeds {MAX_BODY_BYTES} bytes"
            )
        if length:
            if headers.get("expect", "").lower() == "100-continue":
                await self.stream.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.body_consumed = False
            request.body = await self.reader.receive_exactly(length)
            self.body_consumed = True
        return request

    async def run(self) -> None:
        request: Request | None = None
        try:
            try:
                with anyio.fail_after(READ_TIMEOUT_SECONDS):
                    request = await self.read_request()
            except HTTPError as exc:
                response = error_response(exc)
            except TimeoutError:
                response = error_response(
                    HTTPError(408, "request_timeout", "the request was not received in time")
                )
                self.body_consumed = False
            else:
                response = await self.app.handle(request)
            head_only = request is not None and request.method == "HEAD"
            await self.stream.send(response.encode(head_only))
            if request is not None:
                log.debug("%s %s -> %d", request.method, request.path, response.status)
            if not self.body_consumed:
                await self._linger()
        except (
            anyio.EndOfStream,
            anyio.IncompleteRead,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
        ):
            pass
        except OSError as exc:
            log.debug("ops connection error: %s", exc)
        finally:
            with anyio.CancelScope(shield=True):
                await self.stream.aclose()

    async def _linger(self) -> None:
        """Read and drop what the client still sends, so closing does not reset the connection
        before it has read the response."""
        try:
            await self.stream.send_eof()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return
        with anyio.move_on_after(1.0):
            dropped = 0
            while dropped < 4 * MAX_BODY_BYTES:
                try:
                    chunk = await self.reader.receive(65536)
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    return
                dropped += len(chunk)


async def serve_ops(
    runtime: Runtime | None,
    client: AsyncClient,
    host: str = "0.0.0.0",
    port: int = 9464,
    token: str | None = None,
    *,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ops HTTP endpoints until cancelled.

    ``runtime`` is the worker's runtime (None for an API-only server), ``client`` performs the
    API's reads and commands. ``token`` (default ``$DURABLE_OPS_TOKEN``; ``""`` disables it)
    protects every route but ``/healthz``, ``/readyz`` and the static ``/`` page. Reports the
    port actually bound through ``task_status`` (pass ``port=0`` for any free port).
    """
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    app = OpsApp(runtime, client, token)
    limiter = anyio.CapacityLimiter(MAX_CONCURRENT_REQUESTS)

    async def on_connection(stream: anyio.abc.SocketStream) -> None:
        async with limiter:
            await _Connection(app, stream).run()

    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    async with listener:
        bound = int(listener.extra(anyio.abc.SocketAttribute.local_port))
        log.info("ops server listening on %s:%d", host, bound)
        task_status.started(bound)
        await listener.serve(on_connection)
