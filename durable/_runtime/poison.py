"""Isolation of inbox messages that keep crashing a partition step (poison messages)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .._core import events as ev
from .._core.model import FailureDetails
from .._core.serialization import pack_record, unpack_record
from .._store.store import CommitPlan, RecordWrite
from .inbox import MalformedMessage
from .orchestration_step import StepState

if TYPE_CHECKING:
    from .partition import PartitionRunner

log = logging.getLogger("durable.partition")


async def dead_letter_poison(runner: PartitionRunner, attempts: int) -> None:
    """Move the message at the runner's cursor to the dead-letter stream and fail its instance."""
    from .partition import parse_entry

    rt, index = runner.rt, runner.index
    entries = await rt.store.read_inbox(index, runner.cursor, 1, None)
    if not entries:
        return
    eid, fields = entries[0]
    reason = (
        f"message {eid} made the partition step fail {attempts} times "
        f"(the last {attempts - rt.config.max_recoveries} with the message alone); dead-lettered"
    )
    log.error("partition %d: %s", index, reason)
    now = rt.now_ms()
    step = StepState(now=now, plan=CommitPlan(prev_cursor=runner.cursor, new_cursor=eid))
    step.plan.state["recov"] = ""
    target: str | None = None
    try:
        target = parse_entry(fields)["target"]
    except (MalformedMessage, Exception):
        target = None
    if target and not target.startswith("@"):
        await _fail_instance(runner, target, reason, step)
    dlq: dict[str, bytes | str] = {k.decode(errors="replace"): v for k, v in fields.items()}
    dlq.update(dlq_reason=reason, dlq_source_id=eid)
    await rt.store.dead_letter(index, dlq)
    forward = await rt.store.commit(index, runner.lease, step.plan)
    rt.metrics.dead_lettered("poison")
    runner.cursor = eid
    runner.cache.pop(target or "", None)
    runner.isolate_left = max(runner.isolate_left - 1, 0)
    runner.attempts = 0
    if forward:
        await rt.store.forward(index, forward)


async def _fail_instance(runner: PartitionRunner, iid: str, reason: str, step: StepState) -> None:
    version, status, length, parent = await runner.rt.store.instance_brief(runner.index, iid)
    if status not in ("PENDING", "RUNNING", "SUSPENDED"):
        return
    failure = FailureDetails(reason, "PoisonMessageError")
    keys = runner.keys
    rec = RecordWrite(keys.instance(iid), keys.history(iid), version)
    rec.fields.update(status="FAILED", updated=step.now, failure=pack_record(failure.to_record()), output=b"")
    rec.events = [
        pack_record(
            {
                "k": ev.EXECUTION_COMPLETED,
                "eid": length,
                "ts": step.now,
                "status": "FAILED",
                "result": None,
                "failure": failure.to_record(),
            }
        )
    ]
    rec.channel, rec.message = runner.rt.store.keys.status_channel(iid), "FAILED"
    step.plan.records.append(rec)
    if parent:
        info: dict[str, Any] = unpack_record(parent)
        runner._reply_to_parent(info, None, failure, step)
