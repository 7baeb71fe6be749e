"""durable.testing: the real engine on an in-process Redis (fakeredis with Lua), with a clock the
test controls. No redis-server is involved."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

from _poll import wait_until

from durable import EntityId, OrchestrationStatus, TaskFailedError, Worker, WorkerConfig, when_all, when_any
from durable.testing import TestEnvironment, replay_check

DAY = dt.timedelta(days=1)


def make_worker() -> Worker:
    # the environment ignores the worker's Redis and hub: this URL is never dialled
    worker = Worker("redis://127.0.0.1:1/0", hub="ignored", config=WorkerConfig(history_warn_events=50))

    @worker.activity
    def double(ctx: Any, n: int) -> int:
        return 2 * n

    @worker.entity
    def counter(ctx: Any, amount: int) -> Any:
        if ctx.operation == "add":
            ctx.set_state(ctx.get_state(0) + amount)
        return ctx.get_state(0)

    @worker.orchestrator
    def child(ctx: Any, n: int) -> Any:
        return (yield ctx.call_activity(double, input=n))

    @worker.orchestrator
    def month_long(ctx: Any, n: int) -> Any:
        began = ctx.current_utc_datetime
        values = yield when_all([ctx.call_activity(double, input=i) for i in range(n)])
        yield ctx.create_timer(30 * DAY)
        total = yield ctx.call_sub_orchestrator(child, input=sum(values))
        counted = yield ctx.call_entity(EntityId("counter", "c"), "add", input=total)
        return {"total": total, "counted": counted, "days": (ctx.current_utc_datetime - began).days}

    @worker.orchestrator
    def approval(ctx: Any, _: Any) -> Any:
        event = ctx.wait_for_external_event("approve")
        timeout = ctx.create_timer(DAY)
        winner = yield when_any([event, timeout])
        return "approved" if winner is event else "timed out"

    @worker.orchestrator
    def hourly(ctx: Any, _: Any) -> Any:
        yield ctx.create_timer(dt.timedelta(hours=1))
        return ctx.current_utc_datetime

    return worker


def test_a_30_day_timer_finishes_at_once_with_time_skipping() -> None:
    with TestEnvironment(make_worker(), time_skipping=True) as env:
        before = env.now()
        iid = env.client.schedule_new_orchestration("month_long", input=4)
        state = env.client.wait_for_orchestration_completion(iid, timeout=10)
        assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
        assert state.output == {"total": 24, "counted": 24, "days": 30}
        assert env.now() - before >= 30 * DAY
        assert env.client.get_entity("@counter@c").state == 24


def test_skipping_never_overtakes_an_event_raised_before_the_test_waits() -> None:
    with TestEnvironment(make_worker(), time_skipping=True) as env:
        approved = env.client.schedule_new_orchestration("approval")
        env.client.wait_for_orchestration_start(approved, timeout=10)
        env.client.raise_orchestration_event(approved, "approve", data=True)
        assert env.client.wait_for_orchestration_completion(approved, timeout=10).output == "approved"
        forgotten = env.client.schedule_new_orchestration("approval")
        assert env.client.wait_for_orchestration_completion(forgotten, timeout=10).output == "timed out"


def test_advance_fires_the_timers_due_in_that_span() -> None:
    with TestEnvironment(make_worker()) as env:
        iid = env.client.schedule_new_orchestration("hourly")
        started = env.client.wait_for_orchestration_start(iid, timeout=10)
        assert started.runtime_status == OrchestrationStatus.RUNNING
        env.advance(dt.timedelta(minutes=61))
        state = env.client.wait_for_orchestration_completion(iid, timeout=10)
        assert state.runtime_status == OrchestrationStatus.COMPLETED
        assert state.output - started.created_at >= dt.timedelta(hours=1)


def lucky_worker() -> Worker:
    worker = Worker()

    @worker.activity
    def echo(ctx: Any, value: Any) -> Any:
        return value

    @worker.orchestrator
    def lucky(ctx: Any, _: Any) -> Any:
        n = random.randint(1, 10**12)  # non-deterministic: differs on every replay
        first = yield ctx.call_activity(echo, input=n)
        return (yield ctx.call_activity(echo, input=first))

    return worker


def test_always_replay_catches_an_orchestrator_that_uses_random() -> None:
    with TestEnvironment(lucky_worker()) as env:  # the replay cache hides it ...
        iid = env.client.schedule_new_orchestration("lucky")
        assert env.client.wait_for_orchestration_completion(iid, timeout=10).runtime_status == (
            OrchestrationStatus.COMPLETED
        )
    with TestEnvironment(lucky_worker(), always_replay=True) as env:  # ... replaying every step does not
        iid = env.client.schedule_new_orchestration("lucky")
        state = env.client.wait_for_orchestration_completion(iid, timeout=10)
        assert state.runtime_status == OrchestrationStatus.FAILED
        assert state.failure_details is not None
        assert state.failure_details.error_type == "NonDeterminismError"
        assert "different input" in state.failure_details.message


def test_replay_check_finds_incompatible_code_in_recorded_histories() -> None:
    old = Worker()

    @old.activity
    def step_a(ctx: Any, _: Any) -> str:
        return "a"

    @old.orchestrator(name="flow")
    def flow(ctx: Any, _: Any) -> Any:
        a = yield ctx.call_activity(step_a)
        go = yield ctx.wait_for_external_event("go")
        return [a, go]

    with TestEnvironment(old) as env:
        waiting = env.client.schedule_new_orchestration("flow")
        done = env.client.schedule_new_orchestration("flow")
        env.client.raise_orchestration_event(done, "go", data=1)
        assert env.client.wait_for_orchestration_completion(done, timeout=10).output == ["a", 1]
        wait_until(
            lambda: any(e["k"] == "TaskCompleted" for e in env.client.get_orchestration_history(waiting)),
            20,
            "the instance to wait for 'go'",
        )
        histories = {iid: env.client.get_orchestration_history(iid) for iid in (waiting, done)}

    compatible, renamed = Worker(), Worker()

    @compatible.orchestrator(name="flow")
    def flow_patched(ctx: Any, _: Any) -> Any:
        a = yield ctx.call_activity("step_a")
        if ctx.is_patched("audit"):
            yield ctx.call_activity("audit")
        go = yield ctx.wait_for_external_event("go")
        return [a, go]

    @renamed.orchestrator(name="flow")
    def flow_renamed(ctx: Any, _: Any) -> Any:
        a = yield ctx.call_activity("step_b")
        return a

    assert all(r.ok for r in replay_check(compatible, histories))
    results = {r.instance_id: r for r in replay_check(renamed, histories)}
    assert {iid for iid, r in results.items() if not r.ok} == {waiting, done}
    assert results[waiting].event is not None and results[waiting].event["k"] == "TaskScheduled"
    assert "step_a" in (results[waiting].error or "") and "step_b" in (results[waiting].error or "")
    assert not replay_check(renamed, list(histories.values()))[0].ok


def test_a_failing_activity_is_a_task_failure_in_the_environment_too() -> None:
    worker = Worker()

    @worker.activity
    def boom(ctx: Any, _: Any) -> None:
        raise RuntimeError("no funds")

    @worker.orchestrator
    def pays(ctx: Any, _: Any) -> Any:
        try:
            yield ctx.call_activity(boom)
        except TaskFailedError as exc:
            return exc.details.message

    with TestEnvironment(worker, time_skipping=True, always_replay=True) as env:
        iid = env.client.schedule_new_orchestration(pays)
        assert env.client.wait_for_orchestration_completion(iid, timeout=10).output == "no funds"
