"""One owned partition: read the inbox, run both halves of a step, commit it, forward the outbox."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
from redis.exceptions import NoScriptError, ReadOnlyError, RedisError, ResponseError

from .._core import events as ev
from .._store.store import CommitPlan, ConflictError, FencedError, Store, StreamEntry
from .inbox import MalformedMessage, dlq_fields, forwarded_position, parse_entry, stream_id
from .poison import plan_poison
from .purge import PartitionPurger, PurgeJob
from .step import Message, StepHalf, StepState
from .tracing import run_after_commit

if TYPE_CHECKING:
    from .._config import WorkerConfig
    from .cache import InstanceCache
    from .clock import Clock
    from .instances import Instance
    from .leases import LeaseTable
    from .telemetry import Telemetry

log = logging.getLogger("durable.partition")


def _counts_as_attempt(exc: BaseException) -> bool:
    """Whether a failed commit says something about the step itself (a script error that will
    repeat), rather than about Redis being away, full or read-only (which says nothing)."""
    if not isinstance(exc, ResponseError) or isinstance(exc, (ReadOnlyError, NoScriptError)):
        return False
    text = str(exc)
    return not any(
        mark in text for mark in ("OOM", "READONLY", "LOADING", "BUSY", "MASTERDOWN", "NOREPLICAS")
    )


class PartitionRunner:
    """Runs the steps of one partition while this worker holds its lease."""

    def __init__(
        self,
        index: int,
        lease: str,
        *,
        store: Store,
        config: WorkerConfig,
        clock: Clock,
        leases: LeaseTable,
        cache: InstanceCache[Instance],
        metrics: Telemetry,
        halves: tuple[StepHalf, ...],
        draining: Callable[[], bool],
    ) -> None:
        self.index = index
        self.lease = lease
        self.store = store
        self.config = config
        self.clock = clock
        self.leases = leases
        self.cache = cache
        self.metrics = metrics
        self.halves = halves
        self.draining = draining
        self.keys = store.partition_keys(index)
        self.cursor = "0-0"
        self.src_pos: dict[str, str] = {}
        self.next_due: int | None = None
        self.outbox_dirty = True
        self.stopping = False
        self._read_scope: anyio.CancelScope | None = None
        self.steps = 0
        #: failed attempts at the current cursor, and messages still to take one at a time
        self.attempts = 0
        self.isolate_left = 0
        self._counted = False
        self.purger = PartitionPurger(
            index, store=store, config=config, clock=clock, metrics=metrics, cache=cache
        )
        #: purge requests of the step being built, kept once it commits
        self._accepted: list[PurgeJob] = []

    # -- lifecycle -------------------------------------------------------------------------------
    def stop(self) -> None:
        """Finish the current step, then leave the loop."""
        self.stopping = True
        if self._read_scope is not None:
            self._read_scope.cancel()

    def _running(self) -> bool:
        return not (self.stopping or self.draining()) and self.leases.valid(self.index)

    async def _load_state(self) -> None:
        state = await self.store.read_partition_state(self.index)
        self.cursor = state.get("cursor", "0-0")
        self.src_pos = {k[4:]: v for k, v in state.items() if k.startswith("src:")}
        self.purger.load(state)
        self.next_due = await self.store.next_timer_due(self.index)

    async def _note_attempt(self) -> None:
        cfg = self.config
        self.attempts, self.isolate_left = await self.store.note_recovery(
            self.index, self.lease, self.cursor, cfg.max_recoveries, cfg.batch_size
        )

    def _poisoned(self) -> bool:
        return self.attempts > self.config.max_recoveries + 1

    async def run(self) -> None:
        """The partition loop; returns when stopped or when the lease is lost."""
        failures = 0
        while True:
            try:
                await self._load_state()
                break
            except (RedisError, OSError) as exc:  # Redis restarting: retry while the lease lasts
                failures += 1
                if not self._running():
                    return
                log.warning("partition %d: loading its state failed (%s); retrying", self.index, exc)
                await anyio.sleep(min(0.05 * 2**failures, 2.0))
        failures = 0
        while self._running():
            try:
                if self._poisoned():
                    await self._dead_letter_poison()
                else:
                    await self._iteration()
                failures = 0
            except FencedError:
                log.warning("partition %d: lease lost, stopping", self.index)
                self.leases.lost(self.index)
                return
            except (RedisError, OSError, ConflictError) as exc:
                failures += 1
                count = _counts_as_attempt(exc)
                log.warning("partition %d: step failed (%s); reloading", self.index, exc)
                await self._recover(failures, count=count)
            except Exception:
                failures += 1
                log.exception("partition %d: step failed at %s", self.index, self.cursor)
                await self._recover(failures, count=True)

    async def _recover(self, failures: int, *, count: bool) -> None:
        self.cache.clear_partition(self.index)
        await anyio.sleep(min(0.05 * 2**failures, 2.0))
        try:
            await self._load_state()
            self.outbox_dirty = True
            if count:
                self._counted = True
                await self._note_attempt()
        except (RedisError, OSError):
            pass
        if self.outbox_dirty and self.leases.valid(self.index):
            with contextlib.suppress(RedisError, OSError):
                await self._forward_pending()

    async def _iteration(self) -> None:
        if self.outbox_dirty:
            await self._forward_pending()
        now = self.clock.now_ms()
        if self.next_due is not None and self.next_due <= now + 1:
            _, self.next_due, redis_now = await self.store.promote_timers(self.index, self.lease)
            self.clock.observe(redis_now)
        if self.purger.due_in_ms() == 0:  # one bounded batch between steps
            await self.purger.run_once(self.lease)
        block: int | None = self.config.poll_ms
        if self.next_due is not None:
            block = max(1, min(self.config.poll_ms, self.next_due - self.clock.now_ms() + 1))
        purge_due = self.purger.due_in_ms()
        if purge_due is not None:
            block = None if purge_due == 0 else max(1, min(block or purge_due, purge_due))
        with anyio.CancelScope() as scope:
            self._read_scope = scope
            if self.stopping or self.draining():
                return
            batch = 1 if self.isolate_left > 0 else self.config.batch_size
            entries = await self.store.read_inbox(self.index, self.cursor, batch, block)
        self._read_scope = None
        if scope.cancelled_caught or not entries:
            return
        if not self._counted:
            # The first batch an owner takes on counts as an attempt at this cursor, so a message
            # that kills the whole process is isolated after a bounded number of restarts, like one
            # that raises. Idle partitions changing hands never count.
            self._counted = True
            await self._note_attempt()
            if self._poisoned():
                await self._dead_letter_poison()
                return
        if self.isolate_left > 0:
            entries = entries[:1]
        await self._step(entries)

    async def _forward_pending(self) -> None:
        # strict: what is in the outbox may not have reached the replicas yet (a wait timed out)
        await self.store.sync_barrier(self.index)
        while True:
            pending = await self.store.read_outbox(self.index, 500)
            if not pending:
                break
            await self.store.forward(self.index, [(eid, f[b"dst"].decode(), f[b"m"]) for eid, f in pending])
            if len(pending) < 500:
                break
        self.outbox_dirty = False

    # -- the step --------------------------------------------------------------------------------
    def _new_step(self, new_cursor: str) -> StepState:
        store = self.store
        return StepState(
            index=self.index,
            partitions=store.partitions,
            keys=self.keys,
            inbox_of=lambda p: store.partition_keys(p).inbox,
            now=self.clock.now_ms(),
            plan=CommitPlan(prev_cursor=self.cursor, new_cursor=new_cursor),
        )

    def _decode(
        self, entries: list[StreamEntry], step: StepState
    ) -> tuple[dict[str, list[Message]], dict[str, str]]:
        """Group the batch's messages by target, dropping repeated forwards and dead-lettering
        what cannot be understood; returns the groups and the new forwarding positions."""
        src_updates: dict[str, str] = {}
        groups: dict[str, list[Message]] = {}
        for eid, fields in entries:
            try:
                position = forwarded_position(fields, step.partitions)
                if position is not None:
                    src, seq = position
                    last = src_updates.get(src) or self.src_pos.get(src)
                    if last is not None and stream_id(seq) <= stream_id(last):
                        self.metrics.duplicate_dropped()
                        continue
                    src_updates[src] = seq
                msg = parse_entry(fields, self.index, step.partitions)
            except MalformedMessage as exc:
                step.plan.dead_letters.append(dlq_fields(eid, fields, str(exc)))
                step.dead_lettered.append("malformed")
                continue
            if msg["kind"] == ev.MSG_PURGE:  # for the partition itself: recorded in the commit
                job = self.purger.accept(msg, step)
                if job is not None:
                    self._accepted.append(job)
                continue
            if msg["kind"] == "wake":  # a timer was added from outside (a scheduled start)
                due = msg.get("due")
                if isinstance(due, int):
                    self.next_due = due if self.next_due is None else min(self.next_due, due)
                continue
            msg["_eid"] = eid
            if msg["kind"] == ev.MSG_REWIND or (msg["kind"] == ev.MSG_TERMINATE and msg.get("recursive")):
                step.needs_history.add(msg["target"])
            if msg["kind"] == ev.MSG_TIMER_FIRED and isinstance(msg.get("fire_at"), int):
                self.metrics.timer_fired((step.now - msg["fire_at"]) / 1000)
            groups.setdefault(msg["target"], []).append(msg)
        return groups, src_updates

    async def _step(self, entries: list[StreamEntry]) -> None:
        step = self._new_step(entries[-1][0])
        self._accepted = []
        groups, src_updates = self._decode(entries, step)
        step.messages = groups
        for half in self.halves:
            await half.load(step, [t for t in groups if half.owns(t)])
        for target, msgs in groups.items():
            for half in self.halves:
                if half.owns(target):
                    half.process(step, target, msgs)
                    break
        for half in self.halves:
            half.flush(step)
        for s, seq in src_updates.items():
            step.plan.state[f"src:{s}"] = seq
        if self.isolate_left > 0 or self.attempts:
            left = max(self.isolate_left - 1, 0)
            step.plan.state["recov"] = f"{step.plan.new_cursor}|0|{left}" if left else ""
        forward = await self._commit(step)
        run_after_commit(step.after_commit)
        self.purger.add(self._accepted)
        self.steps += 1
        self.cursor = step.plan.new_cursor
        if self.isolate_left > 0 or self.attempts:
            self.isolate_left = max(self.isolate_left - 1, 0)
            self.attempts = 0
        self.src_pos.update(src_updates)
        for inst in step.touched.values():
            inst.version += 1
        self.cache.touch(self.index, [t for t in groups if not t.startswith("@")])
        if step.plan.timers:
            first = min(t[0] for t in step.plan.timers)
            self.next_due = first if self.next_due is None else min(self.next_due, first)
        self.metrics.step_committed(self.index, step, entries, self.clock.now_ms())
        await self._forward(forward)

    async def _commit(self, step: StepState) -> list[tuple[str, str, bytes]]:
        try:
            forward = await self.store.commit(self.index, self.lease, step.plan)
        except (ConflictError, RedisError, OSError):
            # a conflict means the cache is stale; a Redis error is ambiguous (the commit may or
            # may not have run): either way, reload everything from Redis
            self.cache.clear_partition(self.index)
            raise
        for kind in step.dead_lettered:
            self.metrics.dead_lettered(kind)
        return forward

    async def _forward(self, forward: list[tuple[str, str, bytes]]) -> None:
        if forward:
            try:
                await self.store.forward(self.index, forward)
            except (RedisError, OSError):
                self.outbox_dirty = True

    async def _dead_letter_poison(self) -> None:
        """Move the message at the cursor to the dead-letter stream and fail its instance."""
        entries = await self.store.read_inbox(self.index, self.cursor, 1, None)
        if not entries:
            return
        step = self._new_step(entries[0][0])
        step.plan.state["recov"] = ""
        isolated = self.attempts - self.config.max_recoveries
        outcome = await plan_poison(self.store, entries[0], self.attempts, isolated, step)
        forward = await self._commit(step)
        self.cursor = outcome.entry_id
        if outcome.target:
            self.cache.forget(self.index, outcome.target)
        self.isolate_left = max(self.isolate_left - 1, 0)
        self.attempts = 0
        await self._forward(forward)
