"""Blocking connections for the synchronous client's one-round-trip calls.

The synchronous :class:`~durable.Client` runs the asynchronous client on an event-loop thread.
For a call that is a single command (start an instance, read its state, a wait that finds the
instance already there) the hop to that thread and redis-py's asyncio stack cost several times
the round trip itself. :class:`DirectRedis` sends such a command from the calling thread on a
plain socket from a thread-safe pool: one pre-encoded command, one reply.

Standalone Redis only (on a Redis Cluster the client keeps the event-loop path, which follows
slot moves). Errors are redis-py's: the caller decides which ones send it to the slower path.
"""

from __future__ import annotations

import hashlib
from typing import Any

import redis
from redis.exceptions import NoScriptError, ResponseError

from .errors import typed_error
from .resp import pack_command

#: as the store's: longer than any command this sends should take, short enough to notice a
#: server that stopped answering
_SOCKET_TIMEOUT = 30.0


class DirectRedis:
    """A pool of blocking connections to one standalone Redis, shared by the caller's threads."""

    def __init__(self, url: str) -> None:
        self._pool = redis.ConnectionPool.from_url(url, socket_timeout=_SOCKET_TIMEOUT)
        self._shas: dict[str, str] = {}

    def close(self) -> None:
        self._pool.disconnect()

    def _call(self, payload: bytes, timeout: float | None = None) -> Any:
        """Send one encoded command and return its reply. With ``timeout``, a reply that takes
        longer raises TimeoutError (the connection is dropped: its reply may still come)."""
        conn: Any = self._pool.get_connection()  # redis-py leaves parts of Connection untyped
        try:
            conn.send_packed_command([payload], check_health=False)
            if timeout is not None and not conn.can_read(timeout=max(timeout, 0.0)):
                raise TimeoutError(f"no reply from Redis within {timeout:.3f}s")
            return conn.read_response()
        except ResponseError as exc:  # the reply was read in full: the connection stays usable
            raise typed_error(exc) from None
        except BaseException:
            conn.disconnect()
            raise
        finally:
            self._pool.release(conn)

    def hgetall(self, key: str, timeout: float | None = None) -> dict[bytes, bytes]:
        reply = self._call(pack_command(b"HGETALL", key), timeout)
        if isinstance(reply, dict):  # RESP3
            return reply
        it = iter(reply)
        return dict(zip(it, it, strict=True))

    def script(self, source: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA of a script (EVAL when the server does not know it yet, which loads it)."""
        sha = self._shas.get(source)
        if sha is None:
            sha = self._shas[source] = hashlib.sha1(source.encode()).hexdigest()
        try:
            return self._call(pack_command(b"EVALSHA", sha, len(keys), *keys, *args))
        except NoScriptError:
            return self._call(pack_command(b"EVAL", source, len(keys), *keys, *args))
