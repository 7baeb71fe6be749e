"""The HTTP layer of the ops server: parsing, responses, errors, routing, auth, the limits
(the socket server that enforces them is :mod:`durable._ops.transport`).

A deliberately small HTTP/1.1 server on anyio TCP streams (so it runs inside the worker's own
event loop, under asyncio or trio): one request per connection (``Connection: close``), bodies
with ``Content-Length`` only, at most :data:`MAX_BODY_BYTES`. What a request means is up to the
application (:class:`durable._ops.server.OpsApp`): it admits or refuses a request from its head,
before the body is read, says which requests are health probes, and turns a :class:`Request` into
a :class:`Response`.

Anyone who can reach the port can open connections, so no connection holds anything scarce until
it has sent its request head, within a short timeout. Only then does a request take one of a
bounded number of slots, and health probes take none: they never wait behind other requests. One
client address keeps a bounded number of connections open, and so do all the connections that still
wait for their head (:class:`durable._ops.transport.Limits` holds the numbers).

Writes (every method but GET and HEAD) must say ``Content-Type: application/json`` (else 415) and
must not come from another site in a browser (an ``Origin`` that is not the ``Host``, or
``Sec-Fetch-Site: cross-site``: 403), so that a web page cannot send them, token or not. JSON
bodies are strict: ``NaN``, ``Infinity`` and numbers beyond the float range are refused (400).

Errors are JSON: ``{"error": "<code>", "detail": "<human readable>"}`` (:class:`HTTPError`).
"""

from __future__ import annotations

import datetime as _dt
import hmac
import json
import logging
import math
import os
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .._config import ENV_OPS_TOKEN
from .._core.serialization import PayloadTooLargeError
from .views import to_json_value

__all__ = [
    "MAX_BODY_BYTES",
    "TOKEN_ENV",
    "HTTPError",
    "InvalidTokenError",
    "Request",
    "Response",
    "Route",
    "check_token",
    "check_write",
    "error_response",
    "json_response",
    "payload_error",
]

log = logging.getLogger("durable.ops")

#: Environment variable holding the bearer token when ``serve_ops(token=None)``.
TOKEN_ENV = ENV_OPS_TOKEN
#: Largest accepted request body (the payload cap of the engine).
MAX_BODY_BYTES = 2 * 1024 * 1024
#: Largest accepted request line plus headers.
MAX_HEADER_BYTES = 64 * 1024
#: Time allowed to receive the request line and headers, from the connection's arrival.
HEAD_TIMEOUT_SECONDS = 5.0
#: Time allowed to receive the body, once the head is in.
READ_TIMEOUT_SECONDS = 15.0
#: Time allowed to send the response.
WRITE_TIMEOUT_SECONDS = 15.0
#: Requests handled at the same time (health probes aside); further requests wait for a slot ...
MAX_CONCURRENT_REQUESTS = 64
#: ... this long at most, then get 503.
QUEUE_TIMEOUT_SECONDS = 10.0
#: Open connections of one client address.
MAX_CONNECTIONS_PER_CLIENT = 32
#: Connections waiting for their request head, all clients together.
MAX_WAITING_CONNECTIONS = 512
#: Methods that change nothing; every other method is a write.
SAFE_METHODS = frozenset({"GET", "HEAD"})

_REASONS = {
    100: "Continue",
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    415: "Unsupported Media Type",
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


def payload_error(exc: Exception, code: str = "invalid_payload") -> HTTPError:
    """413 for a payload over the size limit, else 400 with ``code``."""
    if isinstance(exc, PayloadTooLargeError):
        return HTTPError(413, "payload_too_large", str(exc))
    return HTTPError(400, code, str(exc))


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


class _NonFiniteNumber(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NonFiniteNumber(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFiniteNumber(f"the number {text[:40]} is out of range")
    return value


def json_body(request: Request) -> Any:
    """The request body parsed as strict JSON; an empty body is ``null``.

    ``NaN``, ``Infinity`` and ``-Infinity`` (which Python's parser accepts) and numbers too large
    for a float (which it turns into infinity) are refused, as the wire format refuses them.
    """
    if not request.body.strip():
        return None
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPError(400, "invalid_json", f"the body is not UTF-8: {exc}") from None
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except _NonFiniteNumber as exc:
        raise HTTPError(
            400, "invalid_json", f"the body is not valid JSON: {exc} (NaN and Infinity are not allowed)"
        ) from None
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


class InvalidTokenError(ValueError):
    """An ops token that would silently turn authentication off, or that no request could match."""


def check_token(raw: str | None) -> str | None:
    """The bearer token ``raw`` without surrounding whitespace; None (no auth) when it is unset
    or empty.

    Raises :class:`InvalidTokenError` for a token of only whitespace (taking it for "no token"
    would turn authentication off without a word) and for one with characters an HTTP header
    cannot carry, non-ASCII or control characters (no request could ever match it).
    """
    if raw is None or raw == "":
        return None
    token = raw.strip()
    if not token:
        raise InvalidTokenError(
            "the ops token is only whitespace, which would turn authentication off: "
            "set a real token, or unset it to run without one"
        )
    if not all(" " <= c <= "~" for c in token):
        raise InvalidTokenError(
            "the ops token contains a character that is not printable ASCII (a non-ASCII letter or "
            "a control character); an HTTP header cannot carry it, so no request could ever match"
        )
    return token


def resolve_token(token: str | None) -> str | None:
    """``token``, else ``$DURABLE_OPS_TOKEN``, checked by :func:`check_token`; None (no auth) for
    an empty string."""
    return check_token(os.environ.get(TOKEN_ENV) if token is None else token)


def _default_port(scheme: str) -> int | None:
    return {"http": 80, "https": 443}.get(scheme)


def _same_origin(origin: str, host: str | None) -> bool:
    """Whether the browser's ``Origin`` names the server the request was sent to (``Host``)."""
    if not host or origin == "null":
        return False
    try:
        sent = urlsplit(origin)
        target = urlsplit(f"//{host}")
        sent_port = sent.port or _default_port(sent.scheme.lower())
        target_port = target.port or _default_port(sent.scheme.lower())
    except ValueError:
        return False
    if sent.scheme.lower() not in ("http", "https") or not sent.hostname or not target.hostname:
        return False
    return sent.hostname == target.hostname and sent_port == target_port


def check_write(request: Request) -> None:
    """Refuse a write (any method but GET and HEAD) that a web page of another site could have
    sent (403), or whose body is not declared JSON (415); nothing for other methods.

    Browsers send ``Origin`` with every cross-origin write and ``Sec-Fetch-Site`` with every
    request; the content type matters because a page may send the three "simple" ones
    (form-encoded, multipart, text/plain) anywhere without asking, but not ``application/json``.
    """
    if request.method in SAFE_METHODS:
        return
    if request.headers.get("sec-fetch-site", "").strip().lower() == "cross-site":
        raise HTTPError(403, "cross_site", "writes are refused from pages of another site")
    origin = request.headers.get("origin")
    if origin is not None and not _same_origin(origin.strip(), request.headers.get("host")):
        raise HTTPError(
            403, "cross_site", f"writes are refused from another origin ({origin[:100]!r} is not this server)"
        )
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        shown = f"{media_type[:60]!r}" if media_type else "none"
        raise HTTPError(
            415,
            "unsupported_media_type",
            f"{request.method} requests must send 'Content-Type: application/json' (got {shown})",
        )


def bearer_authorized(request: Request, token: str | None, public_paths: Collection[str]) -> bool:
    """Whether ``request`` may proceed: no token, a public path, or ``Authorization: Bearer``."""
    if token is None or request.path in public_paths:
        return True
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode(), token.encode())
