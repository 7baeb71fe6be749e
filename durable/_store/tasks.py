"""Activity task streams: the hub's task stream, read by the consumer group ``activity-workers``,
and the per-activity work streams where a task waits for a worker that registered its activity.

A task is named by a *reference*: its entry id in the hub's task stream, or ``<entry id>@<name>``
for an entry of activity ``name``'s work stream. The store's methods take references and act on
the right stream; the activity runner treats them as opaque strings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from .._core.registry import capability
from .keys import ACTIVITY_GROUP, HubKeys, PartitionKeys
from .resp import pack_command, stream_entries, stream_replies

Fields = dict[bytes, bytes]
StreamEntry = tuple[str, Fields]


def task_ref(eid: str, activity: str | None) -> str:
    """The reference of entry ``eid`` of the task stream (``activity`` None) or of an activity's
    work stream."""
    return eid if activity is None else f"{eid}@{activity}"


class TaskStreams:
    """The activity-task part of :class:`~durable._store.store.Store` (a mixin)."""

    redis: Any
    keys: HubKeys
    cluster: bool
    strict_wait: tuple[int, int] | None
    _claim_cursors: dict[str, str]

    if TYPE_CHECKING:

        def keys_for(self, instance_id: str) -> PartitionKeys: ...

        async def _pipeline_raw(self, commands: list[bytes], *, raise_errors: bool = True) -> list[Any]: ...

        async def _command_raw(self, payload: bytes) -> Any: ...

        def _wait_args(self) -> list[Any]: ...

        def _check_wait(self, reply: Any) -> None: ...

    def _stream_of(self, ref: str) -> tuple[str, str]:
        eid, _, activity = ref.partition("@")
        return (self.keys.work(capability("a", activity)) if activity else self.keys.tasks), eid

    def _by_stream(self, refs: Iterable[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for ref in refs:
            stream, eid = self._stream_of(ref)
            out.setdefault(stream, []).append(eid)
        return out

    async def ensure_task_group(self, activities: Iterable[str] = ()) -> None:
        """Create the consumer group of the task stream, and of the work streams of ``activities``."""
        streams = [self.keys.tasks, *(self.keys.work(capability("a", a)) for a in activities)]
        for stream in streams:
            try:
                await self.redis.xgroup_create(stream, ACTIVITY_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def read_tasks(
        self, consumer: str, count: int, block_ms: int, activities: Sequence[str] = ()
    ) -> list[StreamEntry]:
        """New tasks for ``consumer``: from the task stream and the work streams of ``activities``
        (the activities this worker registered); returned as (reference, fields)."""
        streams = {self.keys.tasks: ">"}
        names = {self.keys.work(capability("a", a)): a for a in activities}
        streams.update(dict.fromkeys(names, ">"))
        out: list[StreamEntry] = []
        if self.cluster:
            resp = await self.redis.xreadgroup(ACTIVITY_GROUP, consumer, streams, count=count, block=block_ms)
            for stream, entries in resp or []:
                activity = names.get(stream.decode() if isinstance(stream, bytes) else str(stream))
                out.extend((task_ref(eid.decode(), activity), fields) for eid, fields in entries if fields)
            return out
        reply = await self._command_raw(
            pack_command(
                b"XREADGROUP",
                b"GROUP",
                ACTIVITY_GROUP,
                consumer,
                b"COUNT",
                count,
                b"BLOCK",
                block_ms,
                b"STREAMS",
                *streams,
                *streams.values(),
            )
        )
        for stream, entries in stream_replies(reply) if reply else ():
            activity = names.get(stream.decode())
            out.extend((task_ref(eid, activity), fields) for eid, fields in stream_entries(entries))
        return out

    async def claim_stale_tasks(
        self, consumer: str, min_idle_ms: int, count: int, activity: str | None = None
    ) -> list[tuple[str, Fields, int]]:
        """Take over tasks whose consumer went quiet; returns (reference, fields, times delivered).

        XAUTOCLAIM examines only about ten pending entries per requested one, so a small count on
        a long pending list (a busy worker's own fresh tasks first) would never reach the stale
        ones: the scan resumes where the previous call stopped, and goes on until it claims
        something or has covered the whole list once."""
        stream = self.keys.tasks if activity is None else self.keys.work(capability("a", activity))
        claimed: list[tuple[str, Fields]] = []
        for _ in range(1000):
            resp = await self.redis.xautoclaim(
                stream,
                ACTIVITY_GROUP,
                consumer,
                min_idle_ms,
                start_id=self._claim_cursors.get(stream, "0-0"),
                count=count,
            )
            cursor = resp[0].decode() if isinstance(resp[0], bytes) else str(resp[0])
            claimed = [(eid.decode(), fields) for eid, fields in resp[1] if fields]
            deleted = resp[2] if len(resp) > 2 else []
            if deleted:
                await self.redis.xack(stream, ACTIVITY_GROUP, *deleted)
            self._claim_cursors[stream] = cursor
            if claimed or cursor == "0-0":
                break
        if not claimed:
            return []
        pending = await self.redis.xpending_range(
            stream,
            ACTIVITY_GROUP,
            min=claimed[0][0],
            max=claimed[-1][0],
            count=len(claimed) * 2 + 10,
        )
        counts = {p["message_id"].decode(): int(p["times_delivered"]) for p in pending}
        return [(task_ref(eid, activity), fields, counts.get(eid, 1)) for eid, fields in claimed]

    async def touch_tasks(self, consumer: str, refs: Sequence[str]) -> None:
        """Reset the idle time of tasks still running here, so nobody reclaims them."""
        for stream, eids in self._by_stream(refs).items():
            await self.redis.xclaim(stream, ACTIVITY_GROUP, consumer, 0, eids, justid=True)

    def _ack_commands(self, refs: Iterable[str]) -> list[bytes]:
        commands: list[bytes] = []
        for stream, eids in self._by_stream(refs).items():
            commands.append(pack_command(b"XACK", stream, ACTIVITY_GROUP, *eids))
            commands.append(pack_command(b"XDEL", stream, *eids))
        return commands

    async def finish_tasks(self, results: Iterable[tuple[str, str, bytes]]) -> None:
        """Deliver activity results (target id, task reference, message) and ack their tasks."""
        commands: list[bytes] = []
        refs: list[str] = []
        for target, ref, message in results:
            commands.append(pack_command(b"XADD", self.keys_for(target).inbox, b"*", b"m", message))
            refs.append(ref)
        if self.cluster and commands:
            # across cluster nodes a pipeline's order is not kept: the results must be stored
            # before their tasks are acknowledged, or a crash in between would lose them
            await self._pipeline_raw(commands)
            commands = []
        commands.extend(self._ack_commands(refs))
        if self.strict_wait is not None:
            commands.append(pack_command(*self._wait_args()))
        if not commands:
            return
        replies = await self._pipeline_raw(commands)
        if self.strict_wait is not None:
            self._check_wait(replies[-1])

    async def ack_tasks(self, refs: Sequence[str]) -> None:
        if refs:
            await self._pipeline_raw(self._ack_commands(refs))

    async def park_task(self, ref: str, fields: Fields, activity: str, now_ms: int) -> None:
        """Move a task this worker cannot run to the work stream of its activity, where only
        workers that registered the activity read it (the copy first: a crash leaves a duplicate,
        which the orchestration drops, never a lost task)."""
        data: dict[bytes, bytes] = {b"m": fields[b"m"], b"parked": str(now_ms).encode()}
        await self.redis.xadd(self.keys.work(capability("a", activity)), data)
        await self.ack_tasks([ref])

    async def hand_back_tasks(self, refs: Sequence[str], idle_ms: int) -> None:
        """Make unfinished tasks immediately reclaimable by other workers (graceful stop)."""
        for stream, eids in self._by_stream(refs).items():
            await self.redis.xclaim(
                stream, ACTIVITY_GROUP, "handed-back", 0, eids, idle=idle_ms + 1, justid=True
            )

    async def dead_letter_task(self, ref: str, fields: Fields, reason: str) -> None:
        data: dict[bytes, bytes] = dict(fields)
        data[b"reason"] = reason.encode()
        data[b"task_id"] = ref.encode()
        await self.redis.xadd(self.keys.tasks_dlq, data, maxlen=10000, approximate=True)
