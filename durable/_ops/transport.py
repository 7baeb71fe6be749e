"""The socket server of the ops HTTP endpoint: connections, per-client limits, request slots.

See :mod:`durable._ops.http` for what a request is and the rules it enforces; this module holds
the connection handling that keeps health probes answering whatever else arrives.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from .http import (
    HEAD_TIMEOUT_SECONDS,
    MAX_BODY_BYTES,
    MAX_CONCURRENT_REQUESTS,
    MAX_CONNECTIONS_PER_CLIENT,
    MAX_HEADER_BYTES,
    MAX_WAITING_CONNECTIONS,
    QUEUE_TIMEOUT_SECONDS,
    READ_TIMEOUT_SECONDS,
    WRITE_TIMEOUT_SECONDS,
    HTTPError,
    Request,
    Response,
    error_response,
    parse_request_head,
    split_target,
)

__all__ = ["App", "Limits", "serve"]

log = logging.getLogger("durable.ops")


# -- the socket server -----------------------------------------------------------------------------
class App(Protocol):
    """What the transport needs of the application."""

    def admit(self, request: Request) -> object:
        """Raise :class:`HTTPError` to refuse ``request`` from its head, before its body is read
        (what it returns is not used)."""
        ...

    def is_probe(self, request: Request) -> bool:
        """Whether ``request`` is a health probe, which never waits for a request slot."""
        ...

    async def handle(self, request: Request) -> Response: ...


_CLOSED_ERRORS = (
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
)


@dataclass(frozen=True)
class Limits:
    """How the server protects itself, and its health probes, from slow or numerous clients."""

    #: seconds for the request line and headers, counted from the connection's arrival
    head_timeout: float = HEAD_TIMEOUT_SECONDS
    #: seconds for the body, once the head is in
    body_timeout: float = READ_TIMEOUT_SECONDS
    #: seconds to send the response
    write_timeout: float = WRITE_TIMEOUT_SECONDS
    #: requests handled at the same time; health probes do not count
    max_requests: int = MAX_CONCURRENT_REQUESTS
    #: seconds a request waits for a slot before it gets 503
    queue_timeout: float = QUEUE_TIMEOUT_SECONDS
    #: open connections of one client address
    per_client: int = MAX_CONNECTIONS_PER_CLIENT
    #: connections waiting for their head, all clients together
    max_waiting: int = MAX_WAITING_CONNECTIONS


def _client_address(stream: anyio.abc.SocketStream) -> str:
    address = stream.extra(anyio.abc.SocketAttribute.remote_address)
    host = address[0] if isinstance(address, tuple) else str(address)
    return host.removeprefix("::ffff:")  # an IPv4 client of a dual-stack socket


class _Registry:
    """The open connections of every client address, and those still waiting for their request
    head (oldest first): the ones closed to make room for newer connections."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.open: dict[str, int] = {}
        self.waiting: dict[_Connection, None] = {}  # insertion order: oldest first
        self.waiting_of: dict[str, dict[_Connection, None]] = {}

    def add(self, conn: _Connection) -> bool:
        """Count ``conn`` in; False when its address has its fill of connections that all sent
        their head already (``conn`` must then be refused)."""
        client = conn.client
        if self.open.get(client, 0) >= self.limits.per_client:
            waiting = self.waiting_of.get(client)
            if not waiting:
                return False
            self._evict(next(iter(waiting)))
        if len(self.waiting) >= self.limits.max_waiting:
            self._evict(next(iter(self.waiting)))
        self.open[client] = self.open.get(client, 0) + 1
        conn.counted = True
        self.waiting[conn] = None
        self.waiting_of.setdefault(client, {})[conn] = None
        return True

    def head_received(self, conn: _Connection) -> None:
        self.waiting.pop(conn, None)
        waiting = self.waiting_of.get(conn.client)
        if waiting is not None:
            waiting.pop(conn, None)
            if not waiting:
                del self.waiting_of[conn.client]

    def remove(self, conn: _Connection) -> None:
        self.head_received(conn)
        if conn.counted:
            conn.counted = False
            left = self.open[conn.client] - 1
            if left:
                self.open[conn.client] = left
            else:
                del self.open[conn.client]

    def _evict(self, conn: _Connection) -> None:
        log.debug("ops connection from %s closed before its request head: too many connections", conn.client)
        self.remove(conn)
        conn.evict()


class _Connection:
    """Reads one request from a stream, answers it and closes."""

    def __init__(
        self,
        app: App,
        stream: anyio.abc.SocketStream,
        client: str,
        limits: Limits,
        slots: anyio.Semaphore,
    ) -> None:
        self.app = app
        self.stream = stream
        self.client = client
        self.limits = limits
        self.slots = slots
        self.reader = BufferedByteReceiveStream(stream)
        self.body_consumed = True
        self.counted = False
        self.evicted = False
        self.length = 0
        # the head's deadline runs from the connection's arrival; evict() cancels it early
        self.head_scope = anyio.CancelScope(deadline=anyio.current_time() + limits.head_timeout)

    def evict(self) -> None:
        """Close this connection, which has not sent its request head yet, without an answer."""
        self.evicted = True
        self.head_scope.cancel()

    async def run(self, registry: _Registry) -> None:
        try:
            error: HTTPError | None = None
            try:
                request = await self._receive_head()
            except HTTPError as exc:
                request, error = None, exc
            registry.head_received(self)
            if error is not None:
                await self._send(error_response(error), None)
            elif request is not None:  # None: evicted, closed without an answer
                await self._send(await self._respond(request), request)
        except _CLOSED_ERRORS:
            pass
        except OSError as exc:
            log.debug("ops connection error: %s", exc)
        finally:
            registry.remove(self)
            with anyio.CancelScope(shield=True):
                await self.stream.aclose()

    async def refuse(self) -> None:
        """Answer 503 without reading the request: the client has too many connections open."""
        try:
            error = HTTPError(
                503,
                "too_many_connections",
                f"more than {self.limits.per_client} connections from {self.client} are open",
                {"Retry-After": "1"},
            )
            self.body_consumed = False
            await self._send(error_response(error), None)
        except (*_CLOSED_ERRORS, OSError):
            pass
        finally:
            with anyio.CancelScope(shield=True):
                await self.stream.aclose()

    async def _receive_head(self) -> Request | None:
        """The request from its head, admitted by the application; None when evicted."""
        with self.head_scope:
            try:
                head = await self.reader.receive_until(b"\r\n\r\n", MAX_HEADER_BYTES)
            except anyio.DelimiterNotFound:
                raise HTTPError(
                    431, "headers_too_large", f"request head exceeds {MAX_HEADER_BYTES} bytes"
                ) from None
        if self.head_scope.cancelled_caught:
            if self.evicted:
                return None
            self.body_consumed = False
            raise HTTPError(408, "request_timeout", "the request head was not received in time")
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
        self.length = int(raw_length)
        # refuse before reading (or inviting, with 100-continue) the body
        self.body_consumed = self.length == 0
        self.app.admit(request)
        if self.length > MAX_BODY_BYTES:
            raise HTTPError(
                413,
                "payload_too_large",
                f"the request body ({self.length} bytes) exceeds {MAX_BODY_BYTES} bytes",
            )
        return request

    async def _respond(self, request: Request) -> Response:
        """Handle ``request``: at once for a health probe, else in one of the request slots."""
        if self.app.is_probe(request):
            return await self._complete(request)
        acquired = False
        with anyio.move_on_after(self.limits.queue_timeout):
            await self.slots.acquire()
            acquired = True
        if not acquired:
            error = HTTPError(503, "busy", "the server is busy; try again", {"Retry-After": "1"})
            return error_response(error)
        try:
            return await self._complete(request)
        finally:
            self.slots.release()

    async def _complete(self, request: Request) -> Response:
        """Receive the body of ``request`` and let the application answer it."""
        if self.length:
            try:
                with anyio.fail_after(self.limits.body_timeout):
                    if request.headers.get("expect", "").lower() == "100-continue":
                        await self.stream.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                    request.body = await self.reader.receive_exactly(self.length)
            except TimeoutError:
                return error_response(
                    HTTPError(408, "request_timeout", "the request body was not received in time")
                )
            self.body_consumed = True
        return await self.app.handle(request)

    async def _send(self, response: Response, request: Request | None) -> None:
        head_only = request is not None and request.method == "HEAD"
        with anyio.move_on_after(self.limits.write_timeout):
            await self.stream.send(response.encode(head_only))
            if request is not None:
                log.debug("%s %s -> %d", request.method, request.path, response.status)
            if not self.body_consumed:
                await self._linger()

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
    limits: Limits | None = None,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Answer connections on ``host:port`` with ``app`` until cancelled; reports the bound port
    through ``task_status``. See :class:`Limits` for what a client may hold."""
    limits = limits or Limits()
    slots = anyio.Semaphore(limits.max_requests)
    registry = _Registry(limits)

    async def on_connection(stream: anyio.abc.SocketStream) -> None:
        try:
            client = _client_address(stream)
        except OSError:  # gone already
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            return
        conn = _Connection(app, stream, client, limits, slots)
        if not registry.add(conn):
            log.debug("ops connection from %s refused: %d connections open", client, limits.per_client)
            await conn.refuse()
            return
        await conn.run(registry)

    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    async with listener:
        bound = int(listener.extra(anyio.abc.SocketAttribute.local_port))
        log.info("ops server listening on %s:%d", host, bound)
        task_status.started(bound)
        await listener.serve(on_connection)
