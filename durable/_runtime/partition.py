"""One owned partition: read the inbox, run executors, commit the step, forward the outbox."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
from redis.exceptions import RedisError

from .._core import events as ev
from .._core.serialization import unpack_record
from .._store.store import CommitPlan, ConflictError, FencedError, StreamEntry
from .inbox import MalformedMessage
from .orchestration_step import Instance, OrchestrationSteps, StepState
from .poison import dead_letter_poison

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger("durable.partition")


def _stream_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def parse_entry(
    fields: dict[bytes, bytes], partition: int | None = None, partitions: int | None = None
) -> dict[str, Any]:
    """Decode one inbox entry into a message dict with at least ``kind`` and ``target``."""
    raw = fields.get(b"m")
    if raw is None:
        from .inbox import parse_wire  # the documented wire format for other languages

        return parse_wire(fields, partition=partition, partitions=partitions)
    try:
        msg = unpack_record(raw)
    except Exception as exc:
        raise MalformedMessage(f"cannot decode message: {exc}") from None
    if (
        not isinstance(msg, dict)
        or not isinstance(msg.get("kind"), str)
        or not isinstance(msg.get("target"), str)
    ):
        raise MalformedMessage("message must be a map with string 'kind' and 'target'")
    return msg


class PartitionRunner(OrchestrationSteps):
    """Runs the steps of one partition while this worker holds its lease."""

    def __init__(self, rt: Runtime, index: int, lease: str) -> None:
        self.rt = rt
        self.index = index
        self.lease = lease
        self.keys = rt.store.partition_keys(index)
        self.cursor = "0-0"
        self.src_pos: dict[str, str] = {}
        self.cache: dict[str, Instance] = {}
        self.next_due: int | None = None
        self.outbox_dirty = True
        self.stopping = False
        self._read_scope: anyio.CancelScope | None = None
        self.steps = 0
        #: failed attempts at the current cursor, and messages still to take one at a time
        self.attempts = 0
        self.isolate_left = 0
        self._counted = False

    # -- lifecycle -------------------------------------------------------------------------------
    def stop(self) -> None:
        """Finish the current step, then leave the loop."""
        self.stopping = True
        if self._read_scope is not None:
            self._read_scope.cancel()

    async def _load_state(self) -> None:
        state = await self.rt.store.read_partition_state(self.index)
        self.cursor = state.get("cursor", "0-0")
        self.src_pos = {k[4:]: v for k, v in state.items() if k.startswith("src:")}
        self.next_due = await self.rt.store.next_timer_due(self.index)

    async def _note_attempt(self) -> None:
        cfg = self.rt.config
        self.attempts, self.isolate_left = await self.rt.store.note_recovery(
            self.index, self.lease, self.cursor, cfg.max_recoveries, cfg.batch_size
        )

    async def run(self) -> None:
        """The partition loop; returns when stopped or when the lease is lost."""
        failures = 0
        while True:
            try:
                await self._load_state()
                break
            except (RedisError, OSError) as exc:  # Redis restarting: retry while the lease lasts
                failures += 1
                if self.stopping or self.rt.draining or not self.rt.lease_valid(self.index):
                    return
                log.warning("partition %d: loading its state failed (%s); retrying", self.index, exc)
                await anyio.sleep(min(0.05 * 2**failures, 2.0))
        failures = 0
        while not (self.stopping or self.rt.draining) and self.rt.lease_valid(self.index):
            try:
                if self.attempts > self.rt.config.max_recoveries + 1:
                    await dead_letter_poison(self, self.attempts)
                else:
                    await self._iteration()
                failures = 0
            except FencedError:
                log.warning("partition %d: lease lost, stopping", self.index)
                self.rt.on_lease_lost(self.index)
                return
            except (RedisError, OSError, ConflictError) as exc:
                failures += 1
                log.warning("partition %d: step failed (%s); reloading", self.index, exc)
                await self._recover(failures, count=False)
            except Exception:
                failures += 1
                log.exception("partition %d: step failed at %s", self.index, self.cursor)
                await self._recover(failures, count=True)

    async def _recover(self, failures: int, *, count: bool) -> None:
        self.cache.clear()
        self.rt.cache_evict_partition(self.index)
        await anyio.sleep(min(0.05 * 2**failures, 2.0))
        try:
            await self._load_state()
            self.outbox_dirty = True
            if count:
                self._counted = True
                await self._note_attempt()
        except (RedisError, OSError):
            pass
        if self.outbox_dirty and self.rt.lease_valid(self.index):
            with contextlib.suppress(RedisError, OSError):
                await self._forward_pending()

    async def _iteration(self) -> None:
        if self.outbox_dirty:
            await self._forward_pending()
        now = self.rt.now_ms()
        if self.next_due is not None and self.next_due <= now + 1:
            _, self.next_due, redis_now = await self.rt.store.promote_timers(self.index, self.lease)
            self.rt.observe_clock(redis_now)
        block = self.rt.config.poll_ms
        if self.next_due is not None:
            block = max(1, min(block, self.next_due - self.rt.now_ms() + 1))
        with anyio.CancelScope() as scope:
            self._read_scope = scope
            if self.stopping or self.rt.draining:
                return
            batch = 1 if self.isolate_left > 0 else self.rt.config.batch_size
            entries = await self.rt.store.read_inbox(self.index, self.cursor, batch, block)
        self._read_scope = None
        if scope.cancelled_caught or not entries:
            return
        if not self._counted:
            # The first batch an owner takes on counts as an attempt at this cursor, so a message
            # that kills the whole process is isolated after a bounded number of restarts, like one
            # that raises. Idle partitions changing hands never count.
            self._counted = True
            await self._note_attempt()
            if self.attempts > self.rt.config.max_recoveries + 1:
                await dead_letter_poison(self, self.attempts)
                return
        if self.isolate_left > 0:
            entries = entries[:1]
        await self._step(entries)

    async def _forward_pending(self) -> None:
        # strict: what is in the outbox may not have reached the replicas yet (a wait timed out)
        await self.rt.store.sync_barrier(self.index)
        while True:
            pending = await self.rt.store.read_outbox(self.index, 500)
            if not pending:
                break
            await self.rt.store.forward(
                self.index, [(eid, f[b"dst"].decode(), f[b"m"]) for eid, f in pending]
            )
            if len(pending) < 500:
                break
        self.outbox_dirty = False

    # -- the step --------------------------------------------------------------------------------
    async def _step(self, entries: list[StreamEntry]) -> None:
        rt = self.rt
        now = rt.now_ms()
        step = StepState(now=now, plan=CommitPlan(prev_cursor=self.cursor, new_cursor=entries[-1][0]))
        src_updates: dict[str, str] = {}
        groups: dict[str, list[dict[str, Any]]] = {}
        dead: list[tuple[str, dict[bytes, bytes], str]] = []
        for eid, fields in entries:
            src = fields.get(b"src")
            if src is not None:
                s, seq = src.decode(), fields.get(b"seq", b"0-0").decode()
                last = src_updates.get(s) or self.src_pos.get(s)
                if last is not None and _stream_id(seq) <= _stream_id(last):
                    rt.metrics.duplicate_dropped()
                    continue
                src_updates[s] = seq
            try:
                msg = parse_entry(fields, self.index, rt.store.partitions)
            except MalformedMessage as exc:
                dead.append((eid, fields, str(exc)))
                continue
            if msg["kind"] == "wake":  # a timer was added from outside (a scheduled start)
                due = msg.get("due")
                if isinstance(due, int):
                    self.next_due = due if self.next_due is None else min(self.next_due, due)
                continue
            msg["_eid"] = eid
            if msg["kind"] == ev.MSG_TIMER_FIRED and isinstance(msg.get("fire_at"), int):
                rt.metrics.timer_fired((now - msg["fire_at"]) / 1000)
            groups.setdefault(msg["target"], []).append(msg)

        await self._ensure_loaded([t for t in groups if t not in self.cache and not t.startswith("@")])
        await rt.entities.ensure_loaded(self, [t for t in groups if t.startswith("@")])
        for target, msgs in groups.items():
            if target.startswith("@"):
                rt.entities.process(self, target, msgs, step)
            else:
                self._process_orchestration(self.cache[target], msgs, step)
        await rt.entities.flush(self, step)
        for s, seq in src_updates.items():
            step.plan.state[f"src:{s}"] = seq
        if self.isolate_left > 0 or self.attempts:
            left = max(self.isolate_left - 1, 0)
            step.plan.state["recov"] = f"{step.plan.new_cursor}|0|{left}" if left else ""
        if dead:
            for eid, fields, reason in dead:
                await rt.store.dead_letter(self.index, _dlq_fields(eid, fields, reason))
                rt.metrics.dead_lettered("malformed")
        try:
            forward = await rt.store.commit(self.index, self.lease, step.plan)
        except ConflictError:
            self.cache.clear()
            rt.cache_evict_partition(self.index)
            raise
        except (RedisError, OSError):
            # ambiguous: the commit may or may not have run; reload everything from Redis
            self.cache.clear()
            rt.cache_evict_partition(self.index)
            raise
        self.steps += 1
        self.cursor = step.plan.new_cursor
        if self.isolate_left > 0 or self.attempts:
            self.isolate_left = max(self.isolate_left - 1, 0)
            self.attempts = 0
        self.src_pos.update(src_updates)
        for inst in step.touched.values():
            inst.version += 1
        rt.cache_touch(self.index, [t for t in groups if not t.startswith("@")])
        if step.plan.timers:
            first = min(t[0] for t in step.plan.timers)
            self.next_due = first if self.next_due is None else min(self.next_due, first)
        rt.after_commit(self, step, entries)
        if forward:
            try:
                await rt.store.forward(self.index, forward)
            except (RedisError, OSError):
                self.outbox_dirty = True


def _dlq_fields(eid: str, fields: dict[bytes, bytes], reason: str) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {k.decode(errors="replace"): v for k, v in fields.items()}
    out["dlq_reason"] = reason
    out["dlq_source_id"] = eid
    return out


Resolver = Callable[[str], Any]
