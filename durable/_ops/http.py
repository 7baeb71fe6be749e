"""The HTTP transport of the ops server: parsing, responses, errors, routing, auth, the serve loop.

A deliberately small HTTP/1.1 server on anyio TCP streams (so it runs inside the worker's own
event loop, under asyncio or trio): one request per connection (``Connection: close``), bodies
with ``Content-Length`` only, at most :data:`MAX_BODY_BYTES`. What a request means is up to the
application (:class:`durable._ops_server.OpsApp`): it says whether a request is authorized before
its body is read, and turns a :class:`Request` into a :class:`Response`.

Errors are JSON: ``{"error": "<code>", "detail": "<human readable>"}`` (:class:`HTTPError`).
"""

from __future__ import annotations

import datetime as _dt
import hmac
import json
import logging
import os
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from .._config import ENV_OPS_TOKEN
from .views import to_json_value

__all__ = [
    "MAX_BODY_BYTES",
    "TOKEN_ENV",
    "HTTPError",
    "Request",
    "Response",
    "Route",
    "error_response",
    "json_response",
    "serve",
]

log = logging.getLogger("durable.ops")

#: Environment variable holding the bearer token when ``serve_ops(token=None)``.
TOKEN_ENV = ENV_OPS_TOKEN
#: Largest accepted request body (the payload cap of the engine).
MAX_BODY_BYTES = 2 * 1024 * 1024
#: Largest accepted request line plus headers.
MAX_HEADER_BYTES = 64 * 1024
#: Time allowed to receive a whole request.
READ_TIMEOUT_SECONDS = 15.0
#: Requests handled at the same time; further connections wait.
MAX_CONCURRENT_REQUESTS = 64

_REASONS = {
    100: "Continue",
    200: "OK",
    201: "Created",
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


# -- requests, responses, errors -------------------------------------------------------------------
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


def unauthorized() -> HTTPError:
    return HTTPError(
        401,
        "unauthorized",
        "this route requires the header 'Authorization: Bearer <token>'",
        {"WWW-Authenticate": 'Bearer realm="durable"'},
    )


# -- parsing ---------------------------------------------------------------------------------------
def parse_request_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """(method, target, lower-cased headers) of a request line plus headers."""
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


def split_target(target: str) -> tuple[str, list[str], dict[str, list[str]]]:
    """(path, decoded path segments, query) of a request target."""
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


def int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    """Query parameter ``name`` as an integer in [lo, hi]; ``default`` when absent."""
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


def datetime_param(request: Request, name: str) -> _dt.datetime | None:
    """Query parameter ``name`` as an ISO-8601 date-time (no offset: UTC)."""
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


def json_body(request: Request) -> Any:
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


# -- routing and auth ------------------------------------------------------------------------------
Handler = Callable[[Request, list[str]], Awaitable[Response]]


@dataclass(frozen=True)
class Route:
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


def resolve(routes: Sequence[Route], request: Request) -> tuple[Handler, list[str]]:
    """The handler of ``request`` and its path parameters; 404 or 405 when there is none."""
    method = "GET" if request.method == "HEAD" else request.method
    allowed: set[str] = set()
    for route in routes:
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


def resolve_token(token: str | None) -> str | None:
    """``token``, else ``$DURABLE_OPS_TOKEN``; None (no auth) for an empty string."""
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    return token or None


def bearer_authorized(request: Request, token: str | None, public_paths: Collection[str]) -> bool:
    """Whether ``request`` may proceed: no token, a public path, or ``Authorization: Bearer``."""
    if token is None or request.path in public_paths:
        return True
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode(), token.encode())


# -- the socket server -----------------------------------------------------------------------------
class App(Protocol):
    """What the transport needs of the application."""

    def authorized(self, request: Request) -> bool: ...

    async def handle(self, request: Request) -> Response: ...


class _Connection:
    """Reads one request from a stream, answers it and closes."""

    def __init__(self, app: App, stream: anyio.abc.SocketStream) -> None:
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
        method, target, headers = parse_request_head(head)
        try:
            path, segments, query = split_target(target)
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
            raise unauthorized()
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


async def serve(
    app: App,
    host: str,
    port: int,
    *,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Answer connections on ``host:port`` with ``app`` until cancelled; reports the bound port
    through ``task_status``. At most :data:`MAX_CONCURRENT_REQUESTS` are handled at a time."""
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
