"""Remote execution, on the partition owner's side: orchestrations whose code runs elsewhere.

An orchestration that no local worker registered, but that a remote executor (a Durable Task SDK
worker connected to ``durable sidecar``) advertised, is still owned and committed by its partition
owner; only its code runs elsewhere. The owner keeps the events that the code has not seen yet in
the instance's record (``rq``), and hands out one work item at a time (``rtok``: its token;
``rsent``: how many of those events it carries; ``rts``: the step time the code will see). The
executor's reply comes back through the partition's inbox as a ``remote_result`` message holding
the actions (already in this engine's event form); the owner commits it only if its token is the
outstanding one, so a reply that is late, duplicated or for an abandoned item changes nothing.
Then the events it answered and the actions become history, and the actions are routed exactly as
for a local orchestration (activities go to the remote activity stream).

A terminate is applied by the owner at once (no executor needed); suspend, resume and every
other event reach the code through the next work item.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._core import events as ev
from .._core.entities import held_locks
from .._core.executor import StepResult
from .._core.model import FailureDetails, OrchestrationStatus
from .._core.remote_entities import MSG_REMOTE_RESULT
from .._core.serialization import pack_record, unpack_record
from .._store.workitems import ANY_ENTITY, ANY_NAME, ENTITY_PREFIX, WorkItemStore
from . import tracing
from .instances import carried_events, reply_to_parent, started_event, to_event
from .lifecycle_step import from_its_parent, terminate_children

if TYPE_CHECKING:
    from .._core.registry import Registry
    from .instances import Instance
    from .orchestration_step import OrchestrationHalf
    from .step import Message, StepState

log = logging.getLogger("durable.remote")

__all__ = ["ACTION_TERMINATE", "MSG_REMOTE_RESULT", "RemoteOrchestrations", "RemoteRoutes", "RemoteState"]
#: an executor's terminate of another instance: routed when its step commits, never in history
ACTION_TERMINATE = "remote_terminate"
#: an advertised name counts for this long after the executor last advertised it
ADVERTISEMENT_TTL_MS = 24 * 3600 * 1000


@dataclass
class RemoteState:
    """What the owner knows of a remotely executed instance beyond the common record."""

    pending: list[ev.Event] = field(default_factory=list)
    token: str = ""
    sent: int = 0
    ts: int = 0
    #: history events of the current execution (the next event id)
    length: int = 0
    #: the execution's entity lock events (which critical section it holds or waits for)
    locks: list[ev.Event] = field(default_factory=list)
    #: when the execution started, and its fired timers (for its span)
    started_ts: int | None = None
    timers: list[tuple[int, int, Any]] = field(default_factory=list)
    #: the executor's own trace context of the execution (opaque; handed back with each item)
    trace: bytes = b""

    def track(self, event: ev.Event) -> None:
        kind = event.get("k")
        if kind in _LOCK_EVENTS:
            self.locks.append(event)
        elif kind == ev.EXECUTION_STARTED and self.started_ts is None:
            self.started_ts = int(event.get("ts") or 0)
        elif kind == ev.TIMER_FIRED:
            self.timers.append((int(event.get("ts") or 0), int(event.get("tid", -1)), event.get("fire_at")))

    def section_of(self, target: str) -> str | None:
        """The request id of the granted critical section that holds ``target``, if any."""
        for rid, entities, granted in held_locks(self.locks):
            if granted and target in entities:
                return rid
        return None


_LOCK_EVENTS = frozenset({ev.ENTITY_LOCK_REQUESTED, ev.ENTITY_RESPONDED, ev.ENTITY_UNLOCKED})


class RemoteRoutes:
    """Which orchestrator names remote executors run (the hub's executor table, cached)."""

    def __init__(self, workitems: WorkItemStore) -> None:
        self.workitems = workitems
        self.names: dict[str, int] = {}

    def can_run(self, name: str) -> bool:
        horizon = int(time.time() * 1000) - ADVERTISEMENT_TTL_MS
        return any(self.names.get(n, 0) > horizon for n in (name, ANY_NAME))

    def can_run_entity(self, name: str) -> bool:
        """Whether an executor runs the entity ``name`` (advertised as ``@name``, or ``@*``)."""
        horizon = int(time.time() * 1000) - ADVERTISEMENT_TTL_MS
        return any(self.names.get(n, 0) > horizon for n in (ENTITY_PREFIX + name, ANY_ENTITY))

    async def refresh(self) -> None:
        self.names = await self.workitems.advertised()


class RemoteOrchestrations:
    """The owner's side of remote execution, used by the orchestration half of a step."""

    def __init__(self, workitems: WorkItemStore, registry: Registry) -> None:
        self.workitems = workitems
        self.registry = registry
        self.routes = RemoteRoutes(workitems)

    # -- deciding ----------------------------------------------------------------------------------
    def _remote_name(self, name: str) -> bool:
        return name not in self.registry.orchestrators and self.routes.can_run(name)

    async def prepare(self, step: StepState) -> None:
        """Before a step: re-read the executor table if a start names an orchestrator that is
        neither registered here nor known to be remote (an executor may have just connected)."""
        for msgs in step.messages.values():
            for msg in msgs:
                if msg.get("kind") == ev.MSG_START:
                    name = str(msg.get("name", ""))
                    if name not in self.registry.orchestrators and not self.routes.can_run(name):
                        await self.routes.refresh()
                        return

    def takes(self, inst: Instance, msgs: list[Message]) -> bool:
        """Whether this step of ``inst`` is remote (the instance runs remotely, or starts to)."""
        status = inst.status
        running = status is not None and status != OrchestrationStatus.PENDING and not status.is_terminal
        if inst.remote is not None and running:
            return True
        start = next((m for m in reversed(msgs) if m.get("kind") == ev.MSG_START), None)
        if start is not None and not self._remote_name(str(start.get("name", ""))):
            inst.remote = None  # a new local execution replaces a finished remote one
            return False
        return start is not None or inst.remote is not None

    @staticmethod
    def is_remote(fields: dict[bytes, bytes]) -> bool:
        """Whether a stored record is of a remotely executed execution."""
        rexec = fields.get(b"rexec")
        return rexec is not None and rexec == fields.get(b"exec")

    @staticmethod
    def attach(inst: Instance, fields: dict[bytes, bytes], history: list[ev.Event]) -> None:
        """Give a loaded instance its remote state."""
        raw = fields.get(b"rq")
        state = inst.remote = RemoteState(
            pending=list(unpack_record(raw)) if raw else [],
            token=fields.get(b"rtok", b"").decode(),
            sent=int(fields.get(b"rsent", b"0") or 0),
            ts=int(fields.get(b"rts", b"0") or 0),
            length=len(history),
            trace=fields.get(b"rtrace", b""),
        )
        for event in history:
            state.track(event)
            if event.get("k") == ev.EXECUTION_STARTED:
                inst.traceparent = event.get("traceparent")

    # -- one step ----------------------------------------------------------------------------------
    def process(self, half: OrchestrationHalf, step: StepState, inst: Instance, msgs: list[Message]) -> None:
        run = _RemoteStep(self, half, step, inst)
        for msg in msgs:
            run.apply(msg)
        run.finish()


class _RemoteStep:
    """One remote instance's messages in one partition step."""

    def __init__(
        self, owner: RemoteOrchestrations, half: OrchestrationHalf, step: StepState, inst: Instance
    ) -> None:
        self.owner = owner
        self.half = half
        self.step = step
        self.inst = inst
        self.prev_status = inst.status
        self.result = StepResult()
        self.new_execution = False
        self.start_input: bytes | None = None
        self.dirty = False
        self.ts = max(step.now, inst.last_ts)

    @property
    def state(self) -> RemoteState:
        assert self.inst.remote is not None
        return self.inst.remote

    def _running(self) -> bool:
        status = self.inst.status
        return self.inst.remote is not None and status is not None and not status.is_terminal

    def _append(self, event: ev.Event) -> None:
        event = dict(event)
        event["eid"] = self.state.length
        event.setdefault("ts", self.ts)
        self.state.length += 1
        self.state.track(event)
        self.result.new_events.append(event)

    # -- messages ----------------------------------------------------------------------------------
    def apply(self, msg: Message) -> None:
        kind = msg["kind"]
        if kind == ev.MSG_START:
            self._start(msg)
        elif kind == MSG_REMOTE_RESULT:
            if self._running():
                self._result(msg)
        elif kind == ev.MSG_TERMINATE:
            sender = msg.get("from")
            if msg.get("exec") not in (None, self.inst.exec):
                return  # it ends an execution that is over (a start replacing it sent it)
            if sender is not None and not from_its_parent(self.inst, sender):
                return  # passed on by a parent this instance does not belong to
            if self._running():
                self._terminate(msg)
            elif msg.get("recursive") and self.inst.loaded is not None:
                terminate_children(self.step, self.inst, self.inst.loaded.history, msg)
        elif kind == ev.MSG_REWIND:
            self._rewind(msg)
        elif kind == ev.MSG_EVENT and self.inst.status == OrchestrationStatus.PENDING:
            event = to_event(msg, self.inst.exec)  # before its (scheduled) start, in this step
            if event is not None:
                self.inst.pending_events = [*self.inst.pending_events, event]
        elif self._running():
            event = to_event(msg, self.inst.exec)
            if event is None:
                return
            if kind == ev.MSG_SUSPEND:
                self.inst.status = OrchestrationStatus.SUSPENDED
            elif kind == ev.MSG_RESUME:
                self.inst.status = OrchestrationStatus.RUNNING
            self.state.pending.append(event)
            self.dirty = True

    def _start(self, msg: Message) -> None:
        inst = self.inst
        if self._running():
            if msg.get("exec") != inst.exec and msg.get("parent"):
                failure = FailureDetails(
                    f"an orchestration with id {inst.iid!r} is already running",
                    "OrchestrationAlreadyExistsError",
                )
                reply_to_parent(self.step, msg["parent"], None, failure)
            return
        started_before = inst.status not in (None, OrchestrationStatus.PENDING)
        if msg.get("exec") == inst.exec and started_before:
            return  # a duplicate delivery of a start already applied
        inst.executor = None
        inst.exec = str(msg.get("exec") or uuid.uuid4().hex)
        inst.name = str(msg["name"])
        inst.parent = msg.get("parent")
        inst.notify = msg.get("notify")  # a schedule's run tells its schedule when it ends
        inst.created = int(msg.get("created") or self.step.now)
        inst.traceparent = msg.get("traceparent")
        inst.status = OrchestrationStatus.RUNNING
        inst.remote = RemoteState()
        self.result = StepResult()
        self.new_execution = True
        self.start_input = msg.get("input")
        early, inst.pending_events = inst.pending_events, []  # raised before a scheduled start ran
        self.state.pending = [started_event(msg, inst), *carried_events(msg), *early]
        self.dirty = True

    def _rewind(self, msg: Message) -> None:
        """A rewind: refused (the engine rewinds by replaying the code, which runs elsewhere), but
        a rewinding parent still gets its answer, and a child it lacks is started."""
        inst, step = self.inst, self.step
        if self._running():
            return  # a client's rewind is ignored; a parent's is answered when the child ends
        status = inst.status
        parent = msg.get("parent")
        if parent is None and status != OrchestrationStatus.FAILED:
            return
        ours = parent is not None and from_its_parent(inst, parent)
        if (
            parent is not None
            and ours
            and status == OrchestrationStatus.COMPLETED
            and inst.loaded is not None
        ):
            reply_to_parent(step, parent, inst.loaded.output, None)  # its answer was lost: repeat it
            return
        if parent is not None and not ours and self.owner._remote_name(str(msg.get("name", ""))):
            start = {
                "kind": ev.MSG_START,
                "target": inst.iid,
                "name": msg.get("name"),
                "input": msg.get("input"),
                "exec": uuid.uuid4().hex,
                "created": step.now,
                "parent": parent,
            }
            self._start(start)
            return
        why = (
            "its code runs in a Durable Task SDK worker (durable sidecar), and this engine rewinds "
            "an orchestration by replaying its code; rewinding SDK-run orchestrations is not supported"
        )
        ts = max(self.ts, inst.last_ts + 1)  # shows as a newer record
        step.plan.records.append(self.half.rewinder.refuse(inst, why, inst.loaded, step, ts, parent))
        step.touched[inst.iid] = inst

    def _terminate(self, msg: Message) -> None:
        state = self.state
        if msg.get("recursive"):  # its open sub-orchestrations too, wherever their code runs
            committed = self.inst.loaded.history if self.inst.loaded is not None else []
            terminate_children(self.step, self.inst, [*committed, *self.result.new_events], msg)
        state.pending, state.token, state.sent = [], "", 0
        output = msg.get("output")
        self._append({"k": ev.ORCHESTRATOR_STARTED, "ts": self.ts})
        self._append({"k": ev.EXECUTION_TERMINATED, "output": output})
        self._complete(OrchestrationStatus.TERMINATED, output, None)

    def _complete(
        self, status: OrchestrationStatus, output: bytes | None, failure: FailureDetails | None
    ) -> None:
        self.half.entities.on_orchestration_end(self.step, self.inst, self.state.locks)
        self._append(
            {
                "k": ev.EXECUTION_COMPLETED,
                "status": status.value,
                "result": output,
                "failure": failure.to_record() if failure else None,
            }
        )
        self.inst.status = status
        self.result.status = status
        self.result.output = output
        self.result.failure = failure
        self.dirty = True
        self._emit_span(status, failure)

    def _emit_span(self, status: OrchestrationStatus, failure: FailureDetails | None) -> None:
        """The ended execution's span, the same as a local one's, emitted after the commit."""
        if not tracing.ENABLED:
            return
        inst, state = self.inst, self.state
        self.step.after_commit.append(
            functools.partial(
                tracing.emit_orchestration_span,
                name=inst.name,
                instance_id=inst.iid,
                execution_id=inst.exec,
                incoming=inst.traceparent,
                version=None,
                start_ms=self.ts if state.started_ts is None else state.started_ts,
                end_ms=self.ts,
                status=status.value,
                failure=failure,
                timers=list(state.timers),
            )
        )

    def _result(self, msg: Message) -> None:
        state = self.state
        if not state.token or msg.get("token") != state.token:
            return  # late, duplicated, or for an abandoned work item
        answered, state.pending = state.pending[: state.sent], state.pending[state.sent :]
        state.token, state.sent = "", 0
        self.dirty = True
        self._append({"k": ev.ORCHESTRATOR_STARTED, "ts": state.ts})
        for event in answered:
            self._append(event)
        actions: list[ev.Event] = []
        for action in msg.get("actions") or ():
            if action.get("k") == ACTION_TERMINATE:  # sent as the client's terminate is
                target = str(action["iid"])
                terminate = {"kind": ev.MSG_TERMINATE, "target": target, "output": action.get("output")}
                if action.get("recursive"):
                    terminate["recursive"] = True
                self.step.route(target, terminate)
            else:
                actions.append(dict(action))
        for action in actions:
            if action["k"] in (ev.ENTITY_CALLED, ev.ENTITY_SIGNALED) and "cs" not in action:
                section = state.section_of(str(action["entity"]))
                if section is not None:  # sent inside the orchestration's critical section
                    action["cs"] = section
            self._append(action)
        if isinstance(msg.get("trace"), bytes):
            state.trace = msg["trace"]
        if msg.get("custom_set"):
            self.result.custom_status = msg.get("custom")
            self.result.custom_status_set = True
        self._route(actions)
        complete = msg.get("complete")
        if not complete:
            return
        status = OrchestrationStatus(str(complete["status"]))
        failure = FailureDetails.from_record(complete.get("failure"))
        if status == OrchestrationStatus.CONTINUED_AS_NEW:
            self._continue_as_new(complete)
        elif status.is_terminal:
            self._complete(status, complete.get("output"), failure)

    def _continue_as_new(self, complete: dict[str, Any]) -> None:
        inst, state = self.inst, self.state
        left = state.pending
        self._emit_span(OrchestrationStatus.CONTINUED_AS_NEW, None)
        self.half.entities.on_orchestration_end(self.step, inst, state.locks)
        inst.exec = uuid.uuid4().hex
        inst.remote = RemoteState()
        self.result = StepResult()
        self.new_execution = True
        self.start_input = complete.get("output")
        restart = {"name": inst.name, "input": self.start_input, "exec": inst.exec, "parent": inst.parent}
        if inst.traceparent:
            restart["traceparent"] = inst.traceparent
        carried = [
            {"k": ev.EVENT_RAISED, "name": str(n), "input": d} for n, d in complete.get("carryover") or ()
        ]
        self.state.pending = [started_event(restart, inst), *carried, *left]

    def _route(self, actions: list[ev.Event]) -> None:
        step, inst = self.step, self.inst
        others: list[ev.Event] = []
        traceparent = tracing.orchestration_traceparent(inst.iid, inst.exec, inst.traceparent)
        for action in actions:
            if action["k"] == ev.TASK_SCHEDULED:
                body: dict[str, Any] = {
                    "kind": "activity",
                    "target": inst.iid,
                    "exec": inst.exec,
                    "tid": action["tid"],
                    "name": action["name"],
                    "input": action.get("input"),
                }
                # the SDK's own context of the call (its orchestration's span), else the execution's
                parent = action.get("traceparent") or traceparent
                if parent:
                    body["traceparent"] = parent
                dst = self.owner.workitems.keys.activities
                step.plan.outbox.append({"dst": dst, "m": pack_record(body)})
            else:
                others.append(action)
        if others:
            self.half._route_actions(inst, StepResult(actions=others), step)

    # -- the commit --------------------------------------------------------------------------------
    def finish(self) -> None:
        if not self.dirty:
            return
        inst, step = self.inst, self.step
        inst.last_ts = self.ts
        status = inst.status or OrchestrationStatus.RUNNING
        if self._running() and not self.state.token and self.state.pending:
            self._dispatch()
        rec = self.half._record(
            inst, self.result, status, self.ts, self.new_execution, self.start_input, self.prev_status, step
        )
        state = inst.remote
        if state is not None:
            rec.fields.update(
                remote=b"1",
                rexec=inst.exec,
                rq=pack_record(state.pending) if state.pending and not status.is_terminal else b"",
                rtok=state.token,
                rsent=state.sent,
                rts=state.ts,
                rtrace=state.trace,
            )
        step.plan.records.append(rec)
        step.touched[inst.iid] = inst
        if status.is_terminal:
            self.half._finish(inst, self.result, status, step)
            inst.remote = None

    def _dispatch(self) -> None:
        state, inst = self.state, self.inst
        state.token = uuid.uuid4().hex
        state.sent = len(state.pending)
        state.ts = self.ts
        body = {"iid": inst.iid, "token": state.token, "name": inst.name}
        self.step.plan.outbox.append(
            {"dst": self.owner.workitems.keys.orchestrations, "m": pack_record(body)}
        )
