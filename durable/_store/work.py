"""Work streams: steps a partition owner sends to workers that have the code, one stream per
capability (``durable:{H}:work:<cap>``), read by the consumer group ``executors``. Activity tasks
waiting for a worker that registered the activity use the same streams (``a|<name>``) with the
activity group; see :mod:`durable._store.tasks`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from redis.exceptions import ResponseError

from .keys import EXECUTOR_GROUP, HubKeys

Fields = dict[bytes, bytes]


class WorkStreams:
    """The work-stream part of :class:`~durable._store.store.Store` (a mixin)."""

    redis: Any
    keys: HubKeys

    async def capabilities(self) -> dict[str, int]:
        """Every capability some worker advertised, with until when (ms) a live worker has it."""
        raw = await self.redis.hgetall(self.keys.caps)
        return {k.decode(): int(v) for k, v in raw.items()}

    async def ensure_work_groups(self, caps: Iterable[str], group: str = EXECUTOR_GROUP) -> None:
        for cap in caps:
            try:
                await self.redis.xgroup_create(self.keys.work(cap), group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def read_work(
        self, consumer: str, caps: Sequence[str], count: int, block_ms: int
    ) -> list[tuple[str, str, Fields]]:
        """New work items for ``consumer`` from the streams of ``caps``: (cap, entry id, fields)."""
        if not caps:
            return []
        streams = {self.keys.work(cap): ">" for cap in caps}
        by_key = {self.keys.work(cap): cap for cap in caps}
        resp = await self.redis.xreadgroup(EXECUTOR_GROUP, consumer, streams, count=count, block=block_ms)
        out: list[tuple[str, str, Fields]] = []
        for stream, entries in resp or []:
            cap = by_key[stream.decode() if isinstance(stream, bytes) else str(stream)]
            out.extend((cap, eid.decode(), fields) for eid, fields in entries if fields)
        return out

    async def claim_stale_work(
        self, consumer: str, cap: str, min_idle_ms: int, count: int
    ) -> list[tuple[str, Fields]]:
        """Items of ``cap`` that a worker took and did not finish (it died): take them over."""
        resp = await self.redis.xautoclaim(
            self.keys.work(cap), EXECUTOR_GROUP, consumer, min_idle_ms, start_id="0-0", count=count
        )
        return [(eid.decode(), fields) for eid, fields in resp[1] if fields]

    async def work_entries(self, cap: str, count: int) -> list[tuple[str, Fields]]:
        """The oldest items of ``cap``'s stream, taken or not."""
        entries = await self.redis.xrange(self.keys.work(cap), "-", "+", count=count)
        return [(eid.decode(), fields) for eid, fields in entries]

    async def ack_work(self, cap: str, eids: Sequence[str], group: str = EXECUTOR_GROUP) -> None:
        """Done with items of ``cap``'s stream: acknowledge and delete them."""
        if eids:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xack(self.keys.work(cap), group, *eids)
            pipe.xdel(self.keys.work(cap), *eids)
            await pipe.execute()

    async def hand_back_work(self, cap: str, eids: Sequence[str], idle_ms: int) -> None:
        """Make items this worker took but did not run reclaimable at once (graceful stop)."""
        if eids:
            await self.redis.xclaim(
                self.keys.work(cap),
                EXECUTOR_GROUP,
                "handed-back",
                0,
                list(eids),
                idle=idle_ms + 1,
                justid=True,
            )
