"""The orchestration engine against a real redis-server: API semantics, one by one."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from durable import (
    Client,
    FailureDetails,
    OrchestrationAlreadyExistsError,
    OrchestrationNotFoundError,
    OrchestrationStatus,
    RetryPolicy,
    SerializationError,
    TaskFailedError,
    Worker,
    WorkerConfig,
    when_all,
    when_any,
)

FAST = dict(balance_interval_ms=100, poll_ms=200)


@pytest.fixture(params=["direct", "outbox"])
def worker(request: pytest.FixtureRequest, redis_url: str, hub: str) -> Worker:
    """Both delivery paths: inside the commit (standalone Redis) and through the outbox (Cluster)."""
    config = WorkerConfig(direct_delivery=request.param == "direct", **FAST)  # type: ignore[arg-type]
    return Worker(redis_url, hub=hub, config=config)


@pytest.fixture
def client(redis_url: str, hub: str) -> Iterator[Client]:
    c = Client(redis_url, hub=hub)
    yield c
    c.close()


def test_chaining_and_async_orchestrator(worker: Worker, client: Client) -> None:
    @worker.activity
    def greet(ctx: Any, name: str) -> str:
        return f"hello {name}"

    @worker.activity
    async def shout(ctx: Any, text: str) -> str:
        return text.upper()

    @worker.orchestrator
    def chain(ctx: Any, name: str) -> Any:
        a = yield ctx.call_activity(greet, input=name)
        b = yield ctx.call_activity(shout, input=a)
        return [a, b]

    @worker.orchestrator(name="async_chain")
    async def async_chain(ctx: Any, name: str) -> Any:
        a = await ctx.call_activity("greet", input=name)
        results = await when_all([ctx.call_activity(shout, input=a), ctx.call_activity(greet, input="x")])
        return results

    with worker:
        i1 = client.schedule_new_orchestration(chain, input="ada")
        i2 = client.schedule_new_orchestration("async_chain", input="bob")
        s1 = client.wait_for_orchestration_completion(i1, timeout=20)
        s2 = client.wait_for_orchestration_completion(i2, timeout=20)
    assert s1.runtime_status == OrchestrationStatus.COMPLETED
    assert s1.output == ["hello ada", "HELLO ADA"]
    assert s1.input == "ada" and s1.name == "chain"
    assert s1.created_at <= s1.last_updated_at
    assert s1.created_at.tzinfo is not None
    assert s2.output == ["HELLO BOB", "hello x"]


def test_retries_failure_details_and_caught_failures(worker: Worker, client: Client) -> None:
    attempts: dict[str, int] = {}

    @worker.activity
    def flaky(ctx: Any, key: str) -> str:
        attempts[key] = attempts.get(key, 0) + 1
        if attempts[key] < 3:
            raise ConnectionError(f"attempt {attempts[key]} failed")
        return f"ok after {attempts[key]}"

    @worker.activity
    def always_fails(ctx: Any, _: Any) -> None:
        raise ValueError("bad value")

    policy = RetryPolicy(first_retry_interval=dt.timedelta(milliseconds=50), max_number_of_attempts=3)

    @worker.orchestrator
    def retrying(ctx: Any, key: str) -> Any:
        return (yield ctx.call_activity(flaky, input=key, retry_policy=policy))

    @worker.orchestrator
    def catching(ctx: Any, _: Any) -> Any:
        try:
            yield ctx.call_activity(always_fails, retry_policy=policy)
        except TaskFailedError as exc:
            return {"caught": exc.details.error_type, "message": exc.details.message}
        return "not reached"

    @worker.orchestrator
    def failing(ctx: Any, _: Any) -> Any:
        yield ctx.call_activity(always_fails)

    with worker:
        ok = client.schedule_new_orchestration(retrying, input="k")
        caught = client.schedule_new_orchestration(catching)
        failed = client.schedule_new_orchestration(failing)
        s_ok = client.wait_for_orchestration_completion(ok, timeout=20)
        s_caught = client.wait_for_orchestration_completion(caught, timeout=20)
        s_failed = client.wait_for_orchestration_completion(failed, timeout=20)
    assert s_ok.output == "ok after 3"
    assert s_caught.output == {"caught": "ValueError", "message": "bad value"}
    assert s_failed.runtime_status == OrchestrationStatus.FAILED
    details = s_failed.failure_details
    assert isinstance(details, FailureDetails)
    assert details.error_type == "TaskFailedError"
    assert "bad value" in details.message
    with pytest.raises(TaskFailedError):
        s_failed.raise_if_failed()
    # three attempts for the caught one: three TaskScheduled in its history, two retry timers
    history = client.get_orchestration_history(caught)
    assert sum(1 for e in history if e["k"] == "TaskScheduled") == 3
    assert sum(1 for e in history if e["k"] == "TimerCreated") == 2


def test_unhandled_exception_fails_with_details(worker: Worker, client: Client) -> None:
    @worker.orchestrator
    def broken(ctx: Any, _: Any) -> Any:
        yield ctx.create_timer(dt.timedelta(milliseconds=10))
        raise KeyError("missing-key")

    with worker:
        iid = client.schedule_new_orchestration(broken)
        state = client.wait_for_orchestration_completion(iid, timeout=20)
    assert state.runtime_status == OrchestrationStatus.FAILED
    assert state.failure_details is not None
    assert state.failure_details.error_type == "KeyError"
    assert "missing-key" in state.failure_details.message
    assert "raise KeyError" in (state.failure_details.stack_trace or "")


def test_timers_fire_not_early_and_when_any(worker: Worker, client: Client) -> None:
    @worker.orchestrator
    def timed(ctx: Any, _: Any) -> Any:
        start = ctx.current_utc_datetime
        yield ctx.create_timer(dt.timedelta(milliseconds=300))
        after = ctx.current_utc_datetime
        winner = yield when_any(
            [ctx.create_timer(dt.timedelta(milliseconds=100)), ctx.wait_for_external_event("never")]
        )
        return {
            "elapsed_ms": (after - start).total_seconds() * 1000,
            "winner_is_timer": winner.get_result() is None,
        }

    with worker:
        iid = client.schedule_new_orchestration(timed)
        state = client.wait_for_orchestration_completion(iid, timeout=20)
    assert state.output["elapsed_ms"] >= 300
    assert state.output["winner_is_timer"] is True


def test_external_events_buffered_and_case_insensitive(worker: Worker, client: Client) -> None:
    @worker.orchestrator
    def waiter(ctx: Any, _: Any) -> Any:
        yield ctx.create_timer(dt.timedelta(milliseconds=200))  # events arrive before we wait
        first = yield ctx.wait_for_external_event("Approval")
        second = yield ctx.wait_for_external_event("approval")
        return [first, second]

    with worker:
        iid = client.schedule_new_orchestration(waiter)
        client.wait_for_orchestration_start(iid, timeout=20)
        client.raise_orchestration_event(iid, "approval", data={"by": "ann"})
        client.raise_orchestration_event(iid, "APPROVAL", data=2)
        state = client.wait_for_orchestration_completion(iid, timeout=20)
    assert state.output == [{"by": "ann"}, 2]


def test_suspend_keeps_events_and_resume_applies_them(worker: Worker, client: Client) -> None:
    @worker.orchestrator
    def approval(ctx: Any, _: Any) -> Any:
        ctx.set_custom_status("waiting")
        value = yield ctx.wait_for_external_event("go")
        return value

    with worker:
        iid = client.schedule_new_orchestration(approval)
        assert client.wait_for_orchestration_start(iid, timeout=20).runtime_status in (
            OrchestrationStatus.RUNNING,
        )
        client.suspend_orchestration(iid, reason="maintenance")
        _wait_status(client, iid, OrchestrationStatus.SUSPENDED)
        client.raise_orchestration_event(iid, "go", data="late")
        # the event is recorded but not applied while suspended
        _wait_history(client, iid, lambda h: any(e["k"] == "EventRaised" for e in h))
        assert client.get_orchestration_state(iid).runtime_status == OrchestrationStatus.SUSPENDED  # type: ignore[union-attr]
        client.resume_orchestration(iid)
        state = client.wait_for_orchestration_completion(iid, timeout=20)
    assert state.runtime_status == OrchestrationStatus.COMPLETED
    assert state.output == "late"
    assert state.custom_status == "waiting"


def test_terminate_purge_and_list(worker: Worker, client: Client) -> None:
    @worker.orchestrator
    def forever(ctx: Any, _: Any) -> Any:
        yield ctx.wait_for_external_event("never")

    @worker.orchestrator
    def quick(ctx: Any, n: int) -> int:
        return n * 2
        yield  # pragma: no cover - makes this a generator

    with worker:
        long_id = client.schedule_new_orchestration(forever, instance_id="forever-1")
        with pytest.raises(OrchestrationAlreadyExistsError):
            client.schedule_new_orchestration(forever, instance_id="forever-1")
        quick_ids = [client.schedule_new_orchestration(quick, input=i) for i in range(5)]
        for q in quick_ids:
            assert client.wait_for_orchestration_completion(q, timeout=20).output in range(0, 10, 2)
        client.wait_for_orchestration_start(long_id, timeout=20)
        with pytest.raises(ValueError):
            client.purge_orchestration(long_id)
        client.terminate_orchestration(long_id, output={"reason": "test"})
        state = client.wait_for_orchestration_completion(long_id, timeout=20)
        assert state.runtime_status == OrchestrationStatus.TERMINATED
        assert state.output == {"reason": "test"}

        completed = client.list_orchestrations(status=OrchestrationStatus.COMPLETED)
        assert {s.instance_id for s in completed} == set(quick_ids)
        assert [s.instance_id for s in client.list_orchestrations(name="forever")] == [long_id]
        assert len(client.list_orchestrations(limit=3)) == 3
        future = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
        assert client.list_orchestrations(created_from=future) == []

        assert client.purge_orchestration(long_id) is True
        assert client.get_orchestration_state(long_id) is None
        assert client.get_orchestration_history(long_id) == []
        assert client.purge_orchestration(long_id) is False
        with pytest.raises(OrchestrationNotFoundError):
            client.raise_orchestration_event("no-such-instance", "x")
        # an id can be reused once the earlier instance finished
        again = client.schedule_new_orchestration(quick, input=21, instance_id=quick_ids[0])
        assert client.wait_for_orchestration_completion(again, timeout=20).output == 42


def test_scheduled_start(worker: Worker, client: Client) -> None:
    @worker.orchestrator
    def at(ctx: Any, _: Any) -> Any:
        return ctx.current_utc_datetime.isoformat()
        yield  # pragma: no cover

    with worker:
        start_at = dt.datetime.now(dt.UTC) + dt.timedelta(milliseconds=700)
        iid = client.schedule_new_orchestration(at, start_at=start_at)
        pending = client.get_orchestration_state(iid)
        assert pending is not None and pending.runtime_status == OrchestrationStatus.PENDING
        assert pending.scheduled_start_at is not None
        state = client.wait_for_orchestration_completion(iid, timeout=20)
    assert dt.datetime.fromisoformat(state.output) >= start_at - dt.timedelta(milliseconds=1)


def test_terminate_before_scheduled_start(worker: Worker, client: Client) -> None:
    @worker.orchestrator
    def never_runs(ctx: Any, _: Any) -> Any:
        return "ran"
        yield  # pragma: no cover

    with worker:
        iid = client.schedule_new_orchestration(
            never_runs, start_at=dt.datetime.now(dt.UTC) + dt.timedelta(milliseconds=500)
        )
        client.terminate_orchestration(iid, output="cancelled")
        state = client.wait_for_orchestration_completion(iid, timeout=20)
        assert state.runtime_status == OrchestrationStatus.TERMINATED
        # and it stays terminated after the start time passed
        _wait_history(client, iid, lambda h: len(h) >= 1)
    assert client.get_orchestration_state(iid).runtime_status == OrchestrationStatus.TERMINATED  # type: ignore[union-attr]


def test_sub_orchestrations_and_continue_as_new(worker: Worker, client: Client) -> None:
    @worker.activity
    def square(ctx: Any, n: int) -> int:
        return n * n

    @worker.orchestrator
    def child(ctx: Any, n: int) -> Any:
        if n < 0:
            raise ValueError("negative")
        return (yield ctx.call_activity(square, input=n))

    @worker.orchestrator
    def parent(ctx: Any, ns: list[int]) -> Any:
        results = yield when_all([ctx.call_sub_orchestrator(child, input=n) for n in ns])
        try:
            yield ctx.call_sub_orchestrator(child, input=-1, instance_id=f"{ctx.instance_id}-bad")
        except TaskFailedError as exc:
            return {"sum": sum(results), "child_error": exc.details.error_type}
        return None

    @worker.orchestrator
    def counter(ctx: Any, state: dict[str, Any]) -> Any:
        n = state["n"]
        if n >= 5:
            return state
        extra = (
            yield ctx.wait_for_external_event("tick")
            if n == 2
            else ctx.create_timer(dt.timedelta(milliseconds=10))
        )
        ctx.continue_as_new(
            {"n": n + 1, "seen": state["seen"] + ([extra] if extra else [])}, save_events=True
        )

    with worker:
        p = client.schedule_new_orchestration(parent, input=[1, 2, 3])
        c = client.schedule_new_orchestration(counter, input={"n": 0, "seen": []})
        client.raise_orchestration_event(c, "tick", data="t")
        sp = client.wait_for_orchestration_completion(p, timeout=20)
        sc = client.wait_for_orchestration_completion(c, timeout=20)
        child_state = client.get_orchestration_state(f"{p}-bad")
    assert sp.output == {"sum": 14, "child_error": "ValueError"}
    assert child_state is not None and child_state.runtime_status == OrchestrationStatus.FAILED
    assert child_state.parent_instance_id == p
    assert sc.output == {"n": 5, "seen": ["t"]}
    # continue-as-new keeps only the last execution's history
    history = client.get_orchestration_history(c)
    assert history[1]["k"] == "ExecutionStarted" and history[1]["input"] == {"n": 5, "seen": ["t"]}


def test_deterministic_uuid_and_time_across_replay(redis_url: str, hub: str, client: Client) -> None:
    """With a cache of one instance every step replays; the values must not change."""
    seen: list[tuple[str, str, bool]] = []
    worker = Worker(redis_url, hub=hub, config=WorkerConfig(cache_size=1, **FAST))  # type: ignore[arg-type]

    @worker.activity
    def noop(ctx: Any, _: Any) -> None:
        return None

    @worker.orchestrator
    def stamps(ctx: Any, _: Any) -> Any:
        out = []
        for _i in range(3):
            u = ctx.new_uuid()
            t = ctx.current_utc_datetime.isoformat()
            seen.append((u, t, ctx.is_replaying))
            out.append([u, t])
            yield ctx.call_activity(noop)
        return out

    @worker.orchestrator
    def other(ctx: Any, _: Any) -> Any:
        for _i in range(3):
            yield ctx.call_activity(noop)

    with worker:
        iids = [client.schedule_new_orchestration(stamps) for _ in range(2)]
        iids += [client.schedule_new_orchestration(other) for _ in range(2)]
        states = [client.wait_for_orchestration_completion(i, timeout=20) for i in iids]
    outputs = [s.output for s in states[:2]]
    replayed = [x for x in seen if x[2]]
    assert replayed, "the tiny cache should have forced replays"
    recorded = {tuple(pair) for out in outputs for pair in out}
    for u, t, _ in seen:
        assert (u, t) in recorded
    for out in outputs:
        assert len({u for u, _ in out}) == 3
        uuid.UUID(out[0][0])
    assert outputs[0] != outputs[1]


def test_nondeterminism_is_detected(redis_url: str, hub: str, client: Client) -> None:
    def v1(ctx: Any, _: Any) -> Any:
        yield ctx.call_activity("step_a")
        yield ctx.wait_for_external_event("continue")
        return "v1"

    def v2(ctx: Any, _: Any) -> Any:
        yield ctx.call_activity("step_b")  # the code changed under a running instance
        yield ctx.wait_for_external_event("continue")
        return "v2"

    def step(ctx: Any, _: Any) -> str:
        return "done"

    first = Worker(redis_url, hub=hub, config=WorkerConfig(**FAST))  # type: ignore[arg-type]
    first.add_orchestrator(v1, name="flow")
    first.add_activity(step, name="step_a")
    with first:
        iid = client.schedule_new_orchestration("flow")
        _wait_history(client, iid, lambda h: any(e["k"] == "TaskCompleted" for e in h))
    second = Worker(redis_url, hub=hub, config=WorkerConfig(**FAST))  # type: ignore[arg-type]
    second.add_orchestrator(v2, name="flow")
    second.add_activity(step, name="step_b")
    with second:
        client.raise_orchestration_event(iid, "continue")
        state = client.wait_for_orchestration_completion(iid, timeout=20)
    assert state.runtime_status == OrchestrationStatus.FAILED
    assert state.failure_details is not None
    assert state.failure_details.error_type == "NonDeterminismError"
    assert "step_a" in state.failure_details.message and "step_b" in state.failure_details.message


def test_clear_errors_for_bad_input_and_unknown_names(worker: Worker, client: Client) -> None:
    @worker.orchestrator
    def sends_bad(ctx: Any, _: Any) -> Any:
        yield ctx.call_activity("anything", input={1, 2, 3})

    with worker:
        with pytest.raises(SerializationError, match="'object'"):
            client.schedule_new_orchestration("whatever", input=object())
        with pytest.raises(SerializationError, match="set"):
            client.raise_orchestration_event("x", "e", data={1})
        unknown = client.schedule_new_orchestration("no_such_orchestrator", input=1)
        s_unknown = client.wait_for_orchestration_completion(unknown, timeout=20)
        bad = client.schedule_new_orchestration(sends_bad)
        s_bad = client.wait_for_orchestration_completion(bad, timeout=20)
    assert s_unknown.runtime_status == OrchestrationStatus.FAILED
    assert s_unknown.failure_details is not None
    assert s_unknown.failure_details.error_type == "OrchestrationNotFoundError"
    assert "no_such_orchestrator" in s_unknown.failure_details.message
    assert s_bad.failure_details is not None and s_bad.failure_details.error_type == "SerializationError"
    assert "'set'" in s_bad.failure_details.message


def test_fan_out_500(worker: Worker, client: Client) -> None:
    @worker.activity
    def double(ctx: Any, n: int) -> int:
        return 2 * n

    @worker.orchestrator
    def fan(ctx: Any, n: int) -> Any:
        values = yield when_all([ctx.call_activity(double, input=i) for i in range(n)])
        return sum(values)

    with worker:
        iid = client.schedule_new_orchestration(fan, input=500)
        state = client.wait_for_orchestration_completion(iid, timeout=60)
    assert state.output == 2 * sum(range(500))
    history = client.get_orchestration_history(iid)
    assert sum(1 for e in history if e["k"] == "TaskCompleted") == 500
    assert [e["eid"] for e in history] == list(range(len(history)))


def _wait_status(client: Client, iid: str, status: OrchestrationStatus, timeout: float = 20) -> None:
    _poll(
        lambda: (s := client.get_orchestration_state(iid)) is not None and s.runtime_status == status, timeout
    )


def _wait_history(client: Client, iid: str, cond: Any, timeout: float = 20) -> None:
    _poll(lambda: cond(client.get_orchestration_history(iid)), timeout)


def _poll(cond: Any, timeout: float) -> None:
    """Wait for a condition on durable state (there is no event to await for these)."""
    import time

    deadline = time.monotonic() + timeout
    delay = 0.01
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
