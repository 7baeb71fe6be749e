"""Entity work items: an entity's waiting operations as an ``EntityBatchRequest`` for an SDK worker,
and its ``EntityBatchResult`` as the reply the partition owner commits.

The owner hands out a batch of operations with a token (``durable/_core/remote_entities.py``); the
work item carries the entity's current state (JSON) and the operations, and the reply carries the
new state, one result per operation and the messages the operations sent (signals, orchestration
starts), all in this engine's form.
"""

from __future__ import annotations

import uuid
from typing import Any

from durabletask.internal import orchestrator_service_pb2 as pb

from .._core import events as ev
from .._core.entities import EntityRecord
from .._core.model import FailureDetails
from .._core.remote_entities import MSG_REMOTE_RESULT
from .._core.serialization import decode
from .._runtime import tracing
from . import convert


def batch_request(
    target: str, main: dict[bytes, bytes], control: dict[bytes, bytes], token: str
) -> tuple[pb.EntityBatchRequest | None, bytes | None]:
    """The work item's request if ``token`` is still the entity's outstanding one (else None),
    and the stored state payload (a blob reference is resolved by the caller)."""
    record = EntityRecord.from_fields(main, control)
    if not record.remote or str(record.remote[0]) != token:
        return None, None  # answered already, or the entity moved on
    sent = int(record.remote[1])
    request = pb.EntityBatchRequest(instanceId=target)
    for index, op in enumerate(list(record.remote[2])[:sent]):
        operation = pb.OperationRequest(
            operation=str(op.get("op", "")),
            requestId=str(op.get("rid") or op.get("id") or uuid.uuid4().hex),
        )
        # the engine's span of this operation (emitted by the owner with the reply): the SDK's nest in it
        key = tracing.remote_operation_key(token, index)
        traceparent = tracing.work_traceparent(op.get("traceparent"), *key)
        if traceparent is not None:
            operation.traceContext.traceParent = traceparent
        text = convert.json_from_packed(op.get("input"))
        if text is not None:
            operation.input.value = text
        request.operations.append(operation)
    return request, record.state


def set_state(request: pb.EntityBatchRequest, state: bytes | None) -> None:
    if state is not None:
        text = convert.to_json(decode(state))
        if text is not None:
            request.entityState.value = text


def batch_reply(target: str, token: str, result: pb.EntityBatchResult, now_ms: int) -> dict[str, Any]:
    """An SDK worker's ``EntityBatchResult`` as the owner's ``remote_result`` message."""
    msg: dict[str, Any] = {"kind": MSG_REMOTE_RESULT, "target": target, "token": token}
    if result.HasField("failureDetails") and (
        result.failureDetails.errorMessage or result.failureDetails.errorType
    ):
        msg["failure"] = convert.failure_from_pb(result.failureDetails)
        return msg
    results: list[dict[str, Any]] = []
    for outcome in result.results:
        if outcome.HasField("failure"):
            results.append({"failure": convert.failure_from_pb(outcome.failure.failureDetails)})
        else:
            text = convert.optional_text(outcome.success, "result")
            results.append({"result": convert.packed_from_json(text)})
    msg["results"] = results
    msg["state"] = convert.packed_from_json(convert.optional_text(result, "entityState"), "entity state")
    try:
        msg["actions"] = [_action(a, now_ms) for a in result.actions]
    except ValueError as exc:  # a malformed message fails the whole batch, as an exception would
        return {
            "kind": MSG_REMOTE_RESULT,
            "target": target,
            "token": token,
            "failure": FailureDetails(str(exc), type(exc).__name__).to_record(),
        }
    return msg


def _action(action: pb.OperationAction, now_ms: int) -> dict[str, Any]:
    which = action.WhichOneof("operationActionType")
    if which == "sendSignal":
        signal = action.sendSignal
        msg: dict[str, Any] = {
            "kind": ev.MSG_SIGNAL,
            "target": convert.entity_target(signal.instanceId),
            "op": signal.name,
            "input": convert.packed_from_json(convert.optional_text(signal, "input")),
        }
        if signal.HasField("scheduledTime"):
            msg["at"] = signal.scheduledTime.ToMilliseconds()
            msg["id"] = uuid.uuid4().hex
        return msg
    if which == "startNewOrchestration":
        start = action.startNewOrchestration
        iid = start.instanceId or uuid.uuid4().hex
        if iid.startswith("@"):
            raise ValueError(f"invalid instance id {iid!r}: ids starting with '@' are entity ids")
        return {
            "kind": ev.MSG_START,
            "target": iid,
            "name": start.name,
            "input": convert.packed_from_json(convert.optional_text(start, "input")),
            "exec": uuid.uuid4().hex,
            "created": now_ms,
        }
    raise ValueError(f"durable sidecar does not support the entity action {which!r}")
