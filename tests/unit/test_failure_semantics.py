"""Failure control in the pure core: failure causes, retry policies that stop early, and what a
retried activity call carries from one attempt to the next (hand-built histories, no Redis)."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from durable import FailureDetails, RetryPolicy, TaskFailedError
from durable._core import events as ev
from durable._core.context import OrchestrationContext
from durable._core.executor import OrchestrationExecutor, StepResult
from durable._core.model import OrchestrationStatus
from durable._core.registry import name_of
from durable._core.serialization import decode, encode

T0 = 1_700_000_000_000
T1 = T0 + 1_000


class Transient(ConnectionError):
    pass


def failure_of(exc: BaseException) -> FailureDetails:
    try:
        raise exc
    except BaseException as caught:
        return FailureDetails.from_exception(caught)


# -- FailureDetails --------------------------------------------------------------------------------
def test_is_caused_by_matches_base_classes_for_types_and_the_type_itself_for_names() -> None:
    failure = failure_of(Transient("down"))
    assert failure.is_caused_by(Transient) and failure.is_caused_by(ConnectionError)
    assert failure.is_caused_by(OSError) and failure.is_caused_by(Exception)
    assert not failure.is_caused_by(ValueError)
    assert failure.is_caused_by("Transient")
    assert failure.is_caused_by(f"{__name__}.Transient")
    assert not failure.is_caused_by("ConnectionError") and not failure.is_caused_by("OSError")


def test_the_cause_of_an_exception_is_its_inner_failure() -> None:
    try:
        try:
            raise KeyError("sku")
        except KeyError as exc:
            raise RuntimeError("lookup failed") from exc
    except RuntimeError as exc:
        failure = FailureDetails.from_exception(exc)
    assert failure.inner_failure is not None and failure.inner_failure.error_type == "KeyError"
    assert failure.is_caused_by(LookupError) and failure.is_caused_by("KeyError")
    restored = FailureDetails.from_record(failure.to_record())
    assert restored == failure
    assert restored is not None and restored.is_caused_by(LookupError)


def test_a_task_failure_wraps_the_failure_of_the_task() -> None:
    inner = FailureDetails("no stock", "StockError")
    failure = failure_of(TaskFailedError("activity 'reserve' failed: no stock", inner))
    assert failure.error_type == "TaskFailedError"
    assert failure.inner_failure == inner
    assert failure.is_caused_by("StockError") and failure.is_caused_by(TaskFailedError)


def test_records_without_type_names_match_by_name() -> None:
    """Failures recorded by other SDKs (or older records) carry only the type's name."""
    failure = FailureDetails.from_record({"message": "m", "error_type": "ValueError", "stack_trace": None})
    assert failure is not None and failure.inner_failure is None
    assert failure.is_caused_by(ValueError) and failure.is_caused_by("ValueError")
    assert not failure.is_caused_by(ArithmeticError)


def test_engine_failures_know_their_type() -> None:
    from durable import ActivityTimeoutError

    failure = FailureDetails.of(ActivityTimeoutError, "too slow")
    assert failure.error_type == "ActivityTimeoutError" and failure.stack_trace is None
    assert failure.is_caused_by(TimeoutError) and failure.is_caused_by(OSError)


# -- RetryPolicy -----------------------------------------------------------------------------------
def policy(**kw: Any) -> RetryPolicy:
    return RetryPolicy(first_retry_interval=dt.timedelta(seconds=5), max_number_of_attempts=3, **kw)


def test_non_retryable_errors_accept_types_and_names_only() -> None:
    assert policy(non_retryable_errors=ValueError).non_retryable_errors == (ValueError,)
    assert policy(non_retryable_errors=["KeyError", ValueError]).non_retryable_errors == (
        "KeyError",
        ValueError,
    )
    with pytest.raises(TypeError):
        policy(non_retryable_errors=(42,))
    with pytest.raises(TypeError):
        policy(non_retryable_errors=(int,))
    with pytest.raises(TypeError):
        policy(should_retry="no")


def test_next_delay_gives_up_for_non_retryable_failures_and_when_should_retry_says_no() -> None:
    p = policy(non_retryable_errors=(LookupError,), should_retry=lambda f: "fatal" not in f.message)
    elapsed = dt.timedelta(0)
    assert p.next_delay(1, elapsed, failure_of(KeyError("x"))) is None
    assert p.next_delay(1, elapsed, failure_of(RuntimeError("fatal"))) is None
    assert p.next_delay(1, elapsed, failure_of(RuntimeError("busy"))) == dt.timedelta(seconds=5)
    assert p.next_delay(3, elapsed, failure_of(RuntimeError("busy"))) is None  # attempts used up
    assert p.next_delay(1, elapsed) == dt.timedelta(seconds=5)  # arithmetic only


# -- the executor ----------------------------------------------------------------------------------
def run_steps(orchestrator: Callable[..., Any], *steps: list[ev.Event]) -> list[StepResult]:
    """Drive ``orchestrator`` step by step twice: with a live executor, and rebuilding it from the
    recorded history before every step (a cache miss). Both must give the same results."""
    outcomes: list[list[StepResult]] = []
    for rebuild in (False, True):
        history: list[ev.Event] = []
        executor = _executor(orchestrator)
        results: list[StepResult] = []
        for i, events in enumerate(steps):
            if rebuild:
                executor = _executor(orchestrator)
                executor.replay(copy.deepcopy(history))
            ts = T0 + i * 1_000
            result = executor.execute([{"k": ev.ORCHESTRATOR_STARTED, "ts": ts}, *copy.deepcopy(events)])
            history.extend(copy.deepcopy(result.new_events))
            results.append(result)
        outcomes.append(results)
    live, rebuilt = outcomes
    assert [r.actions for r in live] == [r.actions for r in rebuilt]
    assert [(r.status, r.output, r.failure) for r in live] == [
        (r.status, r.output, r.failure) for r in rebuilt
    ]
    return live


def _executor(orchestrator: Callable[..., Any]) -> OrchestrationExecutor:
    return OrchestrationExecutor("i-1", {"orch": orchestrator}.get, name_of, OrchestrationContext)


START = [{"k": ev.EXECUTION_STARTED, "name": "orch", "input": encode(None), "exec": "x", "parent": None}]


def failed(tid: int, exc: BaseException, details: Any = None) -> ev.Event:
    event: ev.Event = {"k": ev.TASK_FAILED, "tid": tid, "failure": failure_of(exc).to_record()}
    if details is not None:
        event["details"] = encode(details)
    return event


def fired(tid: int, at: int) -> ev.Event:
    return {"k": ev.TIMER_FIRED, "tid": tid, "fire_at": at}


def calling(p: RetryPolicy, **kw: Any) -> Callable[..., Any]:
    def orch(ctx: Any, _: Any) -> Any:
        try:
            return (yield ctx.call_activity("work", retry_policy=p, **kw))
        except TaskFailedError as exc:
            return {
                "gave_up": exc.details.error_type,
                "inner": getattr(exc.details.inner_failure, "error_type", None),
            }

    return orch


def test_a_non_retryable_failure_ends_the_call_without_a_retry_timer() -> None:
    orch = calling(policy(non_retryable_errors=(ValueError,)))
    first, second = run_steps(orch, START, [failed(0, UnicodeError("bad bytes"))])
    assert [a["k"] for a in first.actions] == [ev.TASK_SCHEDULED]
    assert second.actions == []
    assert decode(second.output) == {"gave_up": "UnicodeError", "inner": None}


def test_should_retry_false_ends_the_call() -> None:
    orch = calling(policy(should_retry=lambda f: f.error_type != "PermissionError"))
    results = run_steps(
        orch,
        START,
        [failed(0, TimeoutError("slow"))],
        [fired(1, T1 + 5_000)],
        [failed(2, PermissionError("no"))],
    )
    assert [a["k"] for a in results[1].actions] == [ev.TIMER_CREATED]
    assert decode(results[3].output) == {"gave_up": "PermissionError", "inner": None}


def test_an_error_in_should_retry_fails_the_call_with_the_original_failure_inside() -> None:
    def broken(failure: FailureDetails) -> bool:
        raise ZeroDivisionError("oops")

    _, second = run_steps(calling(policy(should_retry=broken)), START, [failed(0, TimeoutError("slow"))])
    assert decode(second.output) == {"gave_up": "ZeroDivisionError", "inner": "TimeoutError"}


def test_retries_carry_the_call_the_attempt_and_the_last_heartbeat_details() -> None:
    orch = calling(
        policy(), timeout=dt.timedelta(seconds=2), heartbeat_timeout=dt.timedelta(milliseconds=500)
    )
    results = run_steps(
        orch,
        START,
        [failed(0, TimeoutError("slow"), details={"row": 10})],
        [fired(1, T1 + 5_000)],
        [failed(2, TimeoutError("slow again"))],  # this attempt recorded nothing: keep row 10
        [fired(3, T1 + 10_000)],
    )
    first, retry_timer, second, _, third = (r.actions for r in results)
    assert first[0]["to"] == 2_000 and first[0]["hbt"] == 500
    assert "call" not in first[0] and "attempt" not in first[0]
    assert retry_timer[0]["retry"] is True and retry_timer[0]["call"] == 0
    assert (second[0]["tid"], second[0]["call"], second[0]["attempt"]) == (2, 0, 2)
    assert decode(second[0]["hb"]) == {"row": 10}
    assert second[0]["to"] == 2_000 and second[0]["hbt"] == 500
    assert (third[0]["call"], third[0]["attempt"], decode(third[0]["hb"])) == (0, 3, {"row": 10})


def test_time_limits_must_be_positive_timedeltas() -> None:
    ctx = OrchestrationContext("i", name_of)
    with pytest.raises(ValueError, match="timeout"):
        ctx.call_activity("a", timeout=dt.timedelta(0))
    with pytest.raises(TypeError, match="heartbeat_timeout"):
        ctx.call_activity("a", heartbeat_timeout=5)  # type: ignore[arg-type]


def test_an_uncaught_task_failure_keeps_the_task_failure_as_the_cause() -> None:
    def orch(ctx: Any, _: Any) -> Any:
        yield ctx.call_activity("work")

    _, result = run_steps(orch, START, [failed(0, Transient("down"))])
    assert result.status == OrchestrationStatus.FAILED
    assert result.failure is not None and result.failure.error_type == "TaskFailedError"
    inner = result.failure.inner_failure
    assert inner is not None and inner.error_type == "Transient" and inner.message == "down"
    assert result.failure.is_caused_by(ConnectionError)


def test_the_json_views_show_the_causes() -> None:
    from durable._ops.views import failure_json

    failure = failure_of(TaskFailedError("activity 'x' failed: down", failure_of(Transient("down"))))
    view = failure_json(failure)
    assert view is not None and view["error_type"] == "TaskFailedError"
    assert view["inner_failure"]["error_type"] == "Transient"
    assert view["inner_failure"]["inner_failure"] is None
    assert failure_json(None) is None
