"""Orchestration semantics of a partition step: turn an instance's messages into history events,
run the replay executor, and express the outcome as the records, timers and messages of the commit.

The partition loop (``_partition.py``) owns I/O and the commit; this mixin only builds the plan
(its one read is loading instances missing from the cache)."""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._core import events as ev
from .._core.executor import OrchestrationExecutor, StepResult
from .._core.model import FailureDetails, OrchestrationStatus
from .._core.serialization import (
    BLOB_REF_PREFIX,
    LARGE_PAYLOAD_BYTES,
    is_blob_ref,
    pack_record,
    unpack_record,
)
from .._store.keys import PartitionKeys, partition_of
from .._store.store import CommitPlan, RecordWrite

if TYPE_CHECKING:
    from .runtime import Runtime

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


@dataclass
class StepState:
    now: int
    plan: CommitPlan
    touched: dict[str, Instance] = field(default_factory=dict)
    finished: list[tuple[Instance, StepResult]] = field(default_factory=list)
    started: list[Instance] = field(default_factory=list)


class OrchestrationSteps:
    """Mixin of :class:`~durable._partition.PartitionRunner`: the orchestration half of a step."""

    rt: Runtime
    index: int
    keys: PartitionKeys
    cache: dict[str, Instance]

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
    def _process_orchestration(self, inst: Instance, msgs: list[dict[str, Any]], step: StepState) -> None:
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
                "ctx.continue_as_new() to keep replay cheap",
                inst.iid,
                size,
                cfg.history_warn_events,
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

    def _terminate_pending(self, inst: Instance, msg: dict[str, Any], step: StepState) -> RecordWrite:
        inst.status = "TERMINATED"
        rec = RecordWrite(self.keys.instance(inst.iid), self.keys.history(inst.iid), inst.version, mode="r")
        rec.fields.update(status="TERMINATED", updated=step.now, output=msg.get("output") or b"")
        rec.events = [
            pack_record({"k": ev.EXECUTION_TERMINATED, "eid": 0, "ts": step.now, "output": msg.get("output")})
        ]
        rec.channel, rec.message = self.rt.store.keys.status_channel(inst.iid), "TERMINATED"
        return rec

    def _reply_to_parent(
        self, parent: dict[str, Any], output: bytes | None, failure: FailureDetails | None, step: StepState
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
        self, inst: Instance, result: StepResult, step: StepState, rec: RecordWrite | None = None
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

    def _route(self, target: str, msg: dict[str, Any], step: StepState) -> None:
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
