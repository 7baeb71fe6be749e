"""Translation between this engine's records and the Durable Task protocol's messages.

Payloads: the SDKs send JSON text; the engine stores msgpack. A JSON payload is decoded and stored
as the value it holds (so a native client reading an SDK instance's output gets that value), and a
stored payload goes back to an SDK as ``json.dumps`` of its value. A payload whose value is None
travels as an absent field, as the SDKs send it.

History: the engine's events (``durable/_core/events.py``) map one to one onto ``HistoryEvent``;
a scheduling event's id is its task id, and a completion names it in ``taskScheduledId`` (or
``timerId``), which is how the SDKs number their actions too.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any

from durabletask.internal import orchestrator_service_pb2 as pb
from google.protobuf import timestamp_pb2, wrappers_pb2

from .._core import events as ev
from .._core.entities import EntityId
from .._core.model import FailureDetails, OrchestrationState, OrchestrationStatus, datetime_to_ms
from .._core.serialization import decode, encode
from .._runtime import tracing
from .._runtime.remote import ACTION_TERMINATE

#: engine status -> protocol status
STATUS_TO_PB: dict[str, int] = {
    OrchestrationStatus.PENDING.value: pb.ORCHESTRATION_STATUS_PENDING,
    OrchestrationStatus.RUNNING.value: pb.ORCHESTRATION_STATUS_RUNNING,
    OrchestrationStatus.COMPLETED.value: pb.ORCHESTRATION_STATUS_COMPLETED,
    OrchestrationStatus.FAILED.value: pb.ORCHESTRATION_STATUS_FAILED,
    OrchestrationStatus.TERMINATED.value: pb.ORCHESTRATION_STATUS_TERMINATED,
    OrchestrationStatus.SUSPENDED.value: pb.ORCHESTRATION_STATUS_SUSPENDED,
    OrchestrationStatus.CONTINUED_AS_NEW.value: pb.ORCHESTRATION_STATUS_CONTINUED_AS_NEW,
}
STATUS_FROM_PB: dict[int, str] = {v: k for k, v in STATUS_TO_PB.items()}


class UnsupportedActionError(Exception):
    """An SDK returned an action this backend cannot carry out."""


# -- payloads ------------------------------------------------------------------------------------
def _json_default(value: Any) -> Any:
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def json_value(text: str | None) -> Any:
    """The value a JSON payload holds (absent or empty: None)."""
    return json.loads(text) if text else None


def to_json(value: Any) -> str | None:
    """A value as the JSON text an SDK expects (None: absent)."""
    return None if value is None else json.dumps(value, default=_json_default)


def packed_from_json(text: str | None, what: str = "payload") -> bytes | None:
    """A JSON payload from an SDK as the engine stores it."""
    return None if not text else encode(json.loads(text), what=what)


def json_from_packed(data: bytes | None) -> str | None:
    """A stored payload as JSON text for an SDK."""
    return None if data is None else to_json(decode(data))


def string_value(text: str | None) -> wrappers_pb2.StringValue | None:
    return None if text is None else wrappers_pb2.StringValue(value=text)


def packed_value(data: bytes | None) -> wrappers_pb2.StringValue | None:
    return string_value(json_from_packed(data))


def optional_text(message: Any, name: str) -> str | None:
    """The text of an optional ``StringValue`` field (None when unset)."""
    return str(getattr(message, name).value) if message.HasField(name) else None


def timestamp(ms: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(int(ms))
    return ts


def timestamp_of(value: _dt.datetime) -> timestamp_pb2.Timestamp:
    return timestamp(datetime_to_ms(value))


def trace_parent(message: Any, name: str = "parentTraceContext") -> str | None:
    """The valid W3C ``traceparent`` of a message's ``TraceContext`` field, else None."""
    if not message.HasField(name):
        return None
    value = str(getattr(message, name).traceParent)
    return value if len(value) <= 256 and tracing.parse_traceparent(value) is not None else None


# -- failures ------------------------------------------------------------------------------------
def failure_to_pb(rec: dict[str, Any] | FailureDetails | None) -> pb.TaskFailureDetails | None:
    details = rec if isinstance(rec, FailureDetails) else FailureDetails.from_record(rec)
    if details is None:
        return None
    return pb.TaskFailureDetails(
        errorType=details.error_type,
        errorMessage=details.message,
        stackTrace=string_value(details.stack_trace),
    )


def failure_from_pb(details: pb.TaskFailureDetails) -> dict[str, Any]:
    stack = details.stackTrace.value if details.HasField("stackTrace") else None
    return FailureDetails(details.errorMessage, details.errorType or "Error", stack).to_record()


# -- history ------------------------------------------------------------------------------------
def history_event(e: ev.Event, instance_id: str = "") -> pb.HistoryEvent:
    """One engine history event of ``instance_id`` as the protocol's ``HistoryEvent``."""
    kind = e["k"]
    out = pb.HistoryEvent(eventId=-1, timestamp=timestamp(int(e.get("ts") or 0)))
    tid: Any = e.get("tid", -1)
    if kind == ev.ORCHESTRATOR_STARTED:
        out.orchestratorStarted.SetInParent()
    elif kind == ev.EXECUTION_STARTED:
        started = out.executionStarted
        started.name = str(e.get("name", ""))
        _set_packed(started, "input", e.get("input"))
        started.orchestrationInstance.instanceId = instance_id
        if e.get("exec"):
            started.orchestrationInstance.executionId.value = str(e["exec"])
        # the SDK's spans of the execution nest in this engine's span of it (else in the caller's)
        traceparent = tracing.orchestration_traceparent(
            instance_id, str(e.get("exec") or ""), e.get("traceparent")
        ) or e.get("traceparent")
        if traceparent:
            started.parentTraceContext.traceParent = str(traceparent)
        parent = e.get("parent")
        if parent:
            started.parentInstance.taskScheduledId = int(parent.get("tid", -1))
            started.parentInstance.orchestrationInstance.instanceId = str(parent.get("iid", ""))
            if parent.get("exec"):
                started.parentInstance.orchestrationInstance.executionId.value = str(parent["exec"])
    elif kind == ev.TASK_SCHEDULED:
        out.eventId = int(tid)
        out.taskScheduled.name = str(e.get("name", ""))
        _set_packed(out.taskScheduled, "input", e.get("input"))
        if e.get("traceparent"):
            out.taskScheduled.parentTraceContext.traceParent = str(e["traceparent"])
    elif kind == ev.TASK_COMPLETED:
        out.taskCompleted.taskScheduledId = int(tid)
        _set_packed(out.taskCompleted, "result", e.get("result"))
    elif kind == ev.TASK_FAILED:
        out.taskFailed.taskScheduledId = int(tid)
        _set_failure(out.taskFailed, e.get("failure"))
    elif kind == ev.SUB_CREATED:
        out.eventId = int(tid)
        created = out.subOrchestrationInstanceCreated
        created.name = str(e.get("name", ""))
        created.instanceId = str(e.get("iid") or "")
        _set_packed(created, "input", e.get("input"))
    elif kind == ev.SUB_COMPLETED:
        out.subOrchestrationInstanceCompleted.taskScheduledId = int(tid)
        _set_packed(out.subOrchestrationInstanceCompleted, "result", e.get("result"))
    elif kind == ev.SUB_FAILED:
        out.subOrchestrationInstanceFailed.taskScheduledId = int(tid)
        _set_failure(out.subOrchestrationInstanceFailed, e.get("failure"))
    elif kind == ev.TIMER_CREATED:
        out.eventId = int(tid)
        out.timerCreated.fireAt.CopyFrom(timestamp(int(e.get("fire_at") or 0)))
    elif kind == ev.TIMER_FIRED:
        out.timerFired.timerId = int(tid)
        out.timerFired.fireAt.CopyFrom(timestamp(int(e.get("fire_at") or 0)))
    elif kind == ev.EVENT_RAISED:
        out.eventRaised.name = str(e.get("name", ""))
        _set_packed(out.eventRaised, "input", e.get("input"))
    elif kind == ev.EVENT_SENT:
        out.eventId = int(tid)
        out.eventSent.instanceId = str(e.get("iid", ""))
        out.eventSent.name = str(e.get("name", ""))
        _set_packed(out.eventSent, "input", e.get("input"))
    elif kind in _ENTITY_EVENTS:
        _entity_event(out, e, instance_id)
    elif kind == ev.EXECUTION_SUSPENDED:
        out.executionSuspended.SetInParent()
        if e.get("reason") is not None:
            out.executionSuspended.input.value = str(e["reason"])
    elif kind == ev.EXECUTION_RESUMED:
        out.executionResumed.SetInParent()
        if e.get("reason") is not None:
            out.executionResumed.input.value = str(e["reason"])
    elif kind == ev.EXECUTION_TERMINATED:
        out.executionTerminated.SetInParent()
        _set_packed(out.executionTerminated, "input", e.get("output"))
    elif kind == ev.EXECUTION_COMPLETED:
        done = out.executionCompleted
        done.orchestrationStatus = STATUS_TO_PB.get(str(e.get("status")), pb.ORCHESTRATION_STATUS_FAILED)  # type: ignore[assignment]
        _set_packed(done, "result", e.get("result"))
        _set_failure(done, e.get("failure"))
    else:
        out.genericEvent.data.value = f"durable event {kind}"
    return out


_ENTITY_EVENTS = frozenset(
    {
        ev.ENTITY_CALLED,
        ev.ENTITY_SIGNALED,
        ev.ENTITY_LOCK_REQUESTED,
        ev.ENTITY_UNLOCKED,
        ev.ENTITY_RESPONDED,
    }
)


def _entity_event(out: pb.HistoryEvent, e: ev.Event, instance_id: str) -> None:
    kind = e["k"]
    rid = str(e.get("rid") or "")
    if kind == ev.ENTITY_RESPONDED:
        if "result" not in e and "failure" not in e:  # the last entity of a lock request answered
            out.entityLockGranted.criticalSectionId = rid
        elif e.get("failure") is not None:
            out.entityOperationFailed.requestId = rid
            _set_failure(out.entityOperationFailed, e.get("failure"))
        else:
            out.entityOperationCompleted.requestId = rid
            _set_packed(out.entityOperationCompleted, "output", e.get("result"))
        return
    out.eventId = int(e.get("tid", -1))
    if kind == ev.ENTITY_CALLED:
        called = out.entityOperationCalled
        called.requestId, called.operation = rid, str(e.get("name", ""))
        called.targetInstanceId.value = str(e.get("entity", ""))
        called.parentInstanceId.value = instance_id
        _set_packed(called, "input", e.get("input"))
    elif kind == ev.ENTITY_SIGNALED:
        signaled = out.entityOperationSignaled
        signaled.requestId, signaled.operation = rid, str(e.get("name", ""))
        signaled.targetInstanceId.value = str(e.get("entity", ""))
        if e.get("at") is not None:
            signaled.scheduledTime.CopyFrom(timestamp(int(e["at"])))
        _set_packed(signaled, "input", e.get("input"))
    elif kind == ev.ENTITY_LOCK_REQUESTED:
        requested = out.entityLockRequested
        requested.criticalSectionId = rid
        requested.lockSet.extend(str(t) for t in e.get("entities") or ())
        requested.parentInstanceId.value = instance_id
    else:  # ENTITY_UNLOCKED
        unlocked = out.entityUnlockSent
        unlocked.criticalSectionId = rid
        unlocked.targetInstanceId.value = str((e.get("entities") or [""])[0])
        unlocked.parentInstanceId.value = instance_id


def _set_packed(message: Any, name: str, data: bytes | None) -> None:
    text = json_from_packed(data)
    if text is not None:
        getattr(message, name).value = text


def _set_failure(message: Any, rec: dict[str, Any] | None) -> None:
    details = failure_to_pb(rec)
    if details is not None:
        message.failureDetails.CopyFrom(details)


# -- actions --------------------------------------------------------------------------------------
def actions_from_pb(instance_id: str, actions: Any) -> tuple[list[ev.Event], dict[str, Any] | None]:
    """An SDK's actions as engine actions, and the completion (None while the code runs on)."""
    out: list[ev.Event] = []
    complete: dict[str, Any] | None = None
    for action in actions:
        which = action.WhichOneof("orchestratorActionType")
        tid = int(action.id)
        if which == "scheduleTask":
            task = action.scheduleTask
            scheduled: ev.Event = {
                "k": ev.TASK_SCHEDULED,
                "tid": tid,
                "name": task.name,
                "input": packed_from_json(optional_text(task, "input"), f"input of activity {task.name!r}"),
            }
            traceparent = trace_parent(task)
            if traceparent is not None:
                scheduled["traceparent"] = traceparent
            out.append(scheduled)
        elif which == "createTimer":
            out.append(
                {"k": ev.TIMER_CREATED, "tid": tid, "fire_at": action.createTimer.fireAt.ToMilliseconds()}
            )
        elif which == "createSubOrchestration":
            sub = action.createSubOrchestration
            out.append(
                {
                    "k": ev.SUB_CREATED,
                    "tid": tid,
                    "name": sub.name,
                    "iid": sub.instanceId or f"{instance_id}:{tid:04d}",
                    "input": packed_from_json(optional_text(sub, "input")),
                }
            )
        elif which == "sendEvent":
            send = action.sendEvent
            out.append(
                {
                    "k": ev.EVENT_SENT,
                    "tid": tid,
                    "iid": send.instance.instanceId,
                    "name": send.name,
                    "input": packed_from_json(optional_text(send, "data")),
                }
            )
        elif which == "sendEntityMessage":
            out.append(entity_action(tid, action.sendEntityMessage))
        elif which == "terminateOrchestration":
            terminate = action.terminateOrchestration
            reason = optional_text(terminate, "reason")
            out.append(
                {
                    "k": ACTION_TERMINATE,
                    "iid": terminate.instanceId,
                    "output": None if reason is None else encode(reason),
                    "recursive": bool(terminate.recurse),
                }
            )
        elif which == "completeOrchestration":
            complete = _completion(action.completeOrchestration)
        else:
            raise UnsupportedActionError(
                f"durable sidecar does not support the orchestrator action {which!r} yet"
            )
    return out, complete


def entity_target(text: str) -> str:
    """An SDK's entity id (``@name@key``) in this engine's form (names are lower-case)."""
    return str(EntityId.parse(text))


def entity_action(tid: int, message: pb.SendEntityMessageAction) -> ev.Event:
    """An SDK orchestration's entity message as this engine's entity action."""
    which = message.WhichOneof("EntityMessageType")
    if which == "entityOperationCalled":
        called = message.entityOperationCalled
        return {
            "k": ev.ENTITY_CALLED,
            "tid": tid,
            "entity": entity_target(called.targetInstanceId.value),
            "name": called.operation,
            "input": packed_from_json(optional_text(called, "input")),
            "rid": called.requestId,
        }
    if which == "entityOperationSignaled":
        signaled = message.entityOperationSignaled
        action: ev.Event = {
            "k": ev.ENTITY_SIGNALED,
            "tid": tid,
            "entity": entity_target(signaled.targetInstanceId.value),
            "name": signaled.operation,
            "input": packed_from_json(optional_text(signaled, "input")),
            "rid": signaled.requestId,
        }
        if signaled.HasField("scheduledTime"):
            action["at"] = signaled.scheduledTime.ToMilliseconds()
        return action
    if which == "entityLockRequested":
        requested = message.entityLockRequested
        return {
            "k": ev.ENTITY_LOCK_REQUESTED,
            "tid": tid,
            "entities": sorted({entity_target(t) for t in requested.lockSet}),
            "rid": requested.criticalSectionId,
        }
    if which == "entityUnlockSent":
        unlocked = message.entityUnlockSent
        return {
            "k": ev.ENTITY_UNLOCKED,
            "tid": tid,
            "entities": [entity_target(unlocked.targetInstanceId.value)],
            "rid": unlocked.criticalSectionId,
        }
    raise UnsupportedActionError(f"durable sidecar does not support the entity message {which!r}")


def _completion(done: pb.CompleteOrchestrationAction) -> dict[str, Any]:
    status = STATUS_FROM_PB.get(done.orchestrationStatus, OrchestrationStatus.FAILED.value)
    out: dict[str, Any] = {"status": status, "output": packed_from_json(optional_text(done, "result"))}
    if done.HasField("failureDetails"):
        out["failure"] = failure_from_pb(done.failureDetails)
    if status == OrchestrationStatus.CONTINUED_AS_NEW.value:
        carried: list[tuple[str, bytes | None]] = []
        for e in done.carryoverEvents:
            if e.HasField("eventRaised"):
                carried.append((e.eventRaised.name, packed_from_json(optional_text(e.eventRaised, "input"))))
        out["carryover"] = carried
    elif status == OrchestrationStatus.FAILED.value and "failure" not in out:
        out["failure"] = FailureDetails("the orchestration failed", "Error").to_record()
    return out


# -- states --------------------------------------------------------------------------------------
def state_to_pb(state: OrchestrationState, with_payloads: bool) -> pb.OrchestrationState:
    out = pb.OrchestrationState(
        instanceId=state.instance_id,
        name=state.name,
        orchestrationStatus=STATUS_TO_PB[state.runtime_status.value],  # type: ignore[arg-type]
        createdTimestamp=timestamp_of(state.created_at),
        lastUpdatedTimestamp=timestamp_of(state.last_updated_at),
    )
    if state.scheduled_start_at is not None:
        out.scheduledStartTimestamp.CopyFrom(timestamp_of(state.scheduled_start_at))
    if state.runtime_status.is_terminal:
        out.completedTimestamp.CopyFrom(timestamp_of(state.last_updated_at))
    if state.parent_instance_id:
        out.parentInstanceId.value = state.parent_instance_id
    if state.version:
        out.version.value = state.version
    if state.tags:
        out.tags.update(state.tags)
    if with_payloads:
        for name, value in (("input", state.input), ("output", state.output)):
            text = to_json(value)
            if text is not None:
                getattr(out, name).value = text
    custom = to_json(state.custom_status)
    if custom is not None:
        out.customStatus.value = custom
    if state.failure_details is not None:
        out.failureDetails.CopyFrom(failure_to_pb(state.failure_details))
    return out
