"""Failure control against a real redis-server: non-retryable errors, should_retry, failure causes,
attempt numbers and idempotency keys across retries, activity timeouts and heartbeats."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from _redis import connect, is_cluster

from durable import (
    ActivityContext,
    ActivityTimeoutError,
    Client,
    FailureDetails,
    OrchestrationStatus,
    RetryPolicy,
    TaskFailedError,
    Worker,
    WorkerConfig,
)

FAST = dict(balance_interval_ms=100, poll_ms=200, activity_visibility_ms=1500)
RETRY = dict(first_retry_interval=dt.timedelta(milliseconds=20), max_number_of_attempts=4)


@pytest.fixture
def worker(redis_url: str, hub: str) -> Worker:
    return Worker(redis_url, hub=hub, config=WorkerConfig(**FAST))  # type: ignore[arg-type]


@pytest.fixture
def client(redis_url: str, hub: str) -> Iterator[Client]:
    c = Client(redis_url, hub=hub)
    yield c
    c.close()


class Transient(ConnectionError):
    """A subclass: a base class listed as non-retryable matches it."""


def test_non_retryable_errors_fail_at_once_and_transient_ones_are_retried(
    worker: Worker, client: Client
) -> None:
    calls: dict[str, list[int]] = {"bad": [], "flaky": [], "named": []}

    @worker.activity
    def validate(ctx: ActivityContext, kind: str) -> str:
        calls[kind].append(ctx.attempt)
        if kind == "bad":
            raise ValueError("the order has no lines")
        if kind == "named":
            raise KeyError("sku")
        if ctx.attempt < 3:
            raise Transient("try again")
        return f"ok on attempt {ctx.attempt}"

    policy = RetryPolicy(**RETRY, non_retryable_errors=(ValueError, "KeyError"))  # type: ignore[arg-type]

    @worker.orchestrator
    def place(ctx: Any, kind: str) -> Any:
        try:
            return (yield ctx.call_activity(validate, input=kind, retry_policy=policy))
        except TaskFailedError as exc:
            return {"failed": exc.details.error_type}

    with worker:
        ids = {k: client.schedule_new_orchestration(place, input=k) for k in calls}
        out = {k: client.wait_for_orchestration_completion(i, timeout=20).output for k, i in ids.items()}
    assert out == {
        "bad": {"failed": "ValueError"},
        "flaky": "ok on attempt 3",
        "named": {"failed": "KeyError"},
    }
    assert calls == {"bad": [1], "flaky": [1, 2, 3], "named": [1]}


def test_should_retry_stops_retrying(worker: Worker, client: Client) -> None:
    attempts: list[int] = []
    seen: list[str] = []

    @worker.activity
    def charge(ctx: ActivityContext, _: Any) -> None:
        attempts.append(ctx.attempt)
        raise RuntimeError("card declined" if ctx.attempt == 2 else "gateway busy")

    def should_retry(failure: FailureDetails) -> bool:
        seen.append(failure.message)
        return "declined" not in failure.message

    policy = RetryPolicy(**RETRY, should_retry=should_retry)  # type: ignore[arg-type]

    @worker.orchestrator
    def pay(ctx: Any, _: Any) -> Any:
        yield ctx.call_activity(charge, retry_policy=policy)

    with worker:
        iid = client.schedule_new_orchestration(pay)
        state = client.wait_for_orchestration_completion(iid, timeout=20)
    assert state.runtime_status == OrchestrationStatus.FAILED
    assert attempts == [1, 2]
    assert {"gateway busy", "card declined"} <= set(seen)
    assert state.failure_details is not None and "card declined" in state.failure_details.message


def test_failure_details_name_their_causes(worker: Worker, client: Client) -> None:
    @worker.activity
    def reserve(ctx: ActivityContext, _: Any) -> None:
        try:
            {}["sku-1"]
        except KeyError as exc:
            raise Transient("warehouse unreachable") from exc

    @worker.orchestrator
    def child(ctx: Any, _: Any) -> Any:
        yield ctx.call_activity(reserve)

    @worker.orchestrator
    def parent(ctx: Any, _: Any) -> Any:
        yield ctx.call_sub_orchestrator(child)

    with worker:
        iid = client.schedule_new_orchestration(parent)
        state = client.wait_for_orchestration_completion(iid, timeout=20)
    failure = state.failure_details
    assert failure is not None and failure.error_type == "TaskFailedError"
    # parent -> the child's failure -> the activity's Transient -> the KeyError it was raised from
    child_failure = failure.inner_failure
    assert child_failure is not None and child_failure.error_type == "TaskFailedError"
    activity_failure = child_failure.inner_failure
    assert activity_failure is not None and activity_failure.error_type == "Transient"
    assert activity_failure.message == "warehouse unreachable"
    assert activity_failure.inner_failure is not None
    assert activity_failure.inner_failure.error_type == "KeyError"
    assert failure.is_caused_by(ConnectionError)  # a base class of Transient
    assert failure.is_caused_by(OSError) and failure.is_caused_by(LookupError)
    assert failure.is_caused_by("Transient") and failure.is_caused_by("builtins.KeyError")
    assert not failure.is_caused_by("ConnectionError")  # names match the type itself only
    assert not failure.is_caused_by(ValueError)


def test_attempt_counts_policy_retries_under_one_idempotency_key(worker: Worker, client: Client) -> None:
    seen: list[tuple[int, int, str, int]] = []

    @worker.activity
    def flaky(ctx: ActivityContext, _: Any) -> int:
        seen.append((ctx.attempt, ctx.delivery, ctx.idempotency_key, ctx.task_id))
        if ctx.attempt < 3:
            raise Transient("not yet")
        return ctx.attempt

    @worker.orchestrator
    def twice(ctx: Any, _: Any) -> Any:
        policy = RetryPolicy(**RETRY)  # type: ignore[arg-type]
        first = yield ctx.call_activity(flaky, retry_policy=policy)
        second = yield ctx.call_activity(flaky, retry_policy=policy)
        return [first, second]

    with worker:
        iid = client.schedule_new_orchestration(twice)
        state = client.wait_for_orchestration_completion(iid, timeout=20)
    assert state.output == [3, 3]
    assert [(a, d) for a, d, _, _ in seen] == [(1, 1), (2, 1), (3, 1)] * 2
    first_keys = {k for _, _, k, _ in seen[:3]}
    second_keys = {k for _, _, k, _ in seen[3:]}
    assert len(first_keys) == 1 and len(second_keys) == 1 and first_keys != second_keys
    (key,) = first_keys
    assert key.startswith(f"{iid}:") and key.endswith(":0")  # instance:execution:first task id
    assert len({tid for *_, tid in seen[:3]}) == 3  # each attempt is a task of its own


def test_an_attempt_past_its_timeout_is_retried_and_its_late_result_ignored(
    worker: Worker, client: Client
) -> None:
    release = threading.Event()
    returned = threading.Event()

    @worker.activity
    def lookup(ctx: ActivityContext, _: Any) -> str:
        if ctx.attempt == 1:
            release.wait(30)  # hangs past its timeout (a thread cannot be stopped)
            returned.set()
            return f"late, cancelled={ctx.is_cancelled}"
        return "from attempt 2"

    policy = RetryPolicy(**RETRY)  # type: ignore[arg-type]

    @worker.orchestrator
    def find(ctx: Any, _: Any) -> Any:
        value = yield ctx.call_activity(lookup, retry_policy=policy, timeout=dt.timedelta(milliseconds=300))
        go = yield ctx.wait_for_external_event("go")
        return [value, go]

    with worker:
        iid = client.schedule_new_orchestration(find)
        _wait_for(client, iid, lambda h: any(e["k"] == "TaskCompleted" for e in h))
        release.set()  # the abandoned attempt returns now, while the orchestration still runs
        assert returned.wait(10)
        client.raise_orchestration_event(iid, "go", data="went")
        state = client.wait_for_orchestration_completion(iid, timeout=20)
    assert state.output == ["from attempt 2", "went"]
    history = client.get_orchestration_history(iid)
    failures = [e["failure"] for e in history if e["k"] == "TaskFailed"]
    assert [f["error_type"] for f in failures] == ["ActivityTimeoutError"]
    assert FailureDetails.from_record(failures[0]).is_caused_by(TimeoutError)  # type: ignore[union-attr]
    assert [e["result"] for e in history if e["k"] == "TaskCompleted"] == ["from attempt 2"]


def test_async_activity_past_its_timeout_is_cancelled(worker: Worker, client: Client) -> None:
    cancelled = threading.Event()

    @worker.activity
    async def slow(ctx: ActivityContext, _: Any) -> str:
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise
        return "not reached"

    @worker.orchestrator
    def wait_slow(ctx: Any, _: Any) -> Any:
        try:
            yield ctx.call_activity(slow, timeout=dt.timedelta(milliseconds=200))
        except TaskFailedError as exc:
            return [exc.details.error_type, exc.details.is_caused_by(ActivityTimeoutError)]
        return None

    with worker:
        iid = client.schedule_new_orchestration(wait_slow)
        state = client.wait_for_orchestration_completion(iid, timeout=20)
        assert cancelled.wait(10)
    assert state.output == ["ActivityTimeoutError", True]


def test_heartbeats_keep_an_attempt_alive_and_carry_details_to_the_next_one(
    worker: Worker, client: Client
) -> None:
    stall = threading.Event()
    seen: list[tuple[int, Any]] = []

    @worker.activity
    def steady(ctx: ActivityContext, n: int) -> int:
        for i in range(n):
            ctx.heartbeat({"done": i})
            stall.wait(0.05)  # 16 x 50 ms of work: well past the 400 ms heartbeat timeout
        return n

    @worker.activity
    def copy_rows(ctx: ActivityContext, n: int) -> Any:
        seen.append((ctx.attempt, ctx.heartbeat_details))
        start = (ctx.heartbeat_details or {"done": 0})["done"]
        if ctx.attempt == 1:
            ctx.heartbeat({"done": 3})
            stall.wait(30)  # stops heartbeating: timed out
            return "abandoned"
        for i in range(start, n):
            ctx.heartbeat({"done": i + 1})
        return {"resumed_from": start, "attempt": ctx.attempt}

    beat = dt.timedelta(milliseconds=400)
    policy = RetryPolicy(**RETRY)  # type: ignore[arg-type]

    @worker.orchestrator
    def both(ctx: Any, _: Any) -> Any:
        a = yield ctx.call_activity(steady, input=16, heartbeat_timeout=beat)
        b = yield ctx.call_activity(copy_rows, input=5, heartbeat_timeout=beat, retry_policy=policy)
        return [a, b]

    try:
        with worker:
            iid = client.schedule_new_orchestration(both)
            state = client.wait_for_orchestration_completion(iid, timeout=20)
    finally:
        stall.set()
    assert state.output == [16, {"resumed_from": 3, "attempt": 2}]
    assert seen == [(1, None), (2, {"done": 3})]
    history = client.get_orchestration_history(iid)
    (failed,) = [e for e in history if e["k"] == "TaskFailed"]
    assert failed["failure"]["error_type"] == "ActivityTimeoutError"
    assert "heartbeat" in failed["failure"]["message"]


def test_running_activity_is_cancelled_when_its_orchestration_ends(worker: Worker, client: Client) -> None:
    started = threading.Event()
    saw_cancel = threading.Event()

    @worker.activity
    def long_job(ctx: ActivityContext, _: Any) -> None:
        started.set()
        for _ in range(600):
            if ctx.is_cancelled:
                saw_cancel.set()
                return
            saw_cancel.wait(0.05)

    @worker.orchestrator
    def job(ctx: Any, _: Any) -> Any:
        yield ctx.call_activity(long_job)

    with worker:
        iid = client.schedule_new_orchestration(job)
        assert started.wait(10)
        client.terminate_orchestration(iid)
        client.wait_for_orchestration_completion(iid, timeout=20)
        assert saw_cancel.wait(10)


TESTS = Path(__file__).resolve().parents[1]


def _spawn_worker(redis_url: str, hub: str, ledger_url: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, DURABLE_REDIS_URL=redis_url, DURABLE_HUB=hub, LEDGER_URL=ledger_url)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(TESTS.parent)])
    command = [
        sys.executable,
        "-m",
        "durable",
        "worker",
        "fixtures.engine_app:worker",
        "--log-level",
        "error",
    ]
    return subprocess.Popen(command, env=env, cwd=str(TESTS))


def test_a_crashed_delivery_is_the_same_attempt_under_the_same_key(
    redis_url: str, hub: str, client: Client
) -> None:
    """Process test: the activity kills its worker on its first delivery; the next worker gets
    the same attempt again (delivery 2), and the policy's retry is attempt 2, all under one key."""
    ledger_url = redis_url if is_cluster(redis_url) else redis_url.rsplit("/", 1)[0] + "/1"
    first = _spawn_worker(redis_url, hub, ledger_url)
    second: subprocess.Popen[bytes] | None = None
    try:
        iid = client.schedule_new_orchestration("crash_then_retry")
        assert first.wait(timeout=60) == 17  # the activity took its worker down
        second = _spawn_worker(redis_url, hub, ledger_url)
        state = client.wait_for_orchestration_completion(iid, timeout=60)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
    assert state.output == [2, 1]
    ledger = connect(ledger_url)
    try:
        seen = [row.decode().split("|", 2) for row in ledger.lrange(f"seen:{hub}", 0, -1)]
    finally:
        ledger.close()
    assert [(a, d) for a, d, _ in seen] == [("1", "1"), ("1", "2"), ("2", "1")]
    assert len({key for *_, key in seen}) == 1 and seen[0][2].startswith(f"{iid}:")


def _wait_for(client: Client, iid: str, cond: Any, timeout: float = 20) -> None:
    """Wait for a condition on an instance's history (durable state offers no event for it)."""
    import time

    deadline = time.monotonic() + timeout
    delay = 0.01
    while not cond(client.get_orchestration_history(iid)):
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
