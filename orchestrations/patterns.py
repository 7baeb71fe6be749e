"""The Durable Task application patterns, as a runnable sample application.

=====================  ====================================================================
Pattern                Orchestrator
=====================  ====================================================================
Function chaining      :func:`function_chaining` -- four activities in sequence (an order
                       is validated, reserved, charged and shipped)
Fan-out/fan-in         :func:`fan_out_fan_in` -- N activities in parallel, results aggregated
Human interaction      :func:`human_interaction` -- waits for an ``approval`` event, or a
                       durable timer, whichever comes first
Monitor                :func:`monitor` -- polls a job every interval, continuing as new
                       between polls, until the job is done or a maximum number of checks
Sub-orchestrations     :func:`sub_orchestrations` -- runs :func:`function_chaining` as a
                       child orchestration per order, in parallel
Retries                :func:`retry_with_backoff` -- an activity that fails its first
                       attempts, called with a :class:`~durable.RetryPolicy`
=====================  ====================================================================

Every duration is part of the orchestration's input, so tests and demos run in seconds.
Orchestrators only use the context (no I/O, randomness or wall-clock reads), so they replay
deterministically; activities are where side effects belong.

Serve them with ``durable worker orchestrations.patterns:worker``, or run them all with
``durable demo``. Tests register them on their own worker with :func:`register`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from collections.abc import Callable, Generator
from typing import Any

from durable import (
    ActivityContext,
    OrchestrationContext,
    RetryPolicy,
    Task,
    Worker,
    when_all,
    when_any,
)

#: What a generator orchestrator is: it yields durable tasks and returns its output.
Orchestration = Generator[Task[Any], Any, Any]

#: Name of the external event :func:`human_interaction` waits for.
APPROVAL_EVENT = "approval"


def _digest(*parts: object) -> str:
    """A short stable code derived from ``parts`` (stands in for ids issued by real systems)."""
    text = "/".join(str(p) for p in parts)
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest().upper()


def _seconds(value: Any, default: float) -> dt.timedelta:
    return dt.timedelta(seconds=float(default if value is None else value))


# ------------------------------------------------------------------------------------------------
# Function chaining


def sample_order(number: int) -> dict[str, Any]:
    """A deterministic sample order, used as input by the demo and the tests."""
    return {
        "id": f"A-{1000 + number}",
        "customer": f"customer-{number % 7}",
        "items": [
            {"sku": f"SKU-{number % 5}", "qty": 1 + number % 3, "price": 9.5},
            {"sku": "SKU-GIFT", "qty": 1, "price": 2.25},
        ],
    }


def validate_order(ctx: ActivityContext, order: dict[str, Any]) -> dict[str, Any]:
    """Check the order and compute its total."""
    items = order.get("items") or []
    if not items:
        raise ValueError(f"order {order.get('id')!r} has no items")
    total = round(sum(int(item["qty"]) * float(item["price"]) for item in items), 2)
    return {**order, "total": total, "status": "validated"}


def reserve_inventory(ctx: ActivityContext, order: dict[str, Any]) -> dict[str, Any]:
    """Reserve stock for every line of the order."""
    return {**order, "reservation": f"R-{_digest(order['id'], 'reserve')}", "status": "reserved"}


def charge_payment(ctx: ActivityContext, order: dict[str, Any]) -> dict[str, Any]:
    """Charge the customer (the idempotency key makes a redelivered charge harmless)."""
    return {**order, "payment": f"P-{_digest(ctx.idempotency_key)}", "status": "charged"}


def ship_order(ctx: ActivityContext, order: dict[str, Any]) -> dict[str, Any]:
    """Hand the order to the carrier."""
    return {**order, "tracking": f"TRK-{_digest(order['id'], 'ship')}", "status": "shipped"}


CHAIN = (validate_order, reserve_inventory, charge_payment, ship_order)


def function_chaining(ctx: OrchestrationContext, order: dict[str, Any] | None) -> Orchestration:
    """Function chaining: each activity's output is the next activity's input."""
    current: dict[str, Any] = order if order is not None else sample_order(1)
    for step, activity in enumerate(CHAIN, start=1):
        current = yield ctx.call_activity(activity, input=current)
        ctx.set_custom_status(f"step {step}/{len(CHAIN)}: {current['status']}")
    return {
        "order": current["id"],
        "total": current["total"],
        "tracking": current["tracking"],
        "status": current["status"],
    }


# ------------------------------------------------------------------------------------------------
# Fan-out/fan-in


def list_work_items(ctx: ActivityContext, count: int) -> list[int]:
    """The work to spread out (think: the files of a directory)."""
    return list(range(1, int(count) + 1))


def process_item(ctx: ActivityContext, item: int) -> int:
    """One unit of parallel work (think: the size of one file)."""
    return int(item) * int(item)


def fan_out_fan_in(ctx: OrchestrationContext, spec: dict[str, Any] | int | None) -> Orchestration:
    """Fan-out/fan-in: run one activity per work item in parallel, then aggregate the results.

    Input: ``{"count": N}`` (or just ``N``); output ``{"items": N, "total": sum of squares}``.
    """
    count = spec if isinstance(spec, int) else int((spec or {}).get("count", 10))
    items = yield ctx.call_activity(list_work_items, input=count)
    ctx.set_custom_status(f"fanned out {len(items)} activities")
    results = yield when_all([ctx.call_activity(process_item, input=item) for item in items])
    ctx.set_custom_status(f"aggregated {len(results)} results")
    return {"items": len(results), "total": sum(results)}


# ------------------------------------------------------------------------------------------------
# Human interaction


def request_approval(ctx: ActivityContext, request: dict[str, Any]) -> str:
    """Notify the approver (a real app would send an e-mail or a chat message)."""
    return f"approval of {request.get('subject')!r} requested from {request.get('approver')}"


def record_decision(ctx: ActivityContext, decision: dict[str, Any]) -> str:
    """Record the outcome (a real app would update a ticket or a database)."""
    return f"{decision.get('subject')}: {decision.get('outcome')}"


def _is_approved(data: Any) -> bool:
    if isinstance(data, dict):
        return bool(data.get("approved", True))
    if isinstance(data, str):
        return data.strip().lower() in ("approve", "approved", "yes", "ok")
    return data is None or bool(data)


def human_interaction(ctx: OrchestrationContext, request: dict[str, Any] | None) -> Orchestration:
    """Human interaction: wait for an ``approval`` event, but only until a durable timer fires.

    Input: ``{"subject": ..., "approver": ..., "timeout_s": seconds}``. The event's data may
    be ``{"approved": bool, "by": name}``, a bool or a word; returns ``"approved"``,
    ``"rejected"`` or ``"timed out"``.
    """
    request = request or {}
    subject = request.get("subject", "expense report")
    yield ctx.call_activity(
        request_approval, input={"subject": subject, "approver": request.get("approver", "manager")}
    )
    ctx.set_custom_status("waiting for approval")
    approval = ctx.wait_for_external_event(APPROVAL_EVENT)
    timeout = ctx.create_timer(_seconds(request.get("timeout_s"), 24 * 3600))
    winner = yield when_any([approval, timeout])
    if winner is approval:
        outcome = "approved" if _is_approved(approval.get_result()) else "rejected"
    else:
        outcome = "timed out"
    ctx.set_custom_status(outcome)
    yield ctx.call_activity(record_decision, input={"subject": subject, "outcome": outcome})
    return outcome


# ------------------------------------------------------------------------------------------------
# Monitor


def check_job_status(ctx: ActivityContext, probe: dict[str, Any]) -> str:
    """Ask an external system how a job is doing.

    Simulated: the job reports ``"done"`` from its ``ready_after``-th check on.
    """
    return "done" if int(probe["check"]) >= int(probe["ready_after"]) else "running"


def monitor(ctx: OrchestrationContext, job: dict[str, Any]) -> Orchestration:
    """Monitor: poll a job every ``interval_s`` until it is done, at most ``max_checks`` times.

    Every poll is one execution: between polls the orchestration sleeps on a durable timer and
    then continues as new with the check counter incremented, so its history stays small no
    matter how long it monitors. The custom status shows the latest check.

    Input: ``{"job": name, "interval_s": s, "max_checks": n, "ready_after": k, "check": i}``.
    """
    name = str(job.get("job", "job"))
    check = int(job.get("check", 1))
    max_checks = int(job.get("max_checks", 10))
    ctx.set_custom_status({"job": name, "check": check, "status": "checking"})
    status = yield ctx.call_activity(
        check_job_status, input={"job": name, "check": check, "ready_after": job.get("ready_after", 3)}
    )
    ctx.set_custom_status({"job": name, "check": check, "status": status})
    if status == "done":
        return {"job": name, "status": "done", "checks": check}
    if check >= max_checks:
        return {"job": name, "status": "gave up", "checks": check}
    yield ctx.create_timer(_seconds(job.get("interval_s"), 60))
    ctx.continue_as_new({**job, "check": check + 1})
    return None


# ------------------------------------------------------------------------------------------------
# Sub-orchestrations


def sub_orchestrations(ctx: OrchestrationContext, batch: dict[str, Any] | None) -> Orchestration:
    """Sub-orchestrations: process every order of a batch as a child :func:`function_chaining`.

    Input: ``{"orders": [order, ...]}`` or ``{"count": n}`` (sample orders). The children run
    in parallel with the instance ids ``<parent id>:<order id>``.
    """
    batch = batch or {}
    orders: list[dict[str, Any]] = batch.get("orders") or [
        sample_order(i) for i in range(1, int(batch.get("count", 3)) + 1)
    ]
    children = [
        ctx.call_sub_orchestrator(function_chaining, input=order, instance_id=child_instance_id(ctx, order))
        for order in orders
    ]
    ctx.set_custom_status(f"{len(children)} child orchestrations started")
    results = yield when_all(children)
    return {
        "orders": len(results),
        "revenue": round(sum(float(r["total"]) for r in results), 2),
        "tracking": [r["tracking"] for r in results],
    }


def child_instance_id(ctx_or_parent_id: OrchestrationContext | str, order: dict[str, Any]) -> str:
    """The instance id :func:`sub_orchestrations` gives the child processing ``order``."""
    parent = ctx_or_parent_id if isinstance(ctx_or_parent_id, str) else ctx_or_parent_id.instance_id
    return f"{parent}:{order['id']}"


# ------------------------------------------------------------------------------------------------
# Retries


class TransientError(Exception):
    """A failure worth retrying (a timeout, a throttled call, ...)."""


_attempts: dict[str, int] = {}
_attempts_lock = threading.Lock()


def flaky_call(ctx: ActivityContext, request: dict[str, Any]) -> dict[str, Any]:
    """A call to an unreliable service: fails its first ``fail_times`` attempts.

    The attempts are counted in this process, per orchestration instance and ``key`` (enough
    for a sample; a real service keeps its own state).
    """
    key = f"{ctx.orchestration_id}/{request.get('key', 'call')}"
    fail_times = int(request.get("fail_times", 2))
    with _attempts_lock:
        attempt = _attempts.get(key, 0) + 1
        _attempts[key] = attempt
    if attempt <= fail_times:
        raise TransientError(f"simulated transient failure on attempt {attempt}")
    with _attempts_lock:
        _attempts.pop(key, None)
    return {"attempts": attempt, "result": f"succeeded on attempt {attempt}"}


def retry_with_backoff(ctx: OrchestrationContext, spec: dict[str, Any] | None) -> Orchestration:
    """Retries: call :func:`flaky_call` with an exponential-backoff :class:`RetryPolicy`.

    Input: ``{"fail_times": f, "max_attempts": n, "first_retry_s": s}``. With ``f < n`` the
    call succeeds on attempt ``f + 1``; otherwise the orchestration fails with the activity's
    last failure in its failure details. The waits between attempts are durable timers.
    """
    spec = spec or {}
    policy = RetryPolicy(
        first_retry_interval=_seconds(spec.get("first_retry_s"), 1.0),
        max_number_of_attempts=int(spec.get("max_attempts", 4)),
        backoff_coefficient=2.0,
        max_retry_interval=_seconds(spec.get("max_retry_s"), 30.0),
    )
    request = {"key": spec.get("key", "call"), "fail_times": spec.get("fail_times", 2)}
    result = yield ctx.call_activity(flaky_call, input=request, retry_policy=policy)
    return result


# ------------------------------------------------------------------------------------------------
# Registration

ORCHESTRATORS: tuple[Callable[..., Any], ...] = (
    function_chaining,
    fan_out_fan_in,
    human_interaction,
    monitor,
    sub_orchestrations,
    retry_with_backoff,
)

ACTIVITIES: tuple[Callable[..., Any], ...] = (
    *CHAIN,
    list_work_items,
    process_item,
    request_approval,
    record_decision,
    check_job_status,
    flaky_call,
)


def register(target: Worker) -> Worker:
    """Register every orchestrator and activity of this module on ``target``; returns it."""
    for orchestrator in ORCHESTRATORS:
        target.add_orchestrator(orchestrator)
    for activity in ACTIVITIES:
        target.add_activity(activity)
    return target


#: A worker with every pattern registered, for ``durable worker orchestrations.patterns:worker``.
#: Creating it connects to nothing: its hub comes from ``$DURABLE_HUB`` (else ``default``) and
#: its Redis (``$DURABLE_REDIS_URL``, else an embedded server) is resolved when it starts.
worker = register(Worker())
