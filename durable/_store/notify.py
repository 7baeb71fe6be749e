"""Status-change notifications for waiting clients: one pub/sub connection per client.

A wait registers interest in one instance's channel; a single reader task wakes the waiters when a
status message arrives. Notifications are hints only: waiters re-read the state, and re-check on
a timer so a lost message (or a reconnect) never strands them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.exceptions import RedisError

log = logging.getLogger("durable.client")


class StatusNotifier:
    """Shared subscriber; lives on the event loop of the client that created it."""

    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self._pubsub: Any = None
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def register(self, channel: str) -> asyncio.Event:
        event = asyncio.Event()
        async with self._lock:
            waiters = self._waiters.setdefault(channel, set())
            waiters.add(event)
            if len(waiters) == 1:
                await self._subscribe(channel)
        return event

    async def unregister(self, channel: str, event: asyncio.Event) -> None:
        async with self._lock:
            waiters = self._waiters.get(channel)
            if waiters is None:
                return
            waiters.discard(event)
            if not waiters:
                del self._waiters[channel]
                if self._pubsub is not None:
                    with contextlib.suppress(RedisError, OSError):
                        await self._pubsub.unsubscribe(channel)

    async def _subscribe(self, channel: str) -> None:
        try:
            if self._pubsub is None:
                self._pubsub = self._redis.pubsub()
            await self._pubsub.subscribe(channel)
        except (RedisError, OSError):
            await self._reset()
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _reset(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()

    async def _read(self) -> None:
        failures = 0
        while self._waiters:
            try:
                if self._pubsub is None:
                    async with self._lock:
                        self._pubsub = self._redis.pubsub()
                        await self._pubsub.subscribe(*self._waiters)
                    self._wake_all()  # whatever happened meanwhile: re-check
                msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                failures = 0
            except (RedisError, OSError) as exc:
                failures += 1
                log.debug("status subscription lost: %s", exc)
                await self._reset()
                self._wake_all()
                await asyncio.sleep(min(0.05 * 2**failures, 1.0))
                continue
            if msg is None or msg.get("type") != "message":
                continue
            channel = msg["channel"]
            if isinstance(channel, bytes):
                channel = channel.decode()
            for event in self._waiters.get(channel, ()):
                event.set()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None
        await self._reset()
