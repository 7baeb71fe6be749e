"""Lifecycle commands inside a partition step: recursive terminate and rewind.

The orchestration half (``orchestration_step.py``) hands these messages here. A terminate with
``recursive`` is passed on to the instance's open sub-orchestrations (a child applies one only if
it names the child's own parent execution), so it reaches a whole tree across partitions, each
hop inside a step's commit. A rewind rewrites a FAILED instance's history (see
:mod:`durable._core.lifecycle`) and resumes it; a rewinding parent sends its failed or unanswered
sub-orchestrations a rewind of their own, which rewinds a failed child, repeats a completed child's
answer, or starts the child again.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._core import events as ev
from .._core.executor import OrchestrationExecutor, StepResult
from .._core.lifecycle import RewindError, open_children, plan_rewind, run_rewind
from .._core.model import FailureDetails, OrchestrationStatus
from .._core.serialization import pack_record, unpack_record
from .._store.store import RecordWrite
from .step import Message, StepState

if TYPE_CHECKING:
    from .instances import Instance

log = logging.getLogger("durable.partition")

_WAITING = (OrchestrationStatus.PENDING, OrchestrationStatus.RUNNING, OrchestrationStatus.SUSPENDED)


@dataclass
class Loaded:
    """What a lifecycle command needs of an instance that is not running (read for this step)."""

    history: list[ev.Event] = field(default_factory=list)
    output: bytes | None = None
    failure: FailureDetails | None = None


@dataclass
class Rewound:
    """A rewound instance: the history its record is rewritten with, and the resuming step."""

    prefix: list[ev.Event]
    result: StepResult


def from_its_parent(inst: Instance, sender: Any) -> bool:
    """Whether ``sender`` (``{"iid", "exec"[, "tid"]}``) is the execution that started ``inst``."""
    parent = inst.parent
    if not isinstance(sender, dict) or not parent:
        return False
    same = parent.get("iid") == sender.get("iid") and parent.get("exec") == sender.get("exec")
    return same and ("tid" not in sender or parent.get("tid") == sender.get("tid"))


def terminate_children(step: StepState, inst: Instance, history: list[ev.Event], msg: Message) -> None:
    """Pass a recursive terminate on to the sub-orchestrations ``history`` left open."""
    for child in open_children(history):
        step.route(
            child,
            {
                "kind": ev.MSG_TERMINATE,
                "target": child,
                "output": msg.get("output"),
                "recursive": True,
                "from": {"iid": inst.iid, "exec": inst.exec},
            },
        )


def redo_child(inst: Instance, action: ev.Event) -> Message:
    """The message a rewinding parent sends a sub-orchestration whose result it lacks."""
    return {
        "kind": ev.MSG_REWIND,
        "target": str(action["iid"]),
        "reason": f"its parent {inst.iid!r} was rewound",
        "parent": {"iid": inst.iid, "exec": inst.exec, "tid": action["tid"]},
        "name": action["name"],
        "input": action.get("input"),
    }


class Rewinder:
    """Applies rewind messages to the instances of a partition step."""

    def __init__(
        self,
        new_executor: Callable[[str], OrchestrationExecutor],
        reply_to_parent: Callable[[StepState, dict[str, Any], bytes | None, FailureDetails | None], None],
        status_channel: Callable[[str], str],
    ) -> None:
        self._new_executor = new_executor
        self._reply = reply_to_parent
        self._channel = status_channel

    def apply(
        self, inst: Instance, msg: Message, loaded: Loaded | None, step: StepState, ts: int
    ) -> tuple[Rewound | None, RecordWrite | None, Message | None]:
        """(the rewound instance, or a record of a refused rewind, or a start message to apply
        instead); all None when the message has nothing to do."""
        parent = msg.get("parent")
        status = None if inst.running else inst.status
        if parent is None:  # asked by a client
            if status != OrchestrationStatus.FAILED:
                log.info("rewind of %r ignored: it is %s, not FAILED", inst.iid, inst.status)
                return None, None, None
            return self._rewind(inst, msg, loaded, step, ts, None)
        ours = from_its_parent(inst, parent)
        if ours and (inst.running or status in _WAITING):
            return None, None, None  # it answers its parent when it ends
        if ours and status == OrchestrationStatus.FAILED:
            return self._rewind(inst, msg, loaded, step, ts, parent)
        if ours and status == OrchestrationStatus.COMPLETED and loaded is not None:
            self._reply(step, parent, loaded.output, None)  # its answer was lost: repeat it
            return None, None, None
        start = {
            "kind": ev.MSG_START,
            "target": inst.iid,
            "name": msg.get("name"),
            "input": msg.get("input"),
            "exec": uuid.uuid4().hex,
            "created": step.now,
            "parent": parent,
        }
        return None, None, start

    def _rewind(
        self,
        inst: Instance,
        msg: Message,
        loaded: Loaded | None,
        step: StepState,
        ts: int,
        parent: dict[str, Any] | None,
    ) -> tuple[Rewound | None, RecordWrite | None, Message | None]:
        history = loaded.history if loaded is not None else []
        try:
            plan = plan_rewind(history, lambda: self._new_executor(inst.iid))
        except RewindError as exc:
            return None, self.refuse(inst, str(exc), loaded, step, ts, parent), None
        inst.executor = plan.executor
        result = run_rewind(plan, ts, msg.get("reason"))
        for action in result.actions:
            if action["k"] == ev.SUB_CREATED and action.get("eid", -1) < len(plan.history):
                action["redo"] = True  # the child is asked to rewind, not to start over
        return Rewound(plan.history, result), None, None

    def refuse(
        self,
        inst: Instance,
        why: str,
        loaded: Loaded | None,
        step: StepState,
        ts: int,
        parent: dict[str, Any] | None,
    ) -> RecordWrite:
        """The record of a refused rewind (the instance stays FAILED, with a ``RewindError`` that
        holds the failure it is about); a rewinding parent is told."""
        original = loaded.failure if loaded is not None else None
        if original is not None and original.error_type == "RewindError" and original.inner_failure:
            original = original.inner_failure  # refused before: keep the failure it is about
        failure = FailureDetails(f"cannot rewind {inst.iid!r}: {why}", "RewindError", None, original)
        log.warning("%s", failure.message)
        if parent is not None:
            self._reply(step, parent, None, failure)
        rec = RecordWrite(step.keys.instance(inst.iid), step.keys.history(inst.iid), inst.version)
        rec.fields.update(failure=pack_record(failure.to_record()), updated=ts)
        rec.channel, rec.message = self._channel(inst.iid), OrchestrationStatus.FAILED.value
        return rec


def merge(first: StepResult, then: StepResult) -> StepResult:
    """Two consecutive steps of one execution as one."""
    then.new_events[:0] = first.new_events
    then.actions[:0] = first.actions
    if not then.custom_status_set and first.custom_status_set:
        then.custom_status, then.custom_status_set = first.custom_status, True
    return then


def loaded_view(fields: dict[bytes, bytes], history: list[ev.Event]) -> Loaded:
    """The lifecycle view of an instance read from Redis (payload references already resolved)."""
    raw_failure = fields.get(b"failure")
    failure = FailureDetails.from_record(unpack_record(raw_failure)) if raw_failure else None
    return Loaded(history, fields.get(b"output") or None, failure)
