"""Orchestration steps whose code the partition owner lacks: the owner's side.

The owner of a partition is its only writer, but it need not run the code. When an instance is
pinned to a version this worker has not registered (or a start asks for an orchestrator it does
not have at all), the owner turns the step's messages into history events as usual and, in the
step's commit, sends them as a *work item* to the work stream of the capability
(``o|name|version``), marks the instance (``wi``: the item's id) and records it in the partition's
``delegated`` hash. The commit consumes the messages, so the partition's cursor moves on and the
other instances of the partition never wait.

A worker that has the version runs the step (``work_runner.py``) and replies to the partition's inbox.
Until the reply arrives, the instance's new messages are parked, in order, in its hash (``pk``).
The reply is committed like a local step (history, actions, timers, status), then the parked
messages are handled: run here if this worker has the version now, else sent as the next work
item. While no live worker has the version, the item waits in its stream and the instance stays
PENDING or RUNNING, counted by ``durable_orchestrations_waiting_for_version``. Terminating such an
instance needs no code: the owner does it at once.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from .._core import events as ev
from .._core.delegation import step_result_from
from .._core.executor import StepResult
from .._core.model import FailureDetails, OrchestrationStatus
from .._core.registry import ANY_VERSION, capability
from .._core.serialization import pack_record
from .._store.store import RecordWrite
from .instances import Incoming, Instance, reply_to_parent
from .step import Message, StepState

if TYPE_CHECKING:
    from .orchestration_step import OrchestrationHalf


def persistable(msg: Message) -> Message:
    """A message without the partition's transient annotations (``_eid``, ``_wire``)."""
    return {k: v for k, v in msg.items() if not k.startswith("_")}


class DelegatedSteps:
    """Delegates steps to workers that have the code, and applies what they send back."""

    def __init__(self, half: OrchestrationHalf) -> None:
        self.half = half

    # -- sending a step away -----------------------------------------------------------------
    def delegate(self, step: StepState, inst: Instance, msgs: list[Message]) -> None:
        half = self.half
        ts = max(step.now, inst.last_ts)
        incoming = half._incoming(inst, msgs, step, ts)
        if not incoming.events:
            half.run_local(step, inst, incoming, ts)
            return
        if incoming.start is None:
            terminate = next((e for e in incoming.events if e["k"] == ev.EXECUTION_TERMINATED), None)
            if terminate is not None:  # needs no code: end it here and now
                self.terminate(step, inst, terminate.get("output"))
                return
        inst.last_ts = ts
        version = incoming.start.get("ver") if incoming.start is not None else inst.ver
        wid = uuid.uuid4().hex
        item: dict[str, Any] = {
            "wid": wid,
            "kind": "o",
            "part": step.index,
            "target": inst.iid,
            "name": inst.name,
            "ver": version,
            "ts": ts,
            "events": incoming.events,
        }
        cap = capability("o", inst.name, version)
        step.plan.outbox.append({"dst": half.store.keys.work(cap), "m": pack_record(item)})
        rec = RecordWrite(
            step.keys.instance(inst.iid),
            step.keys.history(inst.iid),
            inst.version,
            mode="r" if incoming.start is not None else "a",
        )
        f = rec.fields
        f["wi"] = wid
        f["updated"] = ts
        if incoming.start is not None:  # the new execution's facts; its events come back later
            prev_status = inst.status
            inst.status = OrchestrationStatus.PENDING
            inst.delegated_history = []
            inst.executor = None
            inst.ver = version
            f.update(
                status=inst.status.value,
                name=inst.name,
                exec=inst.exec,
                created=inst.created,
                output=b"",
                failure=b"",
                custom=b"",
                ver=version if version is not None else "",
                pk=b"",
                tags=inst.tags,
                notify=pack_record(inst.notify) if inst.notify else b"",
            )
            step.plan.finished[inst.iid] = None  # not finished (any more): out of the retention index
            f["input"] = half._offload(inst.iid, incoming.start_input, rec, step) or b""
            f["parent"] = pack_record(inst.parent) if inst.parent else b""
            rec.index, rec.index_member, rec.index_score = "i", inst.iid, inst.created
            if prev_status != inst.status:
                rec.channel, rec.message = half.store.keys.status_channel(inst.iid), inst.status.value
        inst.delegated = wid
        entry = [inst.name, ANY_VERSION if version is None else version, ts, wid]
        step.plan.delegated[inst.iid] = pack_record(entry)
        step.plan.records.append(rec)
        step.touched[inst.iid] = inst

    # -- while it is away --------------------------------------------------------------------
    def settle(self, step: StepState, inst: Instance, msgs: list[Message]) -> list[Message]:
        """Messages for an instance with a step away: park them, or apply the step's outcome when
        it arrives; returns the messages to handle now (the parked ones first)."""
        parked = len(inst.parked)
        for i, msg in enumerate(msgs):
            kind = msg["kind"]
            if kind == ev.MSG_STEP_RESULT:
                if msg.get("wid") != inst.delegated:
                    continue  # a late duplicate of an outcome already applied (or cancelled)
                waiting, inst.parked = inst.parked, []
                self._apply(step, inst, msg)
                return [*waiting, *msgs[i + 1 :]]
            if kind == ev.MSG_TERMINATE and msg.get("exec") in (None, inst.exec):
                self.terminate(step, inst, msg.get("output"))  # the step away is cancelled
                return msgs[i + 1 :]
            inst.parked = [*inst.parked, persistable(msg)]
        if len(inst.parked) != parked:
            rec = RecordWrite(step.keys.instance(inst.iid), step.keys.history(inst.iid), inst.version)
            rec.fields["pk"] = pack_record(inst.parked)
            step.plan.records.append(rec)
            step.touched[inst.iid] = inst
        return []

    def _apply(self, step: StepState, inst: Instance, msg: Message) -> None:
        half = self.half
        inst.delegated = ""
        step.plan.undelegated.append(inst.iid)
        if msg.get("missing"):
            self._run_here(step, inst, msg["item"])
            return
        result = step_result_from(msg["result"])
        inst.ver = msg.get("ver")
        inst.delegated_history = [*(inst.delegated_history or []), *result.new_events]
        prev_status = inst.status
        if any(e.get("k") == ev.EXECUTION_STARTED for e in result.new_events):
            step.started.append(inst)
        rec = half.conclude(step, inst, result, step.now, False, None, prev_status)
        rec.fields.update(wi="", pk=b"")
        self._settle_executor(inst)

    def _run_here(self, step: StepState, inst: Instance, item: dict[str, Any]) -> None:
        """No worker had the code within the grace period: the step runs here (and fails with
        that reason, unless this worker has the code by now)."""
        events: list[ev.Event] = list(item.get("events") or [])
        incoming = Incoming(events=events)
        if events and events[0].get("k") == ev.EXECUTION_STARTED:
            incoming.start = {"ver": events[0].get("ver")}
            incoming.start_input = events[0].get("input")
            inst.executor = self.half._new_executor(inst.iid)
            inst.delegated_history = None
        elif inst.executor is None:
            self._settle_executor(inst, force=True)
        before = len(step.plan.records)
        self.half.run_local(step, inst, incoming, max(step.now, inst.last_ts))
        for rec in step.plan.records[before:]:
            if rec.hash_key == step.keys.instance(inst.iid):
                rec.fields.update(wi="", pk=b"")

    def _settle_executor(self, inst: Instance, *, force: bool = False) -> None:
        """After an outcome from elsewhere: if this worker has the version, it runs the next steps
        (its executor replays the history, outcome included)."""
        half = self.half
        if not inst.running and not force:
            inst.delegated_history = None
            return
        if force or half.registry.can_run(inst.name, inst.ver):
            executor = half._new_executor(inst.iid)
            executor.replay(list(inst.delegated_history or []))
            inst.executor = executor
            inst.delegated_history = None

    # -- termination needs no code ---------------------------------------------------------------
    def terminate(self, step: StepState, inst: Instance, output: bytes | None) -> None:
        """End an instance whose code runs elsewhere, here and now (cancelling a step away)."""
        half = self.half
        inst.parked = []
        if inst.delegated:
            inst.delegated = ""
            step.plan.undelegated.append(inst.iid)
        if not inst.history and inst.status in (None, OrchestrationStatus.PENDING):
            rec = half._terminate_pending(inst, {"output": output}, step)
            rec.fields.update(wi="", pk=b"")
            step.plan.records.append(rec)
            step.touched[inst.iid] = inst
            inst.delegated_history = None
            if inst.parent:
                reply_to_parent(step, inst.parent, None, FailureDetails("terminated", "TerminatedError"))
            return
        base = len(inst.history)
        ts = max(step.now, inst.last_ts)
        events: list[ev.Event] = [
            {"k": ev.ORCHESTRATOR_STARTED, "ts": ts, "eid": base},
            {"k": ev.EXECUTION_TERMINATED, "output": output, "ts": ts, "eid": base + 1},
            {
                "k": ev.EXECUTION_COMPLETED,
                "status": OrchestrationStatus.TERMINATED.value,
                "result": output,
                "failure": None,
                "ts": ts,
                "eid": base + 2,
            },
        ]
        result = StepResult(new_events=events, status=OrchestrationStatus.TERMINATED, output=output)
        inst.delegated_history = [*inst.history, *events]
        inst.executor = None
        rec = half.conclude(step, inst, result, ts, False, None, inst.status)
        rec.fields.update(wi="", pk=b"")
