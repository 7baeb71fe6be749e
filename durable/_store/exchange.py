"""Raw exchanges with Redis: pre-encoded commands sent on one connection, their replies read back.

The store's hot path (the commit script, inbox and task reads, result batches, instance loads)
encodes its own commands (:mod:`.resp`) and skips redis-py's per-command machinery: the pool
checkout (a lock, a socket probe, observability hooks), the per-reply timer and the response
callbacks. On Redis Cluster the commands go through redis-py, which routes them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import typed_error

#: connections the store keeps for its own raw exchanges (beyond these they go back to the pool)
_IDLE_CONNECTIONS = 64

_NATIVE: dict[type, bool] = {}


def native(conn: Any) -> bool:
    """Whether ``conn`` is one of redis-py's own socket connections (its parser fed by its socket),
    as opposed to a stand-in that reads replies its own way (fakeredis's)."""
    cls = type(conn)
    native = _NATIVE.get(cls)
    if native is None:
        native = _NATIVE[cls] = cls.read_response is AbstractConnection.read_response
    return native


async def read_replies(conn: Any, count: int) -> list[Any]:
    """Read ``count`` replies from a raw exchange, error replies returned in place (as exceptions).

    redis-py's ``read_response`` arms a timer and translates errors around every single reply;
    here one socket timeout covers the whole exchange (a blocking read blocks for less than it).
    The caller disconnects the connection if this raises."""
    replies: list[Any] = []
    if not native(conn):  # a stand-in connection (fakeredis): its own read_response, reply by reply
        for _ in range(count):
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return replies
    parser = conn._parser
    try:
        async with asyncio.timeout(conn.socket_timeout):
            for _ in range(count):
                replies.append(await parser.read_response())
    except TimeoutError as exc:  # asyncio's (before OSError: it is one)
        raise RedisTimeoutError("Timeout reading from Redis") from exc
    except OSError as exc:
        raise RedisConnectionError(f"Error while reading from Redis: {exc.args}") from exc
    return replies


class RawExchanges:
    """The raw-exchange part of :class:`~durable._store.store.Store` (a mixin)."""

    redis: Any
    cluster: bool
    #: standalone: connections between raw exchanges (see :meth:`_conn`)
    _idle: list[Any]

    async def _pipeline_raw(self, commands: list[bytes], *, raise_errors: bool = True) -> list[Any]:
        """Send pre-encoded commands on one connection and read their replies (a pipeline without
        redis-py's per-command encoding). On Cluster the commands go through redis-py instead.
        With ``raise_errors=False`` error replies are returned in place."""
        if self.cluster:
            pipe = self.redis.pipeline(transaction=False)
            for raw in commands:
                name, *rest = unpack_command(raw)
                pipe.execute_command(name.decode(), *rest)
            try:
                replies = list(await pipe.execute(raise_on_error=raise_errors))
            except ResponseError as exc:
                if (typed := typed_error(exc)) is exc:
                    raise
                raise typed from exc
            except AttributeError as exc:
                # redis-py's cluster pipeline, on a node connection torn down under it (a node
                # restarting, slots moving, a shutdown): "'NoneType' object has no attribute
                # 'writelines'". It is a lost connection, and callers retry those.
                raise RedisConnectionError(f"cluster connection lost: {exc}") from exc
            return [typed_error(r) if isinstance(r, ResponseError) else r for r in replies]
        conn = await self._conn()
        ok = False
        try:
            await conn.send_packed_command(b"".join(commands), check_health=False)
            replies = await read_replies(conn, len(commands))
            ok = True
        finally:
            await self._conn_done(conn, ok)
        error: Exception | None = None
        for i, reply in enumerate(replies):
            if isinstance(reply, ResponseError):
                replies[i] = typed = typed_error(reply)
                error = error or typed
        if error is not None and raise_errors:
            raise error
        return replies

    async def _command_raw(self, payload: bytes) -> Any:
        """Send one pre-encoded command and read its reply (standalone Redis only)."""
        conn = await self._conn()
        ok = False
        try:
            await conn.send_packed_command(payload, check_health=False)
            reply = (await read_replies(conn, 1))[0]
            ok = True
        finally:
            await self._conn_done(conn, ok)
        if isinstance(reply, ResponseError):
            raise typed_error(reply)
        return reply

    async def _conn(self) -> Any:
        """A connection for one raw exchange (standalone Redis only).

        The store keeps the connections of its raw exchanges between uses: redis-py's pool takes
        a lock, probes the socket and runs its observability hooks on every checkout and return,
        which cost more than the hot path's commands themselves. A kept connection the server
        closed meanwhile is reconnected here; one whose exchange failed in any way (an error, a
        timeout, a cancellation) may have replies left on the wire, so :meth:`_conn_done`
        disconnects it and gives it back to the pool instead of keeping it."""
        idle = self._idle
        if not idle:
            return await self.redis.connection_pool.get_connection()
        conn = idle.pop()
        reader = conn._reader
        if reader is None or reader.at_eof():
            try:
                await conn.disconnect()
                await conn.connect()
            except BaseException:
                await self.redis.connection_pool.release(conn)
                raise
        return conn

    async def _conn_done(self, conn: Any, ok: bool) -> None:
        if ok and len(self._idle) < _IDLE_CONNECTIONS and native(conn):
            self._idle.append(conn)
            return
        if not ok:
            await conn.disconnect()
        await self.redis.connection_pool.release(conn)


def unpack_command(raw: bytes) -> list[bytes]:
    """Inverse of :func:`pack_command` (for the Cluster path of :meth:`RawExchanges._pipeline_raw`)."""
    out: list[bytes] = []
    pos = raw.index(b"\r\n") + 2
    while pos < len(raw):
        end = raw.index(b"\r\n", pos)
        size = int(raw[pos + 1 : end])
        start = end + 2
        out.append(raw[start : start + size])
        pos = start + size + 2
    return out
