"""Automatic pipelining: concurrent single commands from one client share a round trip.

While a batch is on the wire, new commands queue up; the next batch carries all of them. A lone
command still costs one round trip, and a burst of N concurrent calls costs about one round trip
per batch instead of N (the technique ioredis and Lettuce call auto-pipelining).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

SendBatch = Callable[[list[bytes]], Awaitable[list[Any]]]


class AutoPipeline:
    """Queues pre-encoded commands and sends them in batches on one connection."""

    def __init__(self, send: SendBatch, max_batch: int = 512) -> None:
        self._send = send
        self._max_batch = max_batch
        self._queue: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._flushing = False
        self._task: asyncio.Task[None] | None = None

    async def call(self, payload: bytes) -> Any:
        """Send one command; returns its reply (an error reply raises)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((payload, future))
        if not self._flushing:
            self._flushing = True
            self._task = loop.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                try:
                    replies = await self._send([payload for payload, _ in batch])
                except BaseException as exc:  # the batch failed as a whole (connection lost, ...)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, future), reply in zip(batch, replies, strict=True):
                    if future.done():
                        continue
                    if isinstance(reply, Exception):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        finally:
            self._flushing = False
