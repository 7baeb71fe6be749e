"""What the orchestration half of a partition step knows about one instance, and the pieces of a
step that do not depend on where its code runs: messages into history events, the reply to a
parent, the history size limits, loading histories."""

from __future__ import annotations

import logging
from collections.abc import Sequence
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


class _Rare:
    """The state an instance rarely has, allocated on first use (see :class:`Instance`)."""

    __slots__ = ("delegated", "delegated_history", "loaded", "notify", "parked", "pending", "remote")

    def __init__(self) -> None:
        self.notify: dict[str, Any] | None = None
        self.pending: list[ev.Event] | None = None
        self.remote: RemoteState | None = None
        self.loaded: Loaded | None = None
        self.delegated = ""
        self.parked: list[Message] | None = None
        self.delegated_history: list[ev.Event] | None = None

    def empty(self) -> bool:
        return (
            not (self.notify or self.pending or self.delegated or self.parked)
            and self.remote is None
            and self.loaded is None
            and self.delegated_history is None
        )


@dataclass(slots=True)
class Instance:
    """The cached view of one orchestration instance in its owning partition.

    Every cached (waiting) instance holds one, so what few instances have (a schedule's notify,
    events held before a scheduled start, remote or delegated execution, a lifecycle command's
    loaded record) lives in one object allocated on first use, behind properties."""

    iid: str
    version: int = 0
    status: OrchestrationStatus | None = None
    name: str = ""
    exec: str = ""
    created: int = 0
    parent: dict[str, Any] | None = None
    executor: OrchestrationExecutor | None = None
    last_ts: int = 0
    #: the instance's tags, as stored (:func:`durable._core.model.encode_tags`)
    tags: str = ""
    #: the trace context its start message carried (the parent of its orchestration span)
    traceparent: str | None = None
    #: the version it is pinned to (None: not started yet, or started unpinned and not run yet)
    ver: str | None = None
    _rare: _Rare | None = None

    def _more(self) -> _Rare:
        if self._rare is None:
            self._rare = _Rare()
        return self._rare

    def _shrink(self) -> None:
        if self._rare is not None and self._rare.empty():
            self._rare = None

    @property
    def notify(self) -> dict[str, Any] | None:
        """An entity to signal when the instance ends: {"entity": id, "op": operation} (schedule runs)."""
        return self._rare.notify if self._rare is not None else None

    @notify.setter
    def notify(self, value: dict[str, Any] | None) -> None:
        if value is not None or self._rare is not None:
            self._more().notify = value
            self._shrink()

    # (read-only sequences: a change is an assignment, so reading allocates nothing)
    @property
    def pending_events(self) -> Sequence[ev.Event]:
        """Events raised before a scheduled start ran: delivered right after it starts."""
        rare = self._rare
        return rare.pending if rare is not None and rare.pending is not None else ()

    @pending_events.setter
    def pending_events(self, events: Sequence[ev.Event]) -> None:
        if events or self._rare is not None:
            self._more().pending = list(events) or None
            self._shrink()

    @property
    def remote(self) -> RemoteState | None:
        """Set while the instance's code runs in a remote executor (a Durable Task SDK: ``remote.py``)."""
        return self._rare.remote if self._rare is not None else None

    @remote.setter
    def remote(self, value: RemoteState | None) -> None:
        if value is not None or self._rare is not None:
            self._more().remote = value
            self._shrink()

    @property
    def loaded(self) -> Loaded | None:
        """Read for a lifecycle command of this step while the instance is not running."""
        return self._rare.loaded if self._rare is not None else None

    @loaded.setter
    def loaded(self, value: Loaded | None) -> None:
        if value is not None or self._rare is not None:
            self._more().loaded = value
            self._shrink()

    @property
    def delegated(self) -> str:
        """The work item of a step delegated to a worker that has its version ("" none): messages
        wait meanwhile in :attr:`parked`."""
        return self._rare.delegated if self._rare is not None else ""

    @delegated.setter
    def delegated(self, value: str) -> None:
        if value or self._rare is not None:
            self._more().delegated = value
            self._shrink()

    @property
    def parked(self) -> Sequence[Message]:
        """The messages that wait for a delegated step's outcome, in arrival order."""
        rare = self._rare
        return rare.parked if rare is not None and rare.parked is not None else ()

    @parked.setter
    def parked(self, messages: Sequence[Message]) -> None:
        if messages or self._rare is not None:
            self._more().parked = list(messages) or None
            self._shrink()

    @property
    def delegated_history(self) -> list[ev.Event] | None:
        """The recorded history of an execution whose code this worker lacks (None: runs here, or none)."""
        return self._rare.delegated_history if self._rare is not None else None

    @delegated_history.setter
    def delegated_history(self, value: list[ev.Event] | None) -> None:
        if value is not None or self._rare is not None:
            self._more().delegated_history = value
            self._shrink()

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
