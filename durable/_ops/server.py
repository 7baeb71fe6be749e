"""The operations HTTP server: metrics, health probes, a JSON API and the dashboard.

A deliberately small HTTP/1.1 server on anyio TCP streams (so it runs inside the worker's own
event loop, under asyncio or trio; see :mod:`durable._ops_http`). Every route is cheap and reads
Redis through its own connection pool (the client's), never through the partition loops.

Routes::

    GET    /                                          the dashboard (static HTML, no data)
    GET    /metrics                                   Prometheus text exposition
    GET    /healthz                                   liveness of the worker's own loops
    GET    /readyz                                    readiness: Redis reachable, balanced, not draining
    GET    /v1/hub                                    hub name, partition count, this worker, auth
    POST   /v1/orchestrations/{name}[?instance_id=ID&tag.K=V] body: input -> 202 {"instance_id"}
    GET    /v1/orchestrations?status=&name=&created_from=&created_to=&tag.K=V&limit=
                         &continuation_token=         -> [state, ...] (X-Continuation-Token: next page)
    GET    /v1/orchestrations/{instance_id}[?wait=S]  -> 200 finished | 202 running, Retry-After | 404
    GET    /v1/orchestrations/{instance_id}/history   -> [event, ...] | 404
    POST   /v1/orchestrations/{instance_id}/events/{event}    body: data -> 202
    POST   /v1/orchestrations/{instance_id}/terminate[?recursive=false]|suspend|resume    -> 202
    POST   /v1/orchestrations/{instance_id}/rewind    body: reason -> 200 | 202 not applied yet | 404 | 409
    POST   /v1/orchestrations/{instance_id}/restart[?new_instance_id=true]  -> 202 {"instance_id"}
    DELETE /v1/orchestrations/{instance_id}[?recursive=false]   -> 200 purged | 404 | 409 still running
    POST   /v1/orchestrations/purge                   body: {"status", "name", "created_from",
                                                      "created_to"} -> 200 {"purged": n}
    GET    /v1/entities?name=&key_prefix=&last_modified_from=&last_modified_to=&include_state=&limit=
                   &continuation_token=               -> [{entity_id, name, key, last_modified_at[, state]}]
    GET    /v1/entities/{name}/{key}                  -> {"state": ...} | 404 | 501
    POST   /v1/entities/{name}/{key}/{operation}      body: input -> 202 | 501
    GET|POST /v1/schedules, GET|PATCH|DELETE /v1/schedules/{id},
    POST   /v1/schedules/{id}/pause|resume|trigger    recurring schedules (see durable._ops.schedules)
    GET    /v1/scale[?target_per_worker=N]            -> recommended worker count and its inputs
    GET    /v1/partitions                             -> owner, lease, backlog, timers per partition
    GET    /v1/workers                                -> live workers

Authentication: when a token is configured (the ``token`` argument, else ``$DURABLE_OPS_TOKEN``;
an empty string disables it) every route requires ``Authorization: Bearer <token>`` *except*
``/healthz`` and ``/readyz`` (the kubelet cannot send a token) and ``/`` (a static page with no
data, which asks for the token and sends it with its API calls). ``/metrics`` is protected:
it names orchestrations and activities, and the Helm chart's ServiceMonitor sends the token.
A token of only whitespace, or with characters a header cannot carry, is refused at start
(:class:`~durable._ops.http.InvalidTokenError`); without a token the server logs a warning.

Writes (POST, DELETE) must send ``Content-Type: application/json`` and must not come from a
page of another site (see :func:`~durable._ops.http.check_write`), token or not. The health
probes never wait for a request slot, and no connection takes one before it has sent its request
head (see :class:`~durable._ops.transport.Limits`).

``GET /metrics`` first refreshes the gauges only this server can see: the activity slots of the
worker and, for the partitions it owns, their inbox backlog, oldest message age and pending timers.
The dashboard's throughput is the rate of ``durable_orchestrations_finished_total`` of *this*
process.

Payloads are converted for JSON by :func:`to_json_value` (datetimes ISO-8601, bytes base64,
tuples lists, ...). Errors are JSON: ``{"error": "<code>", "detail": "<human readable>"}``.

This module holds the orchestration and hub routes and puts them together (:class:`OpsApp`); the
probes and metrics are in :mod:`durable._ops.probes`, the entity routes in :mod:`durable._ops.entities`,
the schedule routes in :mod:`durable._ops.schedules`, the JSON views it shares with the operator CLI
in :mod:`durable._ops.views`, the HTTP/1.1 plumbing in :mod:`durable._ops.http`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.resources
import logging
from urllib.parse import quote

import anyio
import anyio.abc
from redis.exceptions import RedisError

from .._client import AsyncClient
from .._core.model import OrchestrationAlreadyExistsError, OrchestrationNotFoundError, OrchestrationStatus
from .._core.serialization import PayloadTooLargeError, SerializationError
from .._runtime import tracing
from .._runtime.runtime import Runtime
from .._store import queries as q
from .._store.store import Store
from . import lifecycle as lifecycle
from . import views as views
from .entities import MAX_LIST_LIMIT, EntityRoutes, token_header
from .http import (
    MAX_BODY_BYTES,
    TOKEN_ENV,
    Handler,
    HTTPError,
    Request,
    Response,
    Route,
    bearer_authorized,
    check_write,
    datetime_param,
    error_response,
    int_param,
    json_body,
    json_response,
    payload_error,
    resolve,
    resolve_token,
    unauthorized,
)
from .probes import PROBE_PATHS, Probes
from .schedules import ScheduleRoutes
from .transport import serve
from .views import history_event_json, state_json, to_json_value

__all__ = [
    "MAX_BODY_BYTES",
    "TOKEN_ENV",
    "OpsApp",
    "Request",
    "Response",
    "history_event_json",
    "serve_ops",
    "state_json",
    "to_json_value",
]

log = logging.getLogger("durable.ops")

#: ``GET /v1/orchestrations/{id}?wait=`` waits at most this long.
MAX_WAIT_SECONDS = 300.0
#: ``Retry-After`` of a 202 for an instance that has not finished.
RETRY_AFTER_SECONDS = 1

_PUBLIC_PATHS = frozenset({"/", "/index.html", *PROBE_PATHS})

_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


# -- request helpers of the routes -----------------------------------------------------------------
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


def _reason_body(request: Request) -> str | None:
    body = json_body(request)
    if body is None or isinstance(body, str):
        return body
    if isinstance(body, dict) and isinstance(body.get("reason"), str | type(None)):
        return body.get("reason")
    raise HTTPError(400, "invalid_body", 'expected a JSON string or {"reason": "..."}')


class OpsApp:
    """Request handling, independent of the socket plumbing (see :func:`serve_ops`)."""

    def __init__(self, runtime: Runtime | None, client: AsyncClient, token: str | None) -> None:
        self.runtime = runtime
        self.client = client
        self.token = token or None
        self._dashboard: bytes | None = None
        self.probes = Probes(runtime, client)
        o = "orchestrations"
        self.routes: list[Route] = [
            Route((), {"GET": self.dashboard}),
            Route(("index.html",), {"GET": self.dashboard}),
            *self.probes.routes(),
            Route(("v1", "hub"), {"GET": self.hub_info}),
            Route(("v1", o), {"GET": self.list_orchestrations}),
            Route(("v1", o, "purge"), {"POST": self.purge_matching}),  # before POST /v1/o/{name}
            Route(
                ("v1", o, None),
                {"GET": self.get_orchestration, "POST": self.start_orchestration, "DELETE": self.purge},
            ),
            Route(("v1", o, None, "history"), {"GET": self.history}),
            Route(("v1", o, None, "terminate"), {"POST": self.terminate}),
            Route(("v1", o, None, "suspend"), {"POST": self.suspend}),
            Route(("v1", o, None, "resume"), {"POST": self.resume}),
            Route(("v1", o, None, "rewind"), {"POST": self.rewind}),
            Route(("v1", o, None, "restart"), {"POST": self.restart}),
            Route(("v1", o, None, "events", None), {"POST": self.raise_event}),
            *EntityRoutes(client).routes(),
            *ScheduleRoutes(client).routes(),
            Route(("v1", "scale"), {"GET": self.scale}),
            Route(("v1", "partitions"), {"GET": self.partitions}),
            Route(("v1", "workers"), {"GET": self.workers}),
        ]

    @property
    def entities_supported(self) -> bool:
        """Whether the client can signal entities and read their state (newer clients can)."""
        return all(callable(getattr(self.client, m, None)) for m in ("get_entity", "signal_entity"))

    # -- dispatch --------------------------------------------------------------------------------
    def authorized(self, request: Request) -> bool:
        return bearer_authorized(request, self.token, _PUBLIC_PATHS)

    def resolve(self, request: Request) -> tuple[Handler, list[str]]:
        return resolve(self.routes, request)

    def admit(self, request: Request) -> tuple[Handler, list[str]]:
        """The handler of ``request``, or the error refusing it, judged from its head alone:
        401 without the token, 404/405 without a route, 403/415 for a write a web page could
        have sent (see :func:`check_write`)."""
        if not self.authorized(request):
            raise unauthorized()
        found = self.resolve(request)
        check_write(request)
        return found

    def is_probe(self, request: Request) -> bool:
        return request.path in PROBE_PATHS and request.method in ("GET", "HEAD")

    async def handle(self, request: Request) -> Response:
        try:
            handler, params = self.admit(request)
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
            resource = importlib.resources.files("durable._ops").joinpath("static/dashboard.html")
            self._dashboard = resource.read_bytes()
        return Response(200, self._dashboard, "text/html; charset=utf-8", {"Content-Security-Policy": _CSP})

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
        data = json_body(request)
        start_at = datetime_param(request, "start_at")
        try:
            # the caller's traceparent header is the parent of the create_orchestration span
            with tracing.remote_parent(request.headers.get("traceparent")):
                iid = await self.client.schedule_new_orchestration(
                    name,
                    input=data,
                    instance_id=request.param("instance_id"),
                    start_at=start_at,
                    tags=_tags(request) or None,
                )
        except OrchestrationAlreadyExistsError as exc:
            raise HTTPError(409, "already_exists", str(exc)) from None
        except (SerializationError, PayloadTooLargeError) as exc:
            raise payload_error(exc) from None
        except ValueError as exc:
            raise HTTPError(400, "invalid_request", str(exc)) from None
        return json_response(202, {"instance_id": iid}, {"Location": f"/v1/orchestrations/{_quote(iid)}"})

    async def get_orchestration(self, request: Request, params: list[str]) -> Response:
        """200 with the state once the instance has finished; 202 with ``Retry-After`` while it runs
        (the async HTTP API pattern). ``?wait=SECONDS`` waits up to that long for the end first."""
        iid = params[0]
        wait = _seconds_param(request, "wait", MAX_WAIT_SECONDS)
        state = await self.client.get_orchestration_state(iid)
        if state is None:
            raise _not_found(iid)
        if wait and not state.runtime_status.is_terminal:
            with contextlib.suppress(TimeoutError):
                state = await self.client.wait_for_orchestration_completion(iid, timeout=wait)
            state = await self.client.get_orchestration_state(iid) or state
        if state.runtime_status.is_terminal:
            return json_response(200, state_json(state))
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS), "Location": f"/v1/orchestrations/{_quote(iid)}"}
        return json_response(202, state_json(state), headers)

    async def list_orchestrations(self, request: Request, params: list[str]) -> Response:
        statuses = _status_filter(request.params("status"))
        limit = int_param(request, "limit", 100, 1, MAX_LIST_LIMIT)
        tags = _tags(request)
        try:
            page = await self.client.list_orchestrations(
                status=statuses,
                name=request.param("name"),
                created_from=datetime_param(request, "created_from"),
                created_to=datetime_param(request, "created_to"),
                tags=tags or None,
                limit=limit,
                continuation_token=request.param("continuation_token"),
            )
        except ValueError as exc:
            raise HTTPError(400, "invalid_parameter", str(exc)) from None
        return json_response(200, [state_json(s) for s in page], token_header(page.continuation_token))

    async def history(self, request: Request, params: list[str]) -> Response:
        iid = params[0]
        if await self.client.get_orchestration_state(iid) is None:
            raise _not_found(iid)
        events = await self.client.get_orchestration_history(iid)
        return json_response(200, [history_event_json(e) for e in events])

    async def raise_event(self, request: Request, params: list[str]) -> Response:
        iid, event = params
        data = json_body(request)
        try:
            await self.client.raise_orchestration_event(iid, event, data=data)
        except OrchestrationNotFoundError:
            raise _not_found(iid) from None
        except (SerializationError, PayloadTooLargeError) as exc:
            raise payload_error(exc) from None
        return json_response(202, {"instance_id": iid, "event": event})

    async def terminate(self, request: Request, params: list[str]) -> Response:
        iid = params[0]
        output = json_body(request)
        try:
            await self.client.terminate_orchestration(
                iid, output=output, recursive=lifecycle.flag(request, "recursive", True)
            )
        except OrchestrationNotFoundError:
            raise _not_found(iid) from None
        except (SerializationError, PayloadTooLargeError) as exc:
            raise payload_error(exc) from None
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
            purged = await self.client.purge_orchestration(
                iid, recursive=lifecycle.flag(request, "recursive", True)
            )
        except ValueError as exc:
            raise HTTPError(409, "still_running", str(exc)) from None
        if not purged:
            raise _not_found(iid)
        return json_response(200, {"instance_id": iid, "purged": True})

    async def purge_matching(self, request: Request, params: list[str]) -> Response:
        return await lifecycle.purge_matching(self.client, request)

    async def rewind(self, request: Request, params: list[str]) -> Response:
        return await lifecycle.rewind(self.client, params[0], _reason_body(request))

    async def restart(self, request: Request, params: list[str]) -> Response:
        return await lifecycle.restart(self.client, request, params[0])

    # -- hub state -------------------------------------------------------------------------------
    async def scale(self, request: Request, params: list[str]) -> Response:
        target = int_param(request, "target_per_worker", q.DEFAULT_TARGET_PER_WORKER, 1, 1_000_000)
        return json_response(200, await views.scale_view(await self._store(), target))

    async def partitions(self, request: Request, params: list[str]) -> Response:
        mine = set(self.runtime.owned_partitions()) if self.runtime is not None else set()
        return json_response(200, await views.partitions_view(await self._store(), mine))

    async def workers(self, request: Request, params: list[str]) -> Response:
        me = self.runtime.worker_id if self.runtime is not None else None
        return json_response(200, await views.workers_view(await self._store(), me))


def _tags(request: Request) -> dict[str, str]:
    """``?tag.K=V`` query parameters."""
    return {k[4:]: v[-1] for k, v in request.query.items() if k.startswith("tag.") and len(k) > 4 and v}


def _seconds_param(request: Request, name: str, limit: float) -> float:
    raw = request.param(name)
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise HTTPError(
            400, "invalid_parameter", f"{name} must be a number of seconds, got {raw!r}"
        ) from None
    if not 0 <= value <= limit:
        raise HTTPError(400, "invalid_parameter", f"{name} must be between 0 and {limit:g} seconds")
    return value


def _not_found(instance_id: str) -> HTTPError:
    return HTTPError(404, "not_found", f"no orchestration with id {instance_id!r}")


def _quote(segment: str) -> str:
    return quote(segment, safe="")


def _package_version() -> str:
    try:
        return importlib.metadata.version("durable")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


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
    protects every route but ``/healthz``, ``/readyz`` and the static ``/`` page; a token of only
    whitespace or with characters a header cannot carry raises
    :class:`~durable._ops.http.InvalidTokenError` (a ValueError) before anything is bound.
    Without a token, a warning is logged. Reports the port actually bound through
    ``task_status`` (pass ``port=0`` for any free port).
    """
    resolved = resolve_token(token)
    app = OpsApp(runtime, client, resolved)
    async with anyio.create_task_group() as tg:
        bound: int = await tg.start(serve, app, host, port)
        if resolved is None:
            log.warning(
                "the ops server on %s:%d runs without a token ($%s is not set): anyone who can reach "
                "it can read the hub and start, terminate and purge orchestrations; set $%s",
                host,
                bound,
                TOKEN_ENV,
                TOKEN_ENV,
            )
        task_status.started(bound)
