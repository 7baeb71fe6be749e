"""The orchestration half of a partition step: turn an instance's messages into history events,
run the replay executor, and express the outcome as the records, timers and messages of the commit.

The partition loop (``partition.py``) owns the commit; this half only builds the plan (its one
read is loading the instances missing from the replay cache)."""

from __future__ import annotations

import functools
import hashlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._core import events as ev
from .._core import replay_log
from .._core.executor import OrchestrationExecutor, StepResult
from .._core.lifecycle import open_timers
from .._core.model import FailureDetails, OrchestrationStatus
from .._core.serialization import (
    BLOB_REF_PREFIX,
    LARGE_PAYLOAD_BYTES,
    encode,
    is_blob_ref,
    pack_record,
    unpack_record,
)
from .._store.store import RecordWrite
from . import tracing
from .lifecycle_step import (
    Loaded,
    Rewinder,
    Rewound,
    from_its_parent,
    loaded_view,
    merge,
    redo_child,
    terminate_children,
)
from .step import Message, StepState

if TYPE_CHECKING:
    from .._config import WorkerConfig
    from .._core.context import OrchestrationContext
    from .._core.registry import Registry
    from .._store.store import Store
    from .cache import InstanceCache
    from .entity_step import EntityHalf
    from .remote import RemoteOrchestrations, RemoteState
    from .telemetry import Telemetry

log = logging.getLogger("durable.partition")

_COMPLETION_MSGS = {
    ev.MSG_TASK_COMPLETED: ev.TASK_COMPLETED,
    ev.MSG_TASK_FAILED: ev.TASK_FAILED,
    ev.MSG_TIMER_FIRED: ev.TIMER_FIRED,
    ev.MSG_SUB_COMPLETED: ev.SUB_COMPLETED,
    ev.MSG_SUB_FAILED: ev.SUB_FAILED,
}
#: history event fields that carry (encoded) user payloads
_PAYLOAD_FIELDS = ("input", "result", "output")
#: fields of an activity's TaskScheduled event that its task message carries
_ACTIVITY_OPTIONS = ("to", "hbt", "call", "attempt", "hb")
#: continue-as-new restarts run inline in one step up to this many times
_MAX_INLINE_RESTARTS = 100


@dataclass
class Instance:
    """The cached view of one orchestration instance in its owning partition."""

    iid: str
    version: int = 0
    status: OrchestrationStatus | None = None
    name: str = ""
    exec: str = ""
    created: int = 0
    parent: dict[str, Any] | None = None
    #: an entity to signal when the instance ends: {"entity": id, "op": operation} (schedule runs)
    notify: dict[str, Any] | None = None
    executor: OrchestrationExecutor | None = None
    last_ts: int = 0
    #: the instance's tags, as stored (:func:`durable._core.model.encode_tags`)
    tags: str = ""
    #: the trace context its start message carried (the parent of its orchestration span)
    traceparent: str | None = None
    #: events raised before a scheduled start ran: delivered right after it starts
    pending_events: list[ev.Event] = field(default_factory=list)
    #: set while the instance's code runs in a remote executor (``remote.py``)
    remote: RemoteState | None = None
    #: read for a lifecycle command of this step while the instance is not running
    loaded: Loaded | None = None

    @property
    def running(self) -> bool:
        return self.executor is not None and not self.executor.is_done


@dataclass
class _Incoming:
    """An instance's messages of one step, as history events (and what a start carried)."""

    events: list[ev.Event] = field(default_factory=list)
    start: Message | None = None
    start_input: bytes | None = None
    #: a start that never ran and was terminated: its record (no executor runs)
    terminated_pending: RecordWrite | None = None
    #: events for an instance whose (scheduled) start has not run yet: kept for it
    held: list[ev.Event] = field(default_factory=list)
    #: a recursive terminate, passed on to the open sub-orchestrations once applied
    terminate: Message | None = None
    #: a rewind that brought a failed instance back to running
    rewound: Rewound | None = None


class OrchestrationHalf:
    """Orchestration semantics of a partition step (the counterpart of the entity half)."""

    def __init__(
        self,
        *,
        store: Store,
        registry: Registry,
        config: WorkerConfig,
        metrics: Telemetry,
        cache: InstanceCache[Instance],
        entities: EntityHalf,
        context_factory: Callable[[str, Any], OrchestrationContext],
        name_of: Callable[[Any, str], str],
        remote: RemoteOrchestrations | None = None,
    ) -> None:
        self.remote = remote
        self.store = store
        self.registry = registry
        self.config = config
        self.metrics = metrics
        self.cache = cache
        self.entities = entities
        self.context_factory = context_factory
        self.name_of = name_of
        self.rewinder = Rewinder(self._new_executor, reply_to_parent, store.keys.status_channel)

    # -- the StepHalf shape --------------------------------------------------------------------
    def owns(self, target: str) -> bool:
        return not target.startswith("@")

    async def load(self, step: StepState, targets: list[str]) -> None:
        if self.remote is not None:
            await self.remote.prepare(step)
        cached = self.cache.partition(step.index)
        # a lifecycle command on an instance that is not running needs its history: read it again
        ids = [t for t in targets if t not in cached or (t in step.needs_history and not cached[t].running)]
        if not ids:
            return
        loaded = await self.store.load_instances(step.index, ids)
        histories = [[unpack_record(h) for h in history] for _, history in loaded]
        outputs = [fields.get(b"output") for fields, _ in loaded]
        refs = [
            e[f][len(BLOB_REF_PREFIX) :].decode()
            for events in histories
            for e in events
            for f in _PAYLOAD_FIELDS
            if is_blob_ref(e.get(f))
        ]
        refs.extend(o[len(BLOB_REF_PREFIX) :].decode() for o in outputs if o is not None and is_blob_ref(o))
        if refs:  # large payloads live beside the history
            blobs = await self.store.get_blobs(refs)
            for events in histories:
                for e in events:
                    for f in _PAYLOAD_FIELDS:
                        if is_blob_ref(e.get(f)):
                            e[f] = blobs[e[f][len(BLOB_REF_PREFIX) :].decode()]
            for fields, _ in loaded:
                output = fields.get(b"output")
                if output is not None and is_blob_ref(output):
                    fields[b"output"] = blobs.get(output[len(BLOB_REF_PREFIX) :].decode(), output)
        for iid, (fields, _), events in zip(ids, loaded, histories, strict=True):
            remote = self.remote is not None and self.remote.is_remote(fields)
            inst = cached[iid] = self._instance_from(iid, fields, [] if remote else events)
            if remote and self.remote is not None:
                self.remote.attach(inst, fields, events)
            if iid in step.needs_history and not inst.running:
                inst.loaded = loaded_view(fields, events)
            self.metrics.cache_event("miss")

    def process(self, step: StepState, target: str, msgs: list[Message]) -> None:
        inst = self.cache.partition(step.index)[target]
        if self.remote is not None and self.remote.takes(inst, msgs):
            try:
                self.remote.process(self, step, inst, msgs)
            finally:
                inst.loaded = None
            return
        ts = max(step.now, inst.last_ts)
        if any(m["kind"] == ev.MSG_REWIND for m in msgs):
            ts = max(ts, inst.last_ts + 1)  # a rewind shows as a newer record, even a refused one
        try:
            incoming = self._incoming(inst, msgs, step, ts)
            if not incoming.events and incoming.rewound is None:
                if incoming.terminated_pending is not None:
                    inst.pending_events = []
                    step.plan.records.append(incoming.terminated_pending)
                    step.touched[inst.iid] = inst
                elif incoming.held:
                    step.plan.records.append(self._hold(inst, incoming.held, step))
                    step.touched[inst.iid] = inst
                if incoming.terminate is not None and inst.loaded is not None:
                    terminate_children(step, inst, inst.loaded.history, incoming.terminate)
                return
            self._process(inst, incoming, ts, step)
        finally:
            inst.loaded = None

    def _process(self, inst: Instance, incoming: _Incoming, ts: int, step: StepState) -> None:
        assert inst.executor is not None
        inst.last_ts = ts
        prev_status = inst.status
        rewound = incoming.rewound
        if rewound is not None:
            prev_status = OrchestrationStatus.FAILED
            result, new_execution, start_input = rewound.result, False, None
            if incoming.events and inst.running:
                more = inst.executor.execute([{"k": ev.ORCHESTRATOR_STARTED, "ts": ts}, *incoming.events])
                result = merge(result, more)
        else:
            result, new_execution, start_input = self._execute(inst, incoming, ts, step)
        result = self._check_history_size(inst, result)
        status = result.status
        if status == OrchestrationStatus.CONTINUED_AS_NEW:
            status = self._continue_next_step(inst, result, step)
        inst.status = status
        rec = self._record(inst, result, status, ts, new_execution, start_input, prev_status, step)
        if rewound is not None:  # the rewritten history replaces the old one
            rec.mode = "r"
            rec.events[:0] = [self._persisted(inst.iid, e, rec, step) for e in rewound.prefix]
            if not status.is_terminal:
                rec.fields.update(output=b"", failure=b"")
        step.plan.records.append(rec)
        step.touched[inst.iid] = inst
        self._route_actions(inst, result, step, rec)
        if incoming.terminate is not None and status == OrchestrationStatus.TERMINATED:
            terminate_children(step, inst, inst.executor.history, incoming.terminate)
        if status.is_terminal:
            self._finish(inst, result, status, step)
        elif inst.executor is not None:
            self._after_commit(step, inst, inst.executor)

    def flush(self, step: StepState) -> None:
        """Nothing is left over: every orchestration record is planned by :meth:`process`."""

    # -- loading -------------------------------------------------------------------------------
    def _instance_from(self, iid: str, fields: dict[bytes, bytes], history: list[ev.Event]) -> Instance:
        inst = Instance(iid)
        if not fields:
            return inst
        get = fields.get
        inst.version = int(get(b"v", b"0"))
        status = get(b"status", b"").decode()
        inst.status = OrchestrationStatus(status) if status else None
        inst.name = get(b"name", b"").decode()
        inst.exec = get(b"exec", b"").decode()
        inst.created = int(get(b"created", b"0"))
        inst.last_ts = int(get(b"updated", b"0"))
        inst.tags = get(b"tags", b"").decode()
        parent = get(b"parent")
        inst.parent = unpack_record(parent) if parent else None
        started = next((e for e in history if e.get("k") == ev.EXECUTION_STARTED), None)
        if started is not None:
            inst.traceparent = started.get("traceparent")
        notify = get(b"notify")
        inst.notify = unpack_record(notify) if notify else None
        pending = get(b"pending")
        inst.pending_events = unpack_record(pending) if pending else []
        if inst.status in (OrchestrationStatus.RUNNING, OrchestrationStatus.SUSPENDED) and history:
            executor = self._new_executor(iid)
            executor.replay(history)
            inst.executor = executor
        return inst

    def _new_executor(self, iid: str) -> OrchestrationExecutor:
        executor = OrchestrationExecutor(
            iid, self.registry.orchestrators.get, self.name_of, self.context_factory
        )
        executor.ctx._log_records = []  # ctx.logger's lines are written once the step commits
        return executor

    def _after_commit(self, step: StepState, inst: Instance, executor: OrchestrationExecutor | None) -> None:
        """Leave the log lines of ``executor``'s step (and, once it has ended, its span) to be
        emitted after the commit."""
        if executor is None:
            return
        records = executor.ctx._log_records
        if records:
            executor.ctx._log_records = []
            step.after_commit.append(functools.partial(replay_log.emit, records))
        if executor.is_done and tracing.ENABLED:
            step.after_commit.append(
                functools.partial(_emit_span, inst.iid, executor, inst.traceparent, step.now)
            )

    # -- one instance's step, along its seams ---------------------------------------------------
    def _incoming(self, inst: Instance, msgs: list[Message], step: StepState, ts: int) -> _Incoming:
        """Turn the messages into history events: a start (re)creates the executor, a rewind
        revives a failed one."""
        incoming = _Incoming()
        for msg in msgs:
            kind = msg["kind"]
            if kind == ev.MSG_REWIND and incoming.rewound is None:
                rewound, record, start = self.rewinder.apply(inst, msg, inst.loaded, step, ts)
                if record is not None:
                    step.plan.records.append(record)
                    step.touched[inst.iid] = inst
                if rewound is not None and not incoming.events:
                    incoming.rewound = rewound
                if start is None:
                    continue
                msg = start
                kind = ev.MSG_START
            sender = msg.get("from") if kind == ev.MSG_TERMINATE else None
            if sender is not None and not from_its_parent(inst, sender):
                continue  # passed on by a parent this instance does not belong to
            if kind == ev.MSG_TERMINATE and msg.get("recursive"):
                incoming.terminate = msg
            if kind == ev.MSG_START:
                if self._accept_start(inst, msg, step):
                    incoming.start = msg
                    incoming.start_input = msg.get("input")
                    early = [*inst.pending_events, *incoming.held]  # raised before it started
                    inst.pending_events, incoming.held = [], []
                    incoming.events = [_started_event(msg, inst), *_carried_events(msg), *early]
                continue
            if kind == ev.MSG_TERMINATE and not inst.running and inst.status == OrchestrationStatus.PENDING:
                # terminated before it started (e.g. a scheduled start): it never runs
                incoming.terminated_pending = self._terminate_pending(inst, msg, step)
                continue
            if not inst.running:
                if kind == ev.MSG_EVENT and inst.status == OrchestrationStatus.PENDING:
                    # a scheduled start has not run yet: the event waits for it (as a started
                    # instance buffers an event it does not wait for yet)
                    held = _to_event(msg, inst.exec)
                    if held is not None:
                        incoming.held.append(held)
                continue
            event = _to_event(msg, inst.exec)
            if event is not None:
                incoming.events.append(event)
        return incoming

    def _hold(self, inst: Instance, held: list[ev.Event], step: StepState) -> RecordWrite:
        """Keep events raised to an instance whose start has not run yet, in its record."""
        inst.pending_events = [*inst.pending_events, *held]
        rec = RecordWrite(step.keys.instance(inst.iid), step.keys.history(inst.iid), inst.version)
        rec.fields["pending"] = pack_record(inst.pending_events)
        return rec

    def _accept_start(self, inst: Instance, msg: Message, step: StepState) -> bool:
        if inst.running:
            if msg.get("exec") != inst.exec and msg.get("parent"):
                failure = FailureDetails(
                    f"an orchestration with id {inst.iid!r} is already running",
                    "OrchestrationAlreadyExistsError",
                )
                reply_to_parent(step, msg["parent"], None, failure)
            return False
        started_before = inst.status not in (None, OrchestrationStatus.PENDING)
        if msg.get("exec") == inst.exec and started_before:
            return False  # duplicate delivery of a start we already applied
        inst.executor = self._new_executor(inst.iid)
        inst.exec = str(msg.get("exec") or uuid.uuid4().hex)
        inst.name = str(msg["name"])
        inst.parent = msg.get("parent")
        inst.notify = msg.get("notify")
        inst.created = int(msg.get("created") or step.now)
        inst.tags = str(msg.get("tags") or "")
        inst.traceparent = msg.get("traceparent")
        return True

    def _execute(
        self, inst: Instance, incoming: _Incoming, ts: int, step: StepState
    ) -> tuple[StepResult, bool, bytes | None]:
        """Run the executor; continue-as-new restarts run inline (bounded)."""
        assert inst.executor is not None
        new_execution = incoming.start is not None
        start_input = incoming.start_input
        result = inst.executor.execute([{"k": ev.ORCHESTRATOR_STARTED, "ts": ts}, *incoming.events])
        restarts = 0
        while result.continue_as_new is not None and restarts < _MAX_INLINE_RESTARTS:
            self._route_actions(inst, result, step)
            self._after_commit(step, inst, inst.executor)
            restarts += 1
            data, carried = result.continue_as_new
            self._end_execution(inst, step)
            inst.executor = self._new_executor(inst.iid)
            inst.exec = uuid.uuid4().hex
            new_execution = True
            start_input = data
            restart = {"name": inst.name, "input": data, "exec": inst.exec, "parent": inst.parent}
            if inst.traceparent:
                restart["traceparent"] = inst.traceparent
            evs: list[ev.Event] = [_started_event(restart, inst)]
            evs.extend({"k": ev.EVENT_RAISED, "name": n, "input": d} for n, d in carried)
            evs.extend(result.continue_with)  # a terminate (or suspend) that came after the restart point
            result = inst.executor.execute([{"k": ev.ORCHESTRATOR_STARTED, "ts": ts}, *evs])
        return result, new_execution, start_input

    def _continue_next_step(self, inst: Instance, result: StepResult, step: StepState) -> OrchestrationStatus:
        """A pathological continue-as-new loop: start the next execution in a later step."""
        assert result.continue_as_new is not None
        data, carried = result.continue_as_new
        start = {
            "kind": ev.MSG_START,
            "target": inst.iid,
            "name": inst.name,
            "input": data,
            "exec": uuid.uuid4().hex,
            "parent": inst.parent,
            "notify": inst.notify,
            "events": carried,
            "control": [
                {"k": e["k"], "output": e.get("output"), "reason": e.get("reason")}
                for e in result.continue_with
            ],
        }
        if inst.traceparent:
            start["traceparent"] = inst.traceparent
        step.route(inst.iid, start)
        self._end_execution(inst, step)
        self._after_commit(step, inst, inst.executor)
        inst.executor = None
        return OrchestrationStatus.RUNNING

    def _check_history_size(self, inst: Instance, result: StepResult) -> StepResult:
        executor = inst.executor
        if executor is None or result.status.is_terminal:
            return result
        cfg = self.config
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

    def _record(
        self,
        inst: Instance,
        result: StepResult,
        status: OrchestrationStatus,
        ts: int,
        new_execution: bool,
        start_input: bytes | None,
        prev_status: OrchestrationStatus | None,
        step: StepState,
    ) -> RecordWrite:
        """The instance's record write: new history events and the changed fields."""
        rec = RecordWrite(
            hash_key=step.keys.instance(inst.iid),
            list_key=step.keys.history(inst.iid),
            expected_version=inst.version,
            mode="r" if new_execution else "a",
            query_id=inst.iid,
        )
        rec.events = [self._persisted(inst.iid, e, rec, step) for e in result.new_events]
        f = rec.fields
        f["status"] = status.value
        f["updated"] = ts
        if new_execution:
            f.update(
                name=inst.name,
                exec=inst.exec,
                created=inst.created,
                output=b"",
                failure=b"",
                custom=b"",
                pending=b"",
            )
            f["input"] = self._offload(inst.iid, start_input, rec, step) or b""
            f["parent"] = pack_record(inst.parent) if inst.parent else b""
            f["tags"] = inst.tags
            f["notify"] = pack_record(inst.notify) if inst.notify else b""
            rec.index, rec.index_member, rec.index_score = "i", inst.iid, inst.created
            step.started.append(inst)
        if result.custom_status_set:
            f["custom"] = self._offload(inst.iid, result.custom_status, rec, step) or b""
        if status.is_terminal:
            f["output"] = self._offload(inst.iid, result.output, rec, step) or b""
            f["failure"] = pack_record(result.failure.to_record()) if result.failure else b""
            if result.nondeterminism:
                self.metrics.nondeterminism(inst.name)
        if status != prev_status or new_execution:
            rec.channel = self.store.keys.status_channel(inst.iid)
            rec.message = status.value
        if status.is_terminal:
            step.plan.finished[inst.iid] = ts  # retention counts from here
        elif new_execution or prev_status == OrchestrationStatus.FAILED:
            step.plan.finished[inst.iid] = None
        return rec

    def _finish(
        self, inst: Instance, result: StepResult, status: OrchestrationStatus, step: StepState
    ) -> None:
        """A finished instance: tell its parent, release its locks, drop its executor."""
        step.finished.append((inst, result))
        if inst.parent:
            completed = status == OrchestrationStatus.COMPLETED
            failure = (
                None if completed else (result.failure or FailureDetails("terminated", "TerminatedError"))
            )
            reply_to_parent(step, inst.parent, result.output if completed else None, failure)
        if inst.notify:
            notify_end(step, inst.iid, inst.notify, status)
        self._end_execution(inst, step)
        self._after_commit(step, inst, inst.executor)
        inst.executor = None

    def _end_execution(self, inst: Instance, step: StepState) -> None:
        """An execution ends (finished, or continued as new): release its entity locks and drop
        its pending timers (they could only fire into nothing)."""
        self.entities.on_orchestration_end(step, inst)
        if inst.executor is not None:
            for tid in open_timers(inst.executor.history):
                step.plan.delete_timers.append(f"t|{inst.iid}|{inst.exec}|{tid}")

    def _terminate_pending(self, inst: Instance, msg: Message, step: StepState) -> RecordWrite:
        inst.status = OrchestrationStatus.TERMINATED
        keys = step.keys
        rec = RecordWrite(
            keys.instance(inst.iid), keys.history(inst.iid), inst.version, mode="r", query_id=inst.iid
        )
        rec.fields.update(
            status=inst.status.value, updated=step.now, output=msg.get("output") or b"", pending=b""
        )
        rec.events = [
            pack_record({"k": ev.EXECUTION_TERMINATED, "eid": 0, "ts": step.now, "output": msg.get("output")})
        ]
        rec.channel, rec.message = self.store.keys.status_channel(inst.iid), inst.status.value
        step.plan.delete_timers.append(f"start|{inst.iid}|{inst.exec}")  # its scheduled start
        step.plan.finished[inst.iid] = step.now
        return rec

    # -- payloads ------------------------------------------------------------------------------
    def _offload(
        self, iid: str, data: bytes | None, rec: RecordWrite | None, step: StepState
    ) -> bytes | None:
        """A large payload is stored once (content hash) beside the history and referenced."""
        if rec is None or data is None or len(data) <= LARGE_PAYLOAD_BYTES or is_blob_ref(data):
            return data
        key = step.keys.blob(iid, hashlib.sha256(data).hexdigest()[:40])
        rec.blobs[key] = data
        rec.blob_set = step.keys.blobs(iid)
        return BLOB_REF_PREFIX + key.encode()

    def _persisted(self, iid: str, event: ev.Event, rec: RecordWrite, step: StepState) -> bytes:
        copy: ev.Event | None = None
        for f in _PAYLOAD_FIELDS:
            value = event.get(f)
            if isinstance(value, bytes) and len(value) > LARGE_PAYLOAD_BYTES:
                copy = copy or dict(event)  # the cached history keeps the payload itself
                copy[f] = self._offload(iid, value, rec, step)
        return pack_record(copy or event)

    # -- actions -------------------------------------------------------------------------------
    def _route_actions(
        self, inst: Instance, result: StepResult, step: StepState, rec: RecordWrite | None = None
    ) -> None:
        traceparent = tracing.orchestration_traceparent(inst.iid, inst.exec, inst.traceparent)
        for action in result.actions:
            kind = action["k"]
            if kind == ev.TASK_SCHEDULED:
                body = {
                    "kind": "activity",
                    "target": inst.iid,
                    "exec": inst.exec,
                    "tid": action["tid"],
                    "name": action["name"],
                    "input": self._offload(inst.iid, action.get("input"), rec, step),
                }
                for key in _ACTIVITY_OPTIONS:  # time limits; a retry's call, attempt, details
                    if action.get(key) is not None:
                        body[key] = action[key]
                if traceparent is not None:
                    body["traceparent"] = traceparent
                step.plan.outbox.append({"dst": self.store.keys.tasks, "m": pack_record(body)})
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
            elif kind == ev.SUB_CREATED and action.get("redo"):
                step.route(str(action["iid"]), redo_child(inst, action))
            elif kind == ev.SUB_CREATED:
                child = str(action["iid"])
                start = {
                    "kind": ev.MSG_START,
                    "target": child,
                    "name": action["name"],
                    "input": action.get("input"),
                    "exec": uuid.uuid4().hex,
                    "created": step.now,
                    "parent": {"iid": inst.iid, "exec": inst.exec, "tid": action["tid"]},
                }
                if traceparent is not None:
                    start["traceparent"] = traceparent
                step.route(child, start)
            elif kind == ev.EVENT_SENT:
                target = str(action["iid"])
                event = {
                    "kind": ev.MSG_EVENT,
                    "target": target,
                    "name": action["name"],
                    "input": action.get("input"),
                }
                step.route(target, event)
            else:
                self.entities.route_action(step, inst, action)


def reply_to_parent(
    step: StepState, parent: dict[str, Any], output: bytes | None, failure: FailureDetails | None
) -> None:
    """Tell a sub-orchestration's parent how it ended (as part of ``step``'s commit)."""
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
    step.route(parent["iid"], msg)


def notify_end(
    step: StepState, instance_id: str, notify: dict[str, Any], status: OrchestrationStatus
) -> None:
    """Signal the entity that asked to hear of the instance's end (as part of ``step``'s commit)."""
    target = notify.get("entity")
    if not isinstance(target, str) or not target.startswith("@"):
        return
    body = {"instance_id": instance_id, "status": status.value}
    msg = {"kind": ev.MSG_SIGNAL, "target": target, "op": str(notify.get("op") or ""), "input": encode(body)}
    step.route(target, msg)


def _carried_events(start: Message) -> list[ev.Event]:
    """What a continue-as-new start message carries into the new execution: the saved events, and
    the control events (terminate, suspend, resume) that arrived after the restart point."""
    out: list[ev.Event] = []
    for item in start.get("events") or ():
        name, data = item
        out.append({"k": ev.EVENT_RAISED, "name": str(name), "input": data})
    for control in start.get("control") or ():
        kind = control.get("k")
        if kind == ev.EXECUTION_TERMINATED:
            out.append({"k": kind, "output": control.get("output")})
        elif kind in (ev.EXECUTION_SUSPENDED, ev.EXECUTION_RESUMED):
            out.append({"k": kind, "reason": control.get("reason")})
    return out


def _started_event(msg: Message, inst: Instance) -> ev.Event:
    event: ev.Event = {
        "k": ev.EXECUTION_STARTED,
        "name": inst.name,
        "input": msg.get("input"),
        "exec": inst.exec,
        "parent": inst.parent,
    }
    if msg.get("traceparent"):
        event["traceparent"] = msg["traceparent"]
    return event


def _emit_span(iid: str, executor: OrchestrationExecutor, traceparent: str | None, now: int) -> None:
    """The span of an execution that ended (run after the commit that ended it)."""
    started = next((e for e in executor.history if e.get("k") == ev.EXECUTION_STARTED), None)
    if started is None:
        return
    end = executor.history[-1].get("ts", now) if executor.history else now
    timers = [
        (int(e.get("ts", now)), int(e.get("tid", -1)), e.get("fire_at"))
        for e in executor.history
        if e.get("k") == ev.TIMER_FIRED
    ]
    tracing.emit_orchestration_span(
        name=executor.name,
        instance_id=iid,
        execution_id=str(started.get("exec") or ""),
        incoming=traceparent,
        version=getattr(executor.ctx, "version", None),
        start_ms=int(started.get("ts", now)),
        end_ms=int(end),
        status=executor.status.value,
        failure=executor.failure,
        timers=timers,
    )


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
        if isinstance(msg.get("details"), bytes):
            event["details"] = msg["details"]  # an activity's last heartbeat details
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
