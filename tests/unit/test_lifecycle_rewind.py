"""Rewinding a failed execution, in the pure core: which failures are forgotten, what is sent
again, and when a rewind is refused (hand-built histories, no Redis)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from durable import EntityId, FailureDetails, RetryPolicy, TaskFailedError, when_all
from durable._core import events as ev
from durable._core.context import OrchestrationContext
from durable._core.executor import OrchestrationExecutor
from durable._core.lifecycle import RewindError, open_children, open_timers, plan_rewind, run_rewind
from durable._core.model import OrchestrationStatus
from durable._core.registry import name_of
from durable._core.serialization import decode, encode

T0 = 1_700_000_000_000
Status = OrchestrationStatus


def executor_for(orchestrator: Any) -> Any:
    return lambda: OrchestrationExecutor("i-1", {"orch": orchestrator}.get, name_of, OrchestrationContext)


def record(orchestrator: Any, *steps: list[ev.Event]) -> list[ev.Event]:
    """The history a partition records when it runs ``orchestrator`` through ``steps``."""
    executor = executor_for(orchestrator)()
    history: list[ev.Event] = []
    start = {"k": ev.EXECUTION_STARTED, "name": "orch", "input": encode(None), "exec": "x", "parent": None}
    for i, events in enumerate([[start], *steps]):
        result = executor.execute([{"k": ev.ORCHESTRATOR_STARTED, "ts": T0 + i * 1000}, *events])
        history.extend(result.new_events)
    return history


def done(tid: int, value: Any) -> ev.Event:
    return {"k": ev.TASK_COMPLETED, "tid": tid, "result": encode(value)}


def failed(tid: int, message: str = "boom", kind: str = ev.TASK_FAILED) -> ev.Event:
    return {"k": kind, "tid": tid, "failure": FailureDetails(message, "ConnectionError").to_record()}


def kinds(history: list[ev.Event]) -> list[str]:
    return [e["k"] for e in history]


def chain(ctx: Any, _: Any) -> Any:
    a = yield ctx.call_activity("a")
    b = yield ctx.call_activity("b")
    return [a, b]


def test_a_failed_activity_is_forgotten_and_sent_again() -> None:
    history = record(chain, [done(0, "A")], [failed(1)])
    assert kinds(history)[-2:] == [ev.TASK_FAILED, ev.EXECUTION_COMPLETED]
    plan = plan_rewind(history, executor_for(chain))
    assert ev.TASK_FAILED not in kinds(plan.history) and ev.EXECUTION_COMPLETED not in kinds(plan.history)
    assert [e["eid"] for e in plan.history] == list(range(len(plan.history)))
    assert plan.forgotten == 1
    assert [(e["k"], e["tid"], e["name"]) for e in plan.redo] == [(ev.TASK_SCHEDULED, 1, "b")]

    step = run_rewind(plan, T0 + 9_000, "fixed")
    assert step.status == Status.RUNNING
    assert kinds(step.new_events) == [ev.ORCHESTRATOR_STARTED, ev.EXECUTION_REWOUND]
    assert step.new_events[1]["reason"] == "fixed" and step.new_events[0]["eid"] == len(plan.history)
    assert [(a["k"], a["tid"]) for a in step.actions] == [(ev.TASK_SCHEDULED, 1)]
    after = plan.executor.execute([{"k": ev.ORCHESTRATOR_STARTED, "ts": T0 + 10_000}, done(1, "B")])
    assert after.status == Status.COMPLETED and decode(after.output) == ["A", "B"]


def test_a_retried_call_keeps_only_its_first_attempt() -> None:
    policy = RetryPolicy(first_retry_interval=dt.timedelta(seconds=1), max_number_of_attempts=2)

    def orch(ctx: Any, _: Any) -> Any:
        return (yield ctx.call_activity("flaky", retry_policy=policy))

    history = record(orch, [failed(0)], [{"k": ev.TIMER_FIRED, "tid": 1, "fire_at": T0 + 2_000}], [failed(2)])
    assert kinds(history).count(ev.TASK_SCHEDULED) == 2
    plan = plan_rewind(history, executor_for(orch))
    assert kinds(plan.history).count(ev.TASK_SCHEDULED) == 1
    assert ev.TIMER_CREATED not in kinds(plan.history) and ev.TASK_FAILED not in kinds(plan.history)
    assert [(e["tid"], e.get("attempt")) for e in plan.redo] == [(0, None)]  # attempt 1, same call


def test_a_failure_the_code_handled_is_kept() -> None:
    def orch(ctx: Any, _: Any) -> Any:
        try:
            yield ctx.call_activity("reserve")
        except TaskFailedError:
            yield ctx.call_activity("compensate")  # fails too: that one ended the orchestration
        return "ok"

    history = record(orch, [failed(0, "no stock")], [failed(1, "compensation failed")])
    plan = plan_rewind(history, executor_for(orch))
    assert plan.forgotten == 1
    assert [e["failure"]["message"] for e in plan.history if e["k"] == ev.TASK_FAILED] == ["no stock"]
    assert [e["name"] for e in plan.redo] == ["compensate"]


def test_unanswered_calls_of_a_fan_out_are_sent_again_too() -> None:
    def orch(ctx: Any, _: Any) -> Any:
        return (yield when_all([ctx.call_activity("part", input=i) for i in range(3)]))

    # part 1 failed (and failed the fan-out); part 2's result came after that and was dropped
    history = record(orch, [done(0, "p0"), failed(1)])
    plan = plan_rewind(history, executor_for(orch))
    assert sorted(e["tid"] for e in plan.redo) == [1, 2]
    after = run_rewind(plan, T0 + 5_000, None)
    assert sorted(a["tid"] for a in after.actions) == [1, 2]


def test_a_failed_sub_orchestration_is_redone_and_open_timers_are_recreated() -> None:
    def orch(ctx: Any, _: Any) -> Any:
        timer = ctx.create_timer(dt.timedelta(hours=1))
        child = ctx.call_sub_orchestrator("child", instance_id="kid")
        yield when_all([child])
        yield timer

    history = record(orch, [failed(1, "child failed", ev.SUB_FAILED)])
    assert open_children(history) == [] and open_timers(history) == [0]
    plan = plan_rewind(history, executor_for(orch))
    assert sorted((e["k"], e["tid"]) for e in plan.redo) == [(ev.SUB_CREATED, 1), (ev.TIMER_CREATED, 0)]
    assert open_children(plan.history) == ["kid"]


def test_an_orchestration_that_fails_by_itself_fails_again() -> None:
    def orch(ctx: Any, _: Any) -> Any:
        yield ctx.call_activity("a")
        raise RuntimeError("a bug")

    history = record(orch, [done(0, "A")])
    plan = plan_rewind(history, executor_for(orch))
    assert plan.forgotten == 0 and plan.redo == []
    step = run_rewind(plan, T0 + 5_000, None)
    assert step.status == Status.FAILED and step.actions == []
    assert kinds(step.new_events) == [ev.ORCHESTRATOR_STARTED, ev.EXECUTION_REWOUND, ev.EXECUTION_COMPLETED]


def test_code_that_no_longer_matches_its_history_cannot_be_rewound() -> None:
    history = record(chain, [done(0, "A")], [failed(1)])

    def changed(ctx: Any, _: Any) -> Any:
        yield ctx.call_activity("something else")

    with pytest.raises(RewindError, match="does not replay"):
        plan_rewind(history, executor_for(changed))


def test_a_failure_inside_an_entity_critical_section_cannot_be_rewound() -> None:
    def orch(ctx: Any, _: Any) -> Any:
        with (yield ctx.lock_entities(EntityId("account", "a"))):
            yield ctx.call_activity("charge")

    first = record(orch)
    rid = next(e["rid"] for e in first if e["k"] == ev.ENTITY_LOCK_REQUESTED)
    history = record(orch, [{"k": ev.ENTITY_RESPONDED, "rid": rid}], [failed(1)])
    assert kinds(history)[-2:] == [ev.ENTITY_UNLOCKED, ev.EXECUTION_COMPLETED]  # released as it failed
    with pytest.raises(RewindError, match="entity critical section"):
        plan_rewind(history, executor_for(orch))
