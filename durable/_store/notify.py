"""Status-change notifications for waiting clients: one pub/sub connection per client.

A wait registers interest in one instance's channel; a single reader task wakes the waiters when a
status message arrives. Notifications are hints only: waiters re-read the state, and re-check on
a timer so a lost message (or a reconnect) never strands them.

Subscriptions go out in batches: the registrations that arrive while one SUBSCRIBE is being sent
share the next one, and a channel whose last waiter left is unsubscribed later, with the others
that left meanwhile (a message for it until then finds no waiter). A thousand concurrent waits
cost a few commands, not two thousand. ``register`` returns once its channel's SUBSCRIBE is sent.

Because they are hints, nothing that goes wrong in the subscription layer reaches a waiter:
``register`` and ``unregister`` never raise (short of cancellation). Any failure of a pub/sub call
counts, not only ``RedisError``/``OSError``: while Redis restarts, redis-py can also fail with an
``AttributeError`` (a write on a connection its reader just tore down) or a ``RuntimeError``. A
failure marks the pub/sub connection broken; the reader task -- the only one that ever drops it,
and only while no (un)subscribe is using it, since a dropped pub/sub hands its connection back to
the shared pool -- builds a new one, subscribes what is still wanted and wakes every waiter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

log = logging.getLogger("durable.client")


#: unsubscribe channels without waiters once this many have gathered (or after IDLE_SECONDS)
UNSUBSCRIBE_BATCH = 256
IDLE_SECONDS = 1.0


class Hint(asyncio.Event):
    """Set when the channel announces a change; ``status`` is what it announced (the instance's
    new status), or None for "re-check, whatever it is" (after a reconnect)."""

    status: bytes | None = None


class StatusNotifier:
    """Shared subscriber; lives on the event loop of the client that created it."""

    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self._pubsub: Any = None
        #: the pub/sub connection failed: the reader replaces it
        self._broken = False
        self._waiters: dict[str, set[Hint]] = {}
        #: channels with waiters whose SUBSCRIBE is still to be sent
        self._to_subscribe: set[str] = set()
        #: channels still subscribed whose waiters have all left, and since when there are some
        self._idle: set[str] = set()
        self._idle_since = 0.0
        self._reader: asyncio.Task[None] | None = None
        #: held by every (un)subscribe and by the reader while it replaces the pub/sub connection
        self._lock = asyncio.Lock()

    async def register(self, channel: str) -> Hint:
        """An event set when ``channel`` announces a change (or whenever a re-check is due)."""
        event = Hint()
        waiters = self._waiters.setdefault(channel, set())
        waiters.add(event)
        if len(waiters) == 1:
            if channel in self._idle:
                self._idle.discard(channel)  # still subscribed
            else:
                self._to_subscribe.add(channel)
        async with self._lock:  # the holder sends every channel asked for until then
            if self._to_subscribe and not self._broken:
                channels = list(self._to_subscribe)
                self._to_subscribe.clear()
                try:
                    if self._pubsub is None:
                        self._pubsub = self._redis.pubsub()
                    await self._pubsub.subscribe(*channels)
                except Exception as exc:
                    self._lost(exc)  # the reader subscribes again, with every wanted channel
            if self._reader is None or self._reader.done():
                self._reader = asyncio.get_running_loop().create_task(self._read())
        return event

    async def unregister(self, channel: str, event: Hint) -> None:
        """Forget ``event``; a channel without waiters is unsubscribed with the next batch."""
        waiters = self._waiters.get(channel)
        if waiters is None:
            return
        waiters.discard(event)
        if waiters:
            return
        del self._waiters[channel]
        if channel in self._to_subscribe:
            self._to_subscribe.discard(channel)  # never sent
            return
        if not self._idle:
            self._idle_since = time.monotonic()
        self._idle.add(channel)
        if len(self._idle) >= UNSUBSCRIBE_BATCH:
            await self._unsubscribe_idle()

    async def _unsubscribe_idle(self) -> None:
        async with self._lock:
            if not self._idle:
                return
            channels = list(self._idle)
            self._idle.clear()
            if self._pubsub is None or self._broken:
                return  # a new connection subscribes only what has waiters
            try:
                await self._pubsub.unsubscribe(*channels)
            except Exception as exc:
                self._lost(exc)

    def _lost(self, exc: BaseException) -> None:
        log.debug("status subscription lost: %r", exc)
        self._broken = True

    async def _reset(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        self._broken = False
        self._to_subscribe.clear()  # the new connection subscribes every channel with waiters
        self._idle.clear()
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for event in waiters:
                event.status = None
                event.set()

    async def _read(self) -> None:
        failures = 0
        while True:
            if self._idle and (not self._waiters or time.monotonic() - self._idle_since >= IDLE_SECONDS):
                await self._unsubscribe_idle()
            if not self._waiters:
                break
            try:
                if self._pubsub is None or self._broken:
                    async with self._lock:
                        await self._reset()
                        if not self._waiters:
                            break
                        self._pubsub = self._redis.pubsub()
                        await self._pubsub.subscribe(*self._waiters)
                    self._wake_all()  # whatever happened meanwhile: re-check
                msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                failures = 0
            except Exception as exc:
                failures += 1
                self._lost(exc)
                self._wake_all()
                await asyncio.sleep(min(0.05 * 2**failures, 1.0))
                continue
            if not isinstance(msg, dict) or msg.get("type") != "message":
                continue
            channel = msg.get("channel")
            if isinstance(channel, bytes):
                channel = channel.decode(errors="replace")
            data = msg.get("data")
            for event in self._waiters.get(str(channel), ()):
                event.status = data if isinstance(data, bytes) else None
                event.set()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None
        await self._reset()
