"""The orchestration half of a partition step: turn an instance's messages into history events,
run the replay executor, and express the outcome as the records, timers and messages of the commit.

The partition loop (``partition.py``) owns the commit; this half only builds the plan (its one
read is loading the instances missing from the replay cache)."""

from __future__ import annotations

import functools
import hashlib
import logging
import sys
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._core import events as ev
from .._core import replay_log
from .._core.executor import OrchestrationExecutor, StepResult
from .._core.lifecycle import open_timers
from .._core.model import FailureDetails, OrchestrationStatus
from .._core.registry import capability
from .._core.serialization import (
    BLOB_REF_PREFIX,
    LARGE_PAYLOAD_BYTES,
    is_blob_ref,
    pack_record,
    unpack_record,
)
from .._store.store import RecordWrite
from . import tracing
from .delegation import DelegatedSteps
from .instances import (
    ACTIVITY_OPTIONS,
    LIVE,
    PAYLOAD_FIELDS,
    Incoming,
    Instance,
    carried_events,
    check_history_size,
    load_histories,
    notify_end,
    reply_to_parent,
    started_event,
    to_event,
)
from .lifecycle_step import (
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
    from .capabilities import CapabilityView
    from .entity_step import EntityHalf
    from .remote import RemoteOrchestrations
    from .telemetry import Telemetry

log = logging.getLogger("durable.partition")

#: continue-as-new restarts run inline in one step up to this many times
_MAX_INLINE_RESTARTS = 100


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
        caps: CapabilityView,
        remote: RemoteOrchestrations | None = None,
        strict_replay: bool = False,
    ) -> None:
        #: instances whose code runs in a remote executor (a Durable Task SDK via the sidecar)
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
        self.caps = caps
        #: compare inputs too when replaying (a test environment's always_replay)
        self.strict_replay = strict_replay
        #: steps of versions this worker lacks, run by workers that have them (``delegation.py``)
        self.delegation = DelegatedSteps(self)
        #: the executors' lookups, bound once (every cached executor holds them)
        self._resolve: Callable[[str], Any] = lambda name: self.registry.orchestrators.get(name)
        self._resolve_version = registry.resolve_orchestrator

    # -- the StepHalf shape --------------------------------------------------------------------
    def owns(self, target: str) -> bool:
        return not target.startswith("@")

    async def load(self, step: StepState, targets: list[str]) -> None:
        if self.remote is not None:
            await self.remote.prepare(step)
        starts = {
            str(m["name"])
            for t in targets
            for m in step.messages.get(t, ())
            if m["kind"] == ev.MSG_START and not self.registry.can_run(str(m["name"]), m.get("ver"))
        }
        if any(not self.caps.recent(capability("o", name)) for name in starts):
            await self.caps.refresh()  # a worker that has it may have started since the last heartbeat
        cached = self.cache.partition(step.index)
        step.instances.update((t, cached[t]) for t in targets if t in cached)
        # a lifecycle command on an instance that is not running needs its history: read it again
        ids = [
            t
            for t in targets
            if t not in step.instances or (t in step.needs_history and not step.instances[t].running)
        ]
        if not ids:
            return
        loaded = await load_histories(self.store, step.index, ids)
        for iid, (fields, events) in zip(ids, loaded, strict=True):
            remote = self.remote is not None and self.remote.is_remote(fields)
            inst = step.instances[iid] = self._instance_from(iid, fields, [] if remote else events)
            self.cache.partition(step.index)[iid] = inst
            if remote and self.remote is not None:
                self.remote.attach(inst, fields, events)
            if iid in step.needs_history and not inst.running:
                inst.loaded = loaded_view(fields, events)
            self.metrics.cache_event("miss")

    def process(self, step: StepState, target: str, msgs: list[Message]) -> None:
        inst = step.instances[target]
        try:
            if inst.delegated:  # a step runs on another worker: its messages wait for its outcome
                msgs = self.delegation.settle(step, inst, msgs)
                if not msgs:
                    return
            if (
                self.remote is not None
                and not self._durable_elsewhere(msgs)
                and self.remote.takes(inst, msgs)
            ):
                self.remote.process(self, step, inst, msgs)
                return
            if not self._runs_here(inst, msgs):
                self.delegation.delegate(step, inst, msgs)
                return
            ts = max(step.now, inst.last_ts)
            if any(m["kind"] == ev.MSG_REWIND for m in msgs):
                ts = max(ts, inst.last_ts + 1)  # a rewind shows as a newer record, even a refused one
            self.run_local(step, inst, self._incoming(inst, msgs, step, ts), ts)
        finally:
            inst.loaded = None

    def _runs_here(self, inst: Instance, msgs: list[Message]) -> bool:
        """Whether this worker has the code of the step these messages make: the instance's
        pinned version, or for a start, the version it asks for (None: any version of the name).
        A start for a name no worker had within the grace period runs here, to fail clearly."""
        if inst.running:
            return inst.executor is not None
        start = next((m for m in msgs if m["kind"] == ev.MSG_START), None)
        if start is None:
            return True  # nothing runs code: the messages are dropped or end a pending start
        name, version = str(start["name"]), start.get("ver")
        if self.registry.can_run(name, version):
            return True
        return version is None and not self.caps.recent(capability("o", name))

    def _durable_elsewhere(self, msgs: list[Message]) -> bool:
        """A start that this worker cannot run but another durable worker can: it is delegated
        to that worker, not handed to a Durable Task SDK executor that runs "any" name."""
        start = next((m for m in reversed(msgs) if m.get("kind") == ev.MSG_START), None)
        if start is None:
            return False
        name, version = str(start.get("name", "")), start.get("ver")
        return not self.registry.can_run(name, version) and self.caps.recent(capability("o", name, version))

    def run_local(self, step: StepState, inst: Instance, incoming: Incoming, ts: int) -> None:
        """Run the step's events through this worker's executor and plan the outcome."""
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
        inst.ver = inst.executor.version
        result = check_history_size(inst.iid, inst.executor, result, self.config)
        self.conclude(
            step, inst, result, ts, new_execution, start_input, prev_status, rewound, incoming.terminate
        )

    def conclude(
        self,
        step: StepState,
        inst: Instance,
        result: StepResult,
        ts: int,
        new_execution: bool,
        start_input: bytes | None,
        prev_status: OrchestrationStatus | None,
        rewound: Rewound | None = None,
        terminate: Message | None = None,
    ) -> RecordWrite:
        """Plan a step's outcome (wherever its code ran): the record, the actions, the end."""
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
        if terminate is not None and status == OrchestrationStatus.TERMINATED:
            terminate_children(step, inst, inst.history, terminate)
        if status.is_terminal:
            self._finish(inst, result, status, step)
        elif inst.executor is not None:
            self._after_commit(step, inst, inst.executor)
        return rec

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
        inst.name = sys.intern(get(b"name", b"").decode())
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
        ver = get(b"ver")
        inst.ver = ver.decode() if ver is not None else None
        inst.delegated = get(b"wi", b"").decode()
        parked = get(b"pk")
        inst.parked = list(unpack_record(parked)) if parked else []
        if inst.status in LIVE and history:
            if inst.ver is None:  # recorded before versions existed: its start says
                inst.ver = str((started or {}).get("ver") or "")
            if self.registry.can_run(inst.name, inst.ver) and not inst.delegated:
                executor = self._new_executor(iid)
                executor.replay(history)
                inst.executor = executor
            else:  # its steps run where its version is (or it waits for one)
                inst.delegated_history = history
        elif inst.delegated:  # a start that runs elsewhere
            inst.delegated_history = history
        return inst

    def _new_executor(self, iid: str) -> OrchestrationExecutor:
        executor = OrchestrationExecutor(
            iid,
            self._resolve,
            self.name_of,
            self.context_factory,
            resolve_version=self._resolve_version,
            strict=self.strict_replay,
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
    def _incoming(self, inst: Instance, msgs: list[Message], step: StepState, ts: int) -> Incoming:
        """Turn the messages into history events: a start (re)creates the executor, a rewind
        revives a failed one."""
        incoming = Incoming()
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
            if kind == ev.MSG_TERMINATE and msg.get("exec") not in (None, inst.exec):
                continue  # it ends an execution that is over (a start replacing it sent it)
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
                    incoming.events = [started_event(msg, inst), *carried_events(msg), *early]
                continue
            if kind == ev.MSG_TERMINATE and not inst.running and inst.status == OrchestrationStatus.PENDING:
                # terminated before it started (e.g. a scheduled start): it never runs
                incoming.terminated_pending = self._terminate_pending(inst, msg, step)
                continue
            if not inst.running:
                if kind == ev.MSG_EVENT and inst.status == OrchestrationStatus.PENDING:
                    # a scheduled start has not run yet: the event waits for it (as a started
                    # instance buffers an event it does not wait for yet)
                    held = to_event(msg, inst.exec)
                    if held is not None:
                        incoming.held.append(held)
                continue
            event = to_event(msg, inst.exec)
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
        inst.name = sys.intern(str(msg["name"]))  # shared by the instances of one orchestrator
        inst.parent = msg.get("parent")
        inst.notify = msg.get("notify")
        inst.created = int(msg.get("created") or step.now)
        inst.tags = str(msg.get("tags") or "")
        inst.traceparent = msg.get("traceparent")
        return True

    def _execute(
        self, inst: Instance, incoming: Incoming, ts: int, step: StepState
    ) -> tuple[StepResult, bool, bytes | None]:
        """Run the executor; continue-as-new restarts run inline (bounded)."""
        assert inst.executor is not None
        new_execution = incoming.start is not None
        start_input = incoming.start_input
        result = inst.executor.execute([{"k": ev.ORCHESTRATOR_STARTED, "ts": ts}, *incoming.events])
        restarts = 0
        while result.continue_as_new is not None and restarts < _MAX_INLINE_RESTARTS:
            if not self.registry.can_run(inst.name, result.continue_version):
                break  # the next execution's version runs elsewhere: it starts in a later step
            self._route_actions(inst, result, step)
            self._after_commit(step, inst, inst.executor)
            restarts += 1
            data, carried = result.continue_as_new
            self._end_execution(inst, step)
            inst.executor = self._new_executor(inst.iid)
            inst.exec = uuid.uuid4().hex
            new_execution = True
            start_input = data
            restart = {
                "name": inst.name,
                "input": data,
                "exec": inst.exec,
                "parent": inst.parent,
                "ver": result.continue_version,
            }
            if inst.traceparent:
                restart["traceparent"] = inst.traceparent
            evs: list[ev.Event] = [started_event(restart, inst)]
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
            "ver": result.continue_version,
        }
        if inst.traceparent:
            start["traceparent"] = inst.traceparent
        step.route(inst.iid, start)
        self._end_execution(inst, step)
        self._after_commit(step, inst, inst.executor)
        inst.executor = None
        inst.delegated_history = None
        return OrchestrationStatus.RUNNING

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
        if inst.ver is not None:
            f["ver"] = inst.ver
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
        inst.delegated_history = None

    def _end_execution(self, inst: Instance, step: StepState) -> None:
        """An execution ends (finished, or continued as new): release its entity locks and drop
        its pending timers (they could only fire into nothing)."""
        self.entities.on_orchestration_end(step, inst)
        for tid in open_timers(inst.history):
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
        for f in PAYLOAD_FIELDS:
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
                for key in ACTIVITY_OPTIONS:  # time limits; a retry's call, attempt, details
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
                if action.get("ver") is not None:
                    start["ver"] = action["ver"]
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
