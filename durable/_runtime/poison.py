"""Isolation of inbox messages that keep crashing a partition step (poison messages).

The partition loop counts failed attempts at its cursor; past the limit it takes messages one at
a time, and the one that still fails alone comes here. :func:`plan_poison` plans its removal: the
dead-letter entry, and a failure for the orchestration it was addressed to (whose parent is told).
The loop commits the plan and applies the outcome to its own state; nothing here touches it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .._core import events as ev
from .._core.model import FailureDetails, OrchestrationStatus
from .._core.serialization import pack_record, unpack_record
from .._store.store import RecordWrite, Store, StreamEntry
from .inbox import MalformedMessage, dlq_fields, parse_entry
from .instances import notify_end, reply_to_parent
from .step import StepState

log = logging.getLogger("durable.partition")

_ACTIVE = (OrchestrationStatus.PENDING, OrchestrationStatus.RUNNING, OrchestrationStatus.SUSPENDED)


@dataclass
class PoisonOutcome:
    """What the partition loop applies once the plan is committed."""

    entry_id: str
    #: the orchestration the message was for (its cached executor must go), if any
    target: str | None
    reason: str


async def plan_poison(
    store: Store, entry: StreamEntry, attempts: int, isolated: int, step: StepState
) -> PoisonOutcome:
    """Plan, into ``step``, the dead-lettering of ``entry`` and the failure of its instance.

    ``attempts`` is how often the step failed at this entry, ``isolated`` how many of those
    attempts took the entry alone."""
    eid, fields = entry
    reason = (
        f"message {eid} made the partition step fail {attempts} times "
        f"(the last {isolated} with the message alone); dead-lettered"
    )
    log.error("partition %d: %s", step.index, reason)
    target: str | None
    try:
        target = parse_entry(fields)["target"]
    except (MalformedMessage, ValueError, TypeError, KeyError):  # it failed every step: it may be anything
        target = None
    if target and not target.startswith("@"):
        await _fail_instance(store, target, reason, step)
    step.plan.dead_letters.append(dlq_fields(eid, fields, reason))
    step.dead_lettered.append("poison")
    return PoisonOutcome(eid, target, reason)


async def _fail_instance(store: Store, iid: str, reason: str, step: StepState) -> None:
    version, status, length, parent, notify = await store.instance_brief(step.index, iid)
    if status not in _ACTIVE:
        return
    failure = FailureDetails(reason, "PoisonMessageError")
    failed = OrchestrationStatus.FAILED.value
    rec = RecordWrite(step.keys.instance(iid), step.keys.history(iid), version, query_id=iid)
    rec.fields.update(status=failed, updated=step.now, failure=pack_record(failure.to_record()), output=b"")
    rec.fields.update(wi="", pk=b"")  # a step of it running elsewhere is cancelled
    step.plan.undelegated.append(iid)
    completed = {
        "k": ev.EXECUTION_COMPLETED,
        "eid": length,
        "ts": step.now,
        "status": failed,
        "result": None,
        "failure": failure.to_record(),
    }
    rec.events = [pack_record(completed)]
    rec.channel, rec.message = store.keys.status_channel(iid), failed
    step.plan.records.append(rec)
    step.plan.finished[iid] = step.now  # retention counts from here
    if parent:
        reply_to_parent(step, unpack_record(parent), None, failure)
    if notify:
        notify_end(step, iid, unpack_record(notify), OrchestrationStatus.FAILED)
