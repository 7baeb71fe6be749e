"""Remote work items: the hub's streams of work for executors outside the worker processes.

A partition owner does not run the code of every instance it owns: orchestrations, activities and
entity operations of Durable Task SDK workers (connected to ``durable sidecar``) go out as work
items on three hub-wide streams, read by the consumer group ``remote-executors``. Each work item
is small (instance or entity id and the token of the outstanding step or batch, or an activity
task); the executor replies through the inbox of the instance's partition, where the owner
commits the reply with the usual fencing.

Executors advertise the orchestrator (and entity) names they can run in the hub's executor table, so that an
owner knows which instances to hand out instead of failing them as unregistered.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from .keys import PREFIX
from .resp import pack_command

if TYPE_CHECKING:
    from .store import Store

#: the consumer group of the remote work-item streams
REMOTE_GROUP = "remote-executors"
#: the executor table entry meaning "runs any orchestrator name"
ANY_NAME = "*"
#: executor table entries for entities are ``@`` and the entity name ...
ENTITY_PREFIX = "@"
#: ... or this one: "runs any entity"
ANY_ENTITY = "@*"

Fields = dict[bytes, bytes]
StreamEntry = tuple[str, Fields]


class WorkItemKeys:
    """The hub-wide keys of remote execution."""

    def __init__(self, hub: str) -> None:
        tag = f"{PREFIX}:{{{hub}}}"
        #: stream of orchestration work items (instance id, step token)
        self.orchestrations = f"{tag}:remote:orchestrations"
        #: stream of activity tasks scheduled by remotely executed orchestrations
        self.activities = f"{tag}:remote:activities"
        #: stream of entity work items (entity id, batch token)
        self.entities = f"{tag}:remote:entities"
        #: hash: orchestrator name (or ``*``; ``@name`` or ``@*`` for entities) -> ms when an
        #: executor last advertised it
        self.executors = f"{tag}:remote:executors"


class WorkItemStore:
    """Reads and acknowledges remote work items; the only code of remote execution that talks to Redis."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.keys = WorkItemKeys(store.hub)

    @property
    def _redis(self) -> Any:
        return self.store.redis

    # -- the executor table ----------------------------------------------------------------------
    async def advertise(self, names: Iterable[str]) -> None:
        """Record that an executor can run these orchestrator names (``*``: any name)."""
        now = int(time.time() * 1000)
        mapping = {n: now for n in names}
        if mapping:
            await self._redis.hset(self.keys.executors, mapping=mapping)

    async def advertised(self) -> dict[str, int]:
        """Orchestrator names executors advertised, with the time (ms) they last did."""
        raw = await self._redis.hgetall(self.keys.executors)
        return {k.decode(): int(v) for k, v in raw.items()}

    # -- streams ---------------------------------------------------------------------------------
    async def ensure_groups(self) -> None:
        for stream in (self.keys.orchestrations, self.keys.activities, self.keys.entities):
            try:
                await self._redis.xgroup_create(stream, REMOTE_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def read(
        self, consumer: str, counts: dict[str, int], block_ms: int
    ) -> list[tuple[str, StreamEntry]]:
        """New entries of the given streams (stream key -> how many at most) for ``consumer``."""
        wanted = {s: ">" for s, n in counts.items() if n > 0}
        if not wanted:
            return []
        out: list[tuple[str, StreamEntry]] = []
        resp = await self._redis.xreadgroup(
            REMOTE_GROUP, consumer, wanted, count=max(counts.values()), block=block_ms
        )
        for stream, entries in resp or ():
            key = stream.decode() if isinstance(stream, bytes) else str(stream)
            out.extend((key, (eid.decode(), fields)) for eid, fields in entries if fields)
        return out

    async def claim_stale(
        self, stream: str, consumer: str, min_idle_ms: int, count: int
    ) -> list[tuple[str, Fields, int]]:
        """Take over entries whose consumer went quiet: (id, fields, times delivered)."""
        resp = await self._redis.xautoclaim(
            stream, REMOTE_GROUP, consumer, min_idle_ms, start_id="0-0", count=count
        )
        claimed = [(eid.decode(), fields) for eid, fields in resp[1] if fields]
        deleted = resp[2] if len(resp) > 2 else []
        if deleted:
            await self._redis.xack(stream, REMOTE_GROUP, *deleted)
        if not claimed:
            return []
        pending = await self._redis.xpending_range(
            stream, REMOTE_GROUP, min=claimed[0][0], max=claimed[-1][0], count=len(claimed) * 2 + 10
        )
        counts = {p["message_id"].decode(): int(p["times_delivered"]) for p in pending}
        return [(eid, fields, counts.get(eid, 1)) for eid, fields in claimed]

    async def touch(self, stream: str, consumer: str, ids: Sequence[str]) -> None:
        """Reset the idle time of entries still being worked on here."""
        if ids:
            await self._redis.xclaim(stream, REMOTE_GROUP, consumer, 0, list(ids), justid=True)

    async def hand_back(self, stream: str, ids: Sequence[str], idle_ms: int) -> None:
        """Make entries immediately reclaimable by other executors (graceful stop)."""
        if ids:
            await self._redis.xclaim(
                stream, REMOTE_GROUP, "handed-back", 0, list(ids), idle=idle_ms + 1, justid=True
            )

    async def ack(self, stream: str, ids: Sequence[str]) -> int:
        """Acknowledge and delete entries; how many were still pending."""
        if not ids:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        pipe.xack(stream, REMOTE_GROUP, *ids)
        pipe.xdel(stream, *ids)
        acked, _ = await pipe.execute()
        return int(acked)

    async def reply(self, target: str, message: bytes, stream: str, entry_id: str) -> bool:
        """Deliver a reply to the inbox of ``target``'s partition, then acknowledge the work item
        it answers (in this order: a crash in between redelivers the item, and the owner drops
        the second reply). True if this reply acknowledged it (the first reply to it)."""
        store = self.store
        inbox = pack_command(b"XADD", store.keys_for(target).inbox, b"*", b"m", message)
        if store.cluster:
            await store._pipeline_raw([inbox])
            return await self.ack(stream, [entry_id]) > 0
        replies = await store._pipeline_raw(
            [
                inbox,
                pack_command(b"XACK", stream, REMOTE_GROUP, entry_id),
                pack_command(b"XDEL", stream, entry_id),
            ]
        )
        return int(replies[1]) > 0

    async def entity_snapshot(self, entity_id: str) -> tuple[Fields, Fields]:
        """An entity's two hashes (state, control), read atomically (one slot: MULTI/EXEC)."""
        pk = self.store.keys_for(entity_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hgetall(pk.entity(entity_id))
        pipe.hgetall(pk.entity_control(entity_id))
        main, control = await pipe.execute()
        return main, control

    async def snapshot(self, instance_id: str) -> tuple[Fields, list[bytes]]:
        """An instance's hash and history, read atomically (one slot: MULTI/EXEC)."""
        pk = self.store.keys_for(instance_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hgetall(pk.instance(instance_id))
        pipe.lrange(pk.history(instance_id), 0, -1)
        fields, history = await pipe.execute()
        return fields, history
