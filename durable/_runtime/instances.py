"""What the orchestration half of a partition step knows about one instance, and the pieces of a
step that do not depend on where its code runs: messages into history events, the reply to a
parent, the history size limits, loading histories."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._core import events as ev
from .._core.executor import OrchestrationExecutor, StepResult
from .._core.model import FailureDetails, OrchestrationStatus
from .._core.serialization import BLOB_REF_PREFIX, encode, is_blob_ref, unpack_record
from .step import Message, StepState

if TYPE_CHECKING:
    from .._config import WorkerConfig
    from .._store.store import RecordWrite, Store
    from .lifecycle_step import Loaded, Rewound
    from .remote import RemoteState

log = logging.getLogger("durable.partition")

COMPLETION_MSGS = {
    ev.MSG_TASK_COMPLETED: ev.TASK_COMPLETED,
    ev.MSG_TASK_FAILED: ev.TASK_FAILED,
    ev.MSG_TIMER_FIRED: ev.TIMER_FIRED,
    ev.MSG_SUB_COMPLETED: ev.SUB_COMPLETED,
    ev.MSG_SUB_FAILED: ev.SUB_FAILED,
}
#: history event fields that carry (encoded) user payloads
PAYLOAD_FIELDS = ("input", "result", "output")
#: fields of an activity's TaskScheduled event that its task message carries
ACTIVITY_OPTIONS = ("to", "hbt", "call", "attempt", "hb")
LIVE = (OrchestrationStatus.RUNNING, OrchestrationStatus.SUSPENDED)


@dataclass(slots=True)
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
    #: events raised before a scheduled start ran (``pending_events``; None: none)
    _pending: list[ev.Event] | None = None
    #: set while the instance's code runs in a remote executor (a Durable Task SDK: ``remote.py``)
    remote: RemoteState | None = None
    #: read for a lifecycle command of this step while the instance is not running
    loaded: Loaded | None = None
    #: the version it is pinned to (None: not started yet, or started unpinned and not run yet)
    ver: str | None = None
    #: the work item of a step delegated to a worker that has its version ("" none): messages
    #: wait meanwhile ...
    delegated: str = ""
    #: ... here, in arrival order (``parked``; None: none)
    _parked: list[Message] | None = None
    #: the recorded history of an execution whose code this worker lacks (None: runs here, or none)
    delegated_history: list[ev.Event] | None = None

    # the two lists are rarely used: a cached instance holds None instead of two empty lists
    @property
    def pending_events(self) -> list[ev.Event]:
        """Events raised before a scheduled start ran: delivered right after it starts."""
        if self._pending is None:
            self._pending = []
        return self._pending

    @pending_events.setter
    def pending_events(self, events: list[ev.Event]) -> None:
        self._pending = events or None

    @property
    def parked(self) -> list[Message]:
        """The messages that wait for a delegated step's outcome, in arrival order."""
        if self._parked is None:
            self._parked = []
        return self._parked

    @parked.setter
    def parked(self, messages: list[Message]) -> None:
        self._parked = messages or None

    @property
    def running(self) -> bool:
        """An execution is live (here, or on workers that have its version)."""
        if self.executor is not None:
            return not self.executor.is_done
        return self.delegated_history is not None and self.status in LIVE

    @property
    def history(self) -> list[ev.Event]:
        """The recorded history of the current execution, as far as this worker knows it."""
        if self.executor is not None:
            return self.executor.history
        return self.delegated_history or []


@dataclass
class Incoming:
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


def carried_events(start: Message) -> list[ev.Event]:
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


def started_event(msg: Message, inst: Instance) -> ev.Event:
    event: ev.Event = {
        "k": ev.EXECUTION_STARTED,
        "name": inst.name,
        "input": msg.get("input"),
        "exec": inst.exec,
        "parent": inst.parent,
        "ver": msg.get("ver"),  # None: pinned by the executor that runs it, to its newest version
    }
    if msg.get("traceparent"):
        event["traceparent"] = msg["traceparent"]
    return event


def check_history_size(
    iid: str, executor: OrchestrationExecutor, result: StepResult, cfg: WorkerConfig
) -> StepResult:
    """Warn about a long history; fail the execution past the limit."""
    if result.status.is_terminal:
        return result
    size = executor.history_len
    if size > cfg.history_max_events:
        details = FailureDetails(
            f"orchestration {iid!r} has {size} history events, more than the limit of "
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
            iid,
            size,
            cfg.history_warn_events,
        )
    return result


async def load_histories(
    store: Store, index: int, ids: list[str]
) -> list[tuple[dict[bytes, bytes], list[ev.Event]]]:
    """The hashes and histories of instances of partition ``index``, large payloads resolved (the
    history's and the output's)."""
    loaded = await store.load_instances(index, ids)
    histories = [[unpack_record(h) for h in history] for _, history in loaded]
    outputs = [fields.get(b"output") for fields, _ in loaded]
    refs = [
        e[f][len(BLOB_REF_PREFIX) :].decode()
        for events in histories
        for e in events
        for f in PAYLOAD_FIELDS
        if is_blob_ref(e.get(f))
    ]
    refs.extend(o[len(BLOB_REF_PREFIX) :].decode() for o in outputs if o is not None and is_blob_ref(o))
    if refs:  # large payloads live beside the history
        blobs = await store.get_blobs(refs)
        for events in histories:
            for e in events:
                for f in PAYLOAD_FIELDS:
                    if is_blob_ref(e.get(f)):
                        e[f] = blobs[e[f][len(BLOB_REF_PREFIX) :].decode()]
        for fields, _ in loaded:
            output = fields.get(b"output")
            if output is not None and is_blob_ref(output):
                fields[b"output"] = blobs.get(output[len(BLOB_REF_PREFIX) :].decode(), output)
    return [(fields, events) for (fields, _), events in zip(loaded, histories, strict=True)]


def to_event(msg: dict[str, Any], exec_id: str) -> ev.Event | None:
    kind = msg["kind"]
    if kind in COMPLETION_MSGS:
        if msg.get("exec") not in (None, exec_id):
            return None  # for an earlier execution (before continue-as-new or restart)
        event: ev.Event = {"k": COMPLETION_MSGS[kind], "tid": msg.get("tid")}
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
