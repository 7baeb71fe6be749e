"""Steps run for a partition owner by a worker that has the code: the records that travel.

A partition owner that lacks an instance's code (an orchestration version, an entity) sends a
*work item* to the work stream of that capability and moves on. A worker that has the code runs
the step (the replay executor or the entity batch executor, exactly as the owner would) and sends
the outcome back to the owner's inbox as a ``step_result`` message; the owner commits it with
the usual fencing, as if it had run the step itself. Pure: the (de)serialization of what travels.

Work item (msgpack, field ``m`` of a work stream entry)::

    {"wid", "part", "target", "kind": "o" | "e", "ts",
     "name", "ver",             # orchestrations: the version (None: any; pinned by the executor)
     "events"                   # orchestrations: the step's new events (after OrchestratorStarted)
     "msgs"}                    # entities: the messages to apply, in order

Result message (inbox)::

    {"kind": "step_result", "target", "wid",
     "missing": bool,           # no worker had the code within the grace period: the item comes back
     "item": <work item>,       # ... with it
     "ver", "result"            # orchestrations: the pinned version and the StepResult
     "record", "batch"}         # entities: the entity's record fields and the batch result
"""

from __future__ import annotations

from typing import Any

from . import events as ev
from .entities import EntityRecord
from .entity_batch import BatchResult
from .executor import StepResult
from .model import FailureDetails, OrchestrationStatus


def step_result_record(result: StepResult) -> dict[str, Any]:
    """A :class:`StepResult` as plain data."""
    can = result.continue_as_new
    return {
        "events": result.new_events,
        "actions": [a.get("eid") for a in result.actions],
        "status": result.status.value,
        "output": result.output,
        "failure": result.failure.to_record() if result.failure else None,
        "custom": result.custom_status,
        "custom_set": result.custom_status_set,
        "can": None if can is None else [can[0], [list(c) for c in can[1]]],
        "can_ver": result.continue_version,
        "nondet": result.nondeterminism,
    }


def step_result_from(rec: dict[str, Any]) -> StepResult:
    """Inverse of :func:`step_result_record` (actions are the very events they were)."""
    events: list[ev.Event] = list(rec.get("events") or [])
    by_eid = {e.get("eid"): e for e in events}
    can = rec.get("can")
    return StepResult(
        new_events=events,
        actions=[by_eid[eid] for eid in rec.get("actions") or [] if eid in by_eid],
        status=OrchestrationStatus(rec["status"]),
        output=rec.get("output"),
        failure=FailureDetails.from_record(rec.get("failure")),
        custom_status=rec.get("custom"),
        custom_status_set=bool(rec.get("custom_set")),
        continue_as_new=None if can is None else (can[0], [(str(n), d) for n, d in can[1]]),
        continue_version=rec.get("can_ver"),
        nondeterminism=bool(rec.get("nondet")),
    )


def entity_outcome_record(record: EntityRecord, result: BatchResult) -> tuple[dict[str, Any], dict[str, Any]]:
    """An entity batch's outcome as plain data: (the record's state, the batch result)."""
    state = {"s": record.state, "l": record.lock, "q": record.queue, "r": [list(r) for r in record.recent]}
    batch = {
        "out": result.out,
        "timers": [list(t) for t in result.timers],
        "dead": [list(d) for d in result.dead],
        "completed": result.completed,
        "failed": result.failed,
        "duplicates": result.duplicates,
        "deleted": result.deleted,
        "signal_failures": [[op, d.to_record()] for op, d in result.signal_failures],
    }
    return state, batch


def apply_entity_outcome(record: EntityRecord, state: dict[str, Any], batch: dict[str, Any]) -> BatchResult:
    """Set ``record`` to the state a remote batch left (versions untouched); returns its result."""
    record.state = state.get("s")
    record.lock = list(state["l"]) if state.get("l") else None
    record.queue = list(state.get("q") or [])
    record.recent = [(int(ts), bytes(fp)) for ts, fp in state.get("r") or []]
    return BatchResult(
        out=list(batch.get("out") or []),
        timers=[(int(at), str(member), msg) for at, member, msg in batch.get("timers") or []],
        dead=[(msg, str(reason), str(kind)) for msg, reason, kind in batch.get("dead") or []],
        completed=int(batch.get("completed") or 0),
        failed=int(batch.get("failed") or 0),
        duplicates=int(batch.get("duplicates") or 0),
        deleted=bool(batch.get("deleted")),
        signal_failures=[
            (str(op), FailureDetails.from_record(d) or FailureDetails("failed", "Error"))
            for op, d in batch.get("signal_failures") or []
        ],
    )
