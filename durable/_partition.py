"""One owned partition: read the inbox, run executors, commit the step, forward the outbox."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from redis.exceptions import RedisError

from . import _events as ev
from ._executor import OrchestrationExecutor, StepResult
from ._keys import partition_of
from ._model import FailureDetails, OrchestrationStatus
from ._poison import dead_letter_poison
from ._serialization import BLOB_REF_PREFIX, LARGE_PAYLOAD_BYTES, is_blob_ref, pack_record, unpack_record
from ._store import CommitPlan, ConflictError, FencedError, RecordWrite, StreamEntry
from ._wire import MalformedMessage

if TYPE_CHECKING:
    from ._runtime import Runtime

log = logging.getLogger("durable.partition")

_TERMINAL = {"COMPLETED", "FAILED", "TERMINATED"}
_COMPLETION_MSGS = {
    ev.MSG_TASK_COMPLETED: ev.TASK_COMPLETED,
    ev.MSG_TASK_FAILED: ev.TASK_FAILED,
    ev.MSG_TIMER_FIRED: ev.TIMER_FIRED,
    ev.MSG_SUB_COMPLETED: ev.SUB_COMPLETED,
    ev.MSG_SUB_FAILED: ev.SUB_FAILED,
}
#: history event fields that carry (encoded) user payloads
_PAYLOAD_FIELDS = ("input", "result", "output")
#: continue-as-new restarts run inline in one step up to this many times
_MAX_INLINE_RESTARTS = 100


@dataclass
class Instance:
    """The cached view of one orchestration instance in its owning partition."""

    iid: str
    version: int = 0
    status: str | None = None
    name: str = ""
    exec: str = ""
    created: int = 0
    parent: dict[str, Any] | None = None
    executor: OrchestrationExecutor | None = None
    last_ts: int = 0

    @property
    def running(self) -> bool:
        return self.executor is not None and not self.executor.is_done


def _stream_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def parse_entry(
    fields: dict[bytes, bytes], partition: int | None = None, partitions: int | None = None
) -> dict[str, Any]:
    """Decode one inbox entry into a message dict with at least ``kind`` and ``target``."""
    raw = fields.get(b"m")
    if raw is None:
        from ._wire import parse_wire  # the documented wire format for other languages

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


@dataclass
class _StepState:
    now: int
    plan: CommitPlan
    touched: dict[str, Instance] = field(default_factory=dict)
    finished: list[tuple[Instance, StepResult]] = field(default_factory=list)
    started: list[Instance] = field(default_factory=list)


class PartitionRunner:
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
        try:
            await self._load_state()
        except FencedError:
            self.rt.on_lease_lost(self.index)
            return
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
        step = _StepState(now=now, plan=CommitPlan(prev_cursor=self.cursor, new_cursor=entries[-1][0]))
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

    async def _ensure_loaded(self, ids: list[str]) -> None:
        if not ids:
            return
        loaded = await self.rt.store.load_instances(self.index, ids)
        histories = [[unpack_record(h) for h in history] for _, history in loaded]
        refs = [
            e[f][len(BLOB_REF_PREFIX) :].decode()
            for events in histories
            for e in events
            for f in _PAYLOAD_FIELDS
            if is_blob_ref(e.get(f))
        ]
        if refs:  # large payloads live beside the history
            blobs = await self.rt.store.get_blobs(refs)
            for events in histories:
                for e in events:
                    for f in _PAYLOAD_FIELDS:
                        if is_blob_ref(e.get(f)):
                            e[f] = blobs[e[f][len(BLOB_REF_PREFIX) :].decode()]
        for iid, (fields, _), events in zip(ids, loaded, histories, strict=True):
            self.cache[iid] = self._instance_from(iid, fields, events)
            self.rt.metrics.cache_event("miss")

    def _instance_from(self, iid: str, fields: dict[bytes, bytes], history: list[ev.Event]) -> Instance:
        inst = Instance(iid)
        if not fields:
            return inst
        get = fields.get
        inst.version = int(get(b"v", b"0"))
        inst.status = get(b"status", b"").decode() or None
        inst.name = get(b"name", b"").decode()
        inst.exec = get(b"exec", b"").decode()
        inst.created = int(get(b"created", b"0"))
        inst.last_ts = int(get(b"updated", b"0"))
        parent = get(b"parent")
        inst.parent = unpack_record(parent) if parent else None
        if inst.status in ("RUNNING", "SUSPENDED") and history:
            executor = self._new_executor(iid)
            executor.replay(history)
            inst.executor = executor
        return inst

    def _new_executor(self, iid: str) -> OrchestrationExecutor:
        return OrchestrationExecutor(
            iid, self.rt.registry.orchestrators.get, self.rt.name_of, self.rt.context_factory
        )

    # -- orchestrations --------------------------------------------------------------------------
    def _process_orchestration(self, inst: Instance, msgs: list[dict[str, Any]], step: _StepState) -> None:
        events: list[ev.Event] = []
        start: dict[str, Any] | None = None
        start_input: bytes | None = None
        record = None
        for msg in msgs:
            kind = msg["kind"]
            if kind == ev.MSG_START:
                if inst.running:
                    if msg.get("exec") != inst.exec and msg.get("parent"):
                        self._reply_to_parent(
                            msg["parent"],
                            None,
                            FailureDetails(
                                f"an orchestration with id {inst.iid!r} is already running",
                                "OrchestrationAlreadyExistsError",
                            ),
                            step,
                        )
                    continue
                started_before = inst.status not in (None, "PENDING")
                if msg.get("exec") == inst.exec and started_before:
                    continue  # duplicate delivery of a start we already applied
                start = msg
                start_input = msg.get("input")
                inst.executor = self._new_executor(inst.iid)
                inst.exec = str(msg.get("exec") or uuid.uuid4().hex)
                inst.name = str(msg["name"])
                inst.parent = msg.get("parent")
                inst.created = int(msg.get("created") or step.now)
                events = [self._started_event(msg, inst)]
                continue
            if kind == ev.MSG_TERMINATE and not inst.running and inst.status == "PENDING":
                # terminated before it started (e.g. a scheduled start): it never runs
                record = self._terminate_pending(inst, msg, step)
                continue
            if not inst.running:
                continue
            event = _to_event(msg, inst.exec)
            if event is not None:
                events.append(event)
        if not events:
            if record is not None:
                step.plan.records.append(record)
                step.touched[inst.iid] = inst
            return
        assert inst.executor is not None
        ts = max(step.now, inst.last_ts)
        inst.last_ts = ts
        prev_status = inst.status
        new_execution = start is not None
        result = inst.executor.execute([{"k": ev.ORCHESTRATOR_STARTED, "ts": ts}, *events])
        restarts = 0
        while result.continue_as_new is not None and restarts < _MAX_INLINE_RESTARTS:
            self._route_actions(inst, result, step)
            restarts += 1
            data, carried = result.continue_as_new
            self.rt.entities.on_orchestration_end(self, inst, step)
            inst.executor = self._new_executor(inst.iid)
            inst.exec = uuid.uuid4().hex
            new_execution = True
            start_input = data
            restart = {"name": inst.name, "input": data, "exec": inst.exec, "parent": inst.parent}
            evs: list[ev.Event] = [self._started_event(restart, inst)]
            evs.extend({"k": ev.EVENT_RAISED, "name": n, "input": d} for n, d in carried)
            result = inst.executor.execute([{"k": ev.ORCHESTRATOR_STARTED, "ts": ts}, *evs])
        result = self._check_history_size(inst, result)
        status = result.status
        if status == OrchestrationStatus.CONTINUED_AS_NEW:
            status = OrchestrationStatus.RUNNING  # pathological loop: keep going next step
            assert result.continue_as_new is not None
            data, carried = result.continue_as_new
            self._route(
                inst.iid,
                {
                    "kind": ev.MSG_START,
                    "target": inst.iid,
                    "name": inst.name,
                    "input": data,
                    "exec": uuid.uuid4().hex,
                    "parent": inst.parent,
                    "events": carried,
                },
                step,
            )
            self.rt.entities.on_orchestration_end(self, inst, step)
            inst.executor = None
            inst.status = "CONTINUED_AS_NEW"
        inst.status = status.value
        rec = RecordWrite(
            hash_key=self.keys.instance(inst.iid),
            list_key=self.keys.history(inst.iid),
            expected_version=inst.version,
            mode="r" if new_execution else "a",

        )
        rec.events = [self._persisted(inst.iid, e, rec) for e in result.new_events]
        f = rec.fields
        f["status"] = status.value
        f["updated"] = ts
        if new_execution:
            f.update(
                name=inst.name, exec=inst.exec, created=inst.created, output=b"", failure=b"", custom=b""
            )
            f["input"] = self._offload(inst.iid, start_input, rec) or b""
            f["parent"] = pack_record(inst.parent) if inst.parent else b""
            rec.index, rec.index_member, rec.index_score = "i", inst.iid, inst.created
            step.started.append(inst)
        if result.custom_status_set:
            f["custom"] = self._offload(inst.iid, result.custom_status, rec) or b""
        if status.is_terminal:
            f["output"] = self._offload(inst.iid, result.output, rec) or b""
            f["failure"] = pack_record(result.failure.to_record()) if result.failure else b""
            if result.nondeterminism:
                self.rt.metrics.nondeterminism(inst.name)
        if status.value != prev_status or new_execution:
            rec.channel = self.rt.store.keys.status_channel(inst.iid)
            rec.message = status.value
        step.plan.records.append(rec)
        step.touched[inst.iid] = inst
        self._route_actions(inst, result, step, rec)
        if status.is_terminal:
            step.finished.append((inst, result))
            if inst.parent:
                self._reply_to_parent(
                    inst.parent,
                    result.output if status == OrchestrationStatus.COMPLETED else None,
                    None
                    if status == OrchestrationStatus.COMPLETED
                    else (result.failure or FailureDetails("terminated", "TerminatedError")),
                    step,
                )
            self.rt.entities.on_orchestration_end(self, inst, step)
            inst.executor = None

    def _check_history_size(self, inst: Instance, result: StepResult) -> StepResult:
        executor = inst.executor
        if executor is None or result.status.is_terminal:
            return result
        cfg = self.rt.config
        size = len(executor.history)
        if size > cfg.history_max_events:
            details = FailureDetails(
                f"orchestration {inst.iid!r} has {size} history events, more than the limit of "
                f"{cfg.history_max_events}; long-running loops must call ctx.continue_as_new() "
                "to start over with a fresh history",
                "HistoryLimitExceededError",
            )
            result.actions.clear()
            return executor.abort(details, result)
        if size - len(result.new_events) <= cfg.history_warn_events < size:
            log.warning(
                "orchestration %r has %d history events (warning threshold %d); consider "
                "ctx.continue_as_new() to keep replay cheap", inst.iid, size, cfg.history_warn_events,
            )
        return result

    def _started_event(self, msg: dict[str, Any], inst: Instance) -> ev.Event:
        return {
            "k": ev.EXECUTION_STARTED,
            "name": inst.name,
            "input": msg.get("input"),
            "exec": inst.exec,
            "parent": inst.parent,
        }

    def _terminate_pending(self, inst: Instance, msg: dict[str, Any], step: _StepState) -> RecordWrite:
        inst.status = "TERMINATED"
        rec = RecordWrite(self.keys.instance(inst.iid), self.keys.history(inst.iid), inst.version, mode="r")
        rec.fields.update(status="TERMINATED", updated=step.now, output=msg.get("output") or b"")
        rec.events = [
            pack_record({"k": ev.EXECUTION_TERMINATED, "eid": 0, "ts": step.now, "output": msg.get("output")})
        ]
        rec.channel, rec.message = self.rt.store.keys.status_channel(inst.iid), "TERMINATED"
        return rec

    def _reply_to_parent(
        self, parent: dict[str, Any], output: bytes | None, failure: FailureDetails | None, step: _StepState
    ) -> None:
        msg: dict[str, Any] = {
            "kind": ev.MSG_SUB_COMPLETED if failure is None else ev.MSG_SUB_FAILED,
            "target": parent["iid"],
            "exec": parent.get("exec"),
            "tid": parent["tid"],
        }
        if failure is None:
            msg["result"] = output
        else:
            msg["failure"] = failure.to_record()
        self._route(parent["iid"], msg, step)

    def _offload(self, iid: str, data: bytes | None, rec: RecordWrite | None) -> bytes | None:
        """A large payload is stored once (content hash) beside the history and referenced."""
        if rec is None or data is None or len(data) <= LARGE_PAYLOAD_BYTES or is_blob_ref(data):
            return data
        key = self.keys.blob(iid, hashlib.sha256(data).hexdigest()[:40])
        rec.blobs[key] = data
        rec.blob_set = self.keys.blobs(iid)
        return BLOB_REF_PREFIX + key.encode()

    def _persisted(self, iid: str, event: ev.Event, rec: RecordWrite) -> bytes:
        copy: ev.Event | None = None
        for f in _PAYLOAD_FIELDS:
            value = event.get(f)
            if isinstance(value, bytes) and len(value) > LARGE_PAYLOAD_BYTES:
                copy = copy or dict(event)  # the cached history keeps the payload itself
                copy[f] = self._offload(iid, value, rec)
        return pack_record(copy or event)

    def _route_actions(
        self, inst: Instance, result: StepResult, step: _StepState, rec: RecordWrite | None = None
    ) -> None:
        for action in result.actions:
            kind = action["k"]
            if kind == ev.TASK_SCHEDULED:
                body = {
                    "kind": "activity",
                    "target": inst.iid,
                    "exec": inst.exec,
                    "tid": action["tid"],
                    "name": action["name"],
                    "input": self._offload(inst.iid, action.get("input"), rec),
                }
                step.plan.outbox.append({"dst": self.rt.store.keys.tasks, "m": pack_record(body)})
            elif kind == ev.TIMER_CREATED:
                body = {
                    "kind": ev.MSG_TIMER_FIRED,
                    "target": inst.iid,
                    "exec": inst.exec,
                    "tid": action["tid"],
                    "fire_at": action["fire_at"],
                }
                member = f"t|{inst.iid}|{inst.exec}|{action['tid']}"
                step.plan.timers.append((int(action["fire_at"]), member, pack_record(body)))
            elif kind == ev.SUB_CREATED:
                child = str(action["iid"])
                self._route(
                    child,
                    {
                        "kind": ev.MSG_START,
                        "target": child,
                        "name": action["name"],
                        "input": action.get("input"),
                        "exec": uuid.uuid4().hex,
                        "created": step.now,
                        "parent": {"iid": inst.iid, "exec": inst.exec, "tid": action["tid"]},
                    },
                    step,
                )
            elif kind == ev.EVENT_SENT:
                target = str(action["iid"])
                self._route(
                    target,
                    {
                        "kind": ev.MSG_EVENT,
                        "target": target,
                        "name": action["name"],
                        "input": action.get("input"),
                    },
                    step,
                )
            else:
                self.rt.entities.route_action(self, inst, action, step)

    def _route(self, target: str, msg: dict[str, Any], step: _StepState) -> None:
        data = pack_record(msg)
        p = partition_of(target, self.rt.store.partitions)
        if p == self.index:
            step.plan.self_messages.append({"m": data})
        else:
            step.plan.outbox.append({"dst": self.rt.store.partition_keys(p).inbox, "m": data})


def _to_event(msg: dict[str, Any], exec_id: str) -> ev.Event | None:
    kind = msg["kind"]
    if kind in _COMPLETION_MSGS:
        if msg.get("exec") not in (None, exec_id):
            return None  # for an earlier execution (before continue-as-new or restart)
        event: ev.Event = {"k": _COMPLETION_MSGS[kind], "tid": msg.get("tid")}
        if "result" in msg:
            event["result"] = msg["result"]
        if "failure" in msg:
            event["failure"] = msg["failure"]
        if "fire_at" in msg:
            event["fire_at"] = msg["fire_at"]
        return event
    if kind == ev.MSG_EVENT:
        return {"k": ev.EVENT_RAISED, "name": str(msg.get("name", "")), "input": msg.get("input")}
    if kind == ev.MSG_TERMINATE:
        return {"k": ev.EXECUTION_TERMINATED, "output": msg.get("output")}
    if kind == ev.MSG_SUSPEND:
        return {"k": ev.EXECUTION_SUSPENDED, "reason": msg.get("reason")}
    if kind == ev.MSG_RESUME:
        return {"k": ev.EXECUTION_RESUMED, "reason": msg.get("reason")}
    if kind == ev.MSG_ENTITY_RESPONSE:
        event = {"k": ev.ENTITY_RESPONDED}
        event.update({k: v for k, v in msg.items() if k not in ("kind", "target", "_eid")})
        return event
    return None


def _dlq_fields(eid: str, fields: dict[bytes, bytes], reason: str) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {k.decode(errors="replace"): v for k, v in fields.items()}
    out["dlq_reason"] = reason
    out["dlq_source_id"] = eid
    return out


Resolver = Callable[[str], Any]
