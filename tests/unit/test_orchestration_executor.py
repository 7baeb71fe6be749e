"""Example tests of the orchestration replay executor: hand-built histories in, actions out.

In the manner of durabletask-python's executor tests, each test writes a small orchestrator, builds
the history a partition would have recorded (every step starts with ``OrchestratorStarted``, whose
``ts`` is the step's time), feeds the new events of one step and checks the actions, status and
output of that step. No Redis, no clock, no event loop.

``execute(orchestrator, old, new)`` rebuilds an executor by replaying ``old`` (as after a cache
miss) and runs one step with ``new``. ``Run`` drives one orchestration over several steps and keeps
the recorded history like a partition does; the ``runner`` fixture runs those scenarios twice: with
a live (cached) executor, and with one rebuilt by replay before every step.
"""

from __future__ import annotations

import copy
import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from durable import EntityId, RetryPolicy, TaskFailedError, when_all, when_any
from durable._core import events as ev
from durable._core.context import OrchestrationContext
from durable._core.executor import OrchestrationExecutor, StepResult
from durable._core.model import OrchestrationStatus, ms_to_datetime
from durable._core.registry import name_of
from durable._core.serialization import decode, encode

INSTANCE = "order-42"
ORCH = "orch"
T0 = 1_700_000_000_000
T1 = T0 + 1_000
T2 = T0 + 2_000
T3 = T0 + 3_000

Status = OrchestrationStatus


# -- history events --------------------------------------------------------------------------------
def orchestrator_started(ts: int) -> ev.Event:
    return {"k": ev.ORCHESTRATOR_STARTED, "ts": ts}


def execution_started(input: Any = None, name: str = ORCH) -> ev.Event:
    return {"k": ev.EXECUTION_STARTED, "name": name, "input": encode(input), "exec": "x1", "parent": None}


def task_scheduled(tid: int, name: str, input: Any = None) -> ev.Event:
    return {"k": ev.TASK_SCHEDULED, "tid": tid, "name": name, "input": encode(input)}


def task_completed(tid: int, result: Any = None) -> ev.Event:
    return {"k": ev.TASK_COMPLETED, "tid": tid, "result": encode(result)}


def failure(message: str, error_type: str = "RuntimeError") -> dict[str, Any]:
    return {"message": message, "error_type": error_type, "stack_trace": None}


def task_failed(tid: int, message: str, error_type: str = "RuntimeError") -> ev.Event:
    return {"k": ev.TASK_FAILED, "tid": tid, "failure": failure(message, error_type)}


def timer_created(tid: int, fire_at: int) -> ev.Event:
    return {"k": ev.TIMER_CREATED, "tid": tid, "fire_at": fire_at}


def timer_fired(tid: int, fire_at: int) -> ev.Event:
    return {"k": ev.TIMER_FIRED, "tid": tid, "fire_at": fire_at}


def sub_created(tid: int, name: str, iid: str, input: Any = None) -> ev.Event:
    return {"k": ev.SUB_CREATED, "tid": tid, "name": name, "iid": iid, "input": encode(input)}


def sub_completed(tid: int, result: Any) -> ev.Event:
    return {"k": ev.SUB_COMPLETED, "tid": tid, "result": encode(result)}


def sub_failed(tid: int, message: str, error_type: str) -> ev.Event:
    return {"k": ev.SUB_FAILED, "tid": tid, "failure": failure(message, error_type)}


def event_raised(name: str, value: Any = None) -> ev.Event:
    return {"k": ev.EVENT_RAISED, "name": name, "input": encode(value)}


def suspended(reason: str | None = None) -> ev.Event:
    return {"k": ev.EXECUTION_SUSPENDED, "reason": reason}


def resumed(reason: str | None = None) -> ev.Event:
    return {"k": ev.EXECUTION_RESUMED, "reason": reason}


def terminated(output: Any = None) -> ev.Event:
    return {"k": ev.EXECUTION_TERMINATED, "output": None if output is None else encode(output)}


def entity_signaled(tid: int, entity: str, op: str, input: Any = None) -> ev.Event:
    return {"k": ev.ENTITY_SIGNALED, "tid": tid, "name": op, "entity": entity, "input": encode(input)}


def entity_called(tid: int, entity: str, op: str, rid: str, input: Any = None) -> ev.Event:
    return {
        "k": ev.ENTITY_CALLED,
        "tid": tid,
        "name": op,
        "entity": entity,
        "input": encode(input),
        "rid": rid,
    }


def lock_requested(tid: int, entities: list[str], rid: str) -> ev.Event:
    return {"k": ev.ENTITY_LOCK_REQUESTED, "tid": tid, "entities": entities, "rid": rid}


def entity_responded(rid: str, result: Any = None, *, fail: dict[str, Any] | None = None) -> ev.Event:
    if fail is not None:
        return {"k": ev.ENTITY_RESPONDED, "rid": rid, "failure": fail}
    return {"k": ev.ENTITY_RESPONDED, "rid": rid, "result": encode(result)}


def lock_granted(rid: str) -> ev.Event:
    """The last entity of a lock chain answers with the request id alone."""
    return {"k": ev.ENTITY_RESPONDED, "rid": rid}


def entity_rid(ts: int, tid: int) -> str:
    """The request id the context derives for an entity call or lock request of this instance."""
    return f"{INSTANCE}:{ts:x}:{tid}"


# -- running the executor --------------------------------------------------------------------------
def new_executor(
    orchestrator: Callable[..., Any], *, instance_id: str = INSTANCE, name: str = ORCH
) -> OrchestrationExecutor:
    """An executor wired as the partition wires it (registry lookup, name_of, context factory)."""
    registry = {name: orchestrator}
    return OrchestrationExecutor(instance_id, registry.get, name_of, OrchestrationContext)


def execute(
    orchestrator: Callable[..., Any],
    old_events: list[ev.Event],
    new_events: list[ev.Event],
    *,
    instance_id: str = INSTANCE,
) -> StepResult:
    """Replay ``old_events`` into a fresh executor, then run one step with ``new_events``."""
    executor = new_executor(orchestrator, instance_id=instance_id)
    executor.replay(copy.deepcopy(old_events))
    return executor.execute(copy.deepcopy(new_events))


class Run:
    """One orchestration driven step by step; the history is what the steps recorded."""

    def __init__(self, orchestrator: Callable[..., Any], *, rebuild: bool) -> None:
        self.orchestrator = orchestrator
        self.rebuild = rebuild
        self.history: list[ev.Event] = []
        self.executor = new_executor(orchestrator)

    def start(self, input: Any = None, ts: int = T0) -> StepResult:
        return self.step(ts, execution_started(input))

    def step(self, ts: int, *events: ev.Event) -> StepResult:
        if self.rebuild:  # a cache miss: the executor is rebuilt from the recorded history
            self.executor = new_executor(self.orchestrator)
            self.executor.replay(copy.deepcopy(self.history))
        result = self.executor.execute([orchestrator_started(ts), *copy.deepcopy(events)])
        self.history.extend(copy.deepcopy(result.new_events))
        assert [e["eid"] for e in self.history] == list(range(len(self.history)))
        return result


@pytest.fixture(params=["cached", "rebuilt"])
def runner(request: pytest.FixtureRequest) -> Callable[[Callable[..., Any]], Run]:
    return lambda orchestrator: Run(orchestrator, rebuild=request.param == "rebuilt")


def kinds(events: list[ev.Event]) -> list[str]:
    return [e["k"] for e in events]


def without_eid(events: list[ev.Event]) -> list[ev.Event]:
    return [{k: v for k, v in e.items() if k != "eid"} for e in events]


def completed_event(
    status: str, eid: int, ts: int, result: bytes | None = None, fail: Any = None
) -> ev.Event:
    return {
        "k": ev.EXECUTION_COMPLETED,
        "status": status,
        "result": result,
        "failure": fail,
        "eid": eid,
        "ts": ts,
    }


def charge(ctx: Any, amount: Any) -> Any:
    """An activity function: orchestrators may pass it instead of its name."""
    return f"receipt-{amount}"


# -- start and output ------------------------------------------------------------------------------
def test_plain_function_orchestrator_completes_in_the_first_step() -> None:
    def greet(ctx: Any, name: str) -> str:
        return f"Hello, {name}!"

    result = execute(greet, [], [orchestrator_started(T0), execution_started("Ada")])

    assert result.status == Status.COMPLETED
    assert decode(result.output) == "Hello, Ada!"
    assert result.failure is None
    assert result.actions == []
    assert result.continue_as_new is None
    assert result.new_events == [
        {"k": ev.ORCHESTRATOR_STARTED, "ts": T0, "eid": 0},
        {**execution_started("Ada"), "eid": 1, "ts": T0},
        completed_event("COMPLETED", 2, T0, encode("Hello, Ada!")),
    ]


def test_async_orchestrator_is_driven_like_a_generator() -> None:
    async def orch(ctx: Any, _: Any) -> Any:
        first = await ctx.call_activity("first")
        return [first, await ctx.call_activity("second", input=first)]

    old = [orchestrator_started(T0), execution_started(), task_scheduled(0, "first")]
    step = execute(orch, old, [orchestrator_started(T1), task_completed(0, 1)])
    assert step.actions == [{**task_scheduled(1, "second", 1), "eid": 5, "ts": T1}]

    old += [orchestrator_started(T1), task_completed(0, 1), task_scheduled(1, "second", 1)]
    done = execute(orch, old, [orchestrator_started(T2), task_completed(1, 2)])
    assert done.status == Status.COMPLETED
    assert decode(done.output) == [1, 2]


# -- activities ------------------------------------------------------------------------------------
def checkout(ctx: Any, order: dict[str, Any]) -> Any:
    receipt = yield ctx.call_activity(charge, input={"amount": order["total"]})
    label = yield ctx.call_activity("ship", input=receipt)
    return {"receipt": receipt, "label": label}


CHECKOUT_STEP1 = [
    orchestrator_started(T0),
    execution_started({"total": 30}),
    task_scheduled(0, "charge", {"amount": 30}),
]


def test_call_activity_produces_a_task_scheduled_action() -> None:
    result = execute(checkout, [], [orchestrator_started(T0), execution_started({"total": 30})])

    assert result.status == Status.RUNNING
    assert result.output is None
    # the function is scheduled by its registered name, with the encoded input, as task 0
    assert result.actions == [
        {
            "k": ev.TASK_SCHEDULED,
            "name": "charge",
            "input": encode({"amount": 30}),
            "tid": 0,
            "eid": 2,
            "ts": T0,
        }
    ]
    assert result.new_events[2] == result.actions[0]
    assert kinds(result.new_events) == [ev.ORCHESTRATOR_STARTED, ev.EXECUTION_STARTED, ev.TASK_SCHEDULED]


def test_activity_completion_resumes_the_code_with_the_result() -> None:
    result = execute(checkout, CHECKOUT_STEP1, [orchestrator_started(T1), task_completed(0, "rcpt-1")])

    assert result.status == Status.RUNNING
    assert result.actions == [
        {"k": ev.TASK_SCHEDULED, "name": "ship", "input": encode("rcpt-1"), "tid": 1, "eid": 5, "ts": T1}
    ]
    assert kinds(result.new_events) == [ev.ORCHESTRATOR_STARTED, ev.TASK_COMPLETED, ev.TASK_SCHEDULED]
    assert result.new_events[1] == {**task_completed(0, "rcpt-1"), "eid": 4, "ts": T1}

    old = [
        *CHECKOUT_STEP1,
        orchestrator_started(T1),
        task_completed(0, "rcpt-1"),
        task_scheduled(1, "ship", "rcpt-1"),
    ]
    done = execute(checkout, old, [orchestrator_started(T2), task_completed(1, "label-9")])
    assert done.status == Status.COMPLETED
    assert decode(done.output) == {"receipt": "rcpt-1", "label": "label-9"}
    assert done.actions == []
    assert done.new_events[-1] == completed_event("COMPLETED", 8, T2, done.output)


def test_duplicate_completion_is_not_applied_nor_recorded() -> None:
    new = [orchestrator_started(T1), task_completed(0, "rcpt-1"), task_completed(0, "rcpt-2")]
    result = execute(checkout, CHECKOUT_STEP1, new)

    assert kinds(result.new_events) == [ev.ORCHESTRATOR_STARTED, ev.TASK_COMPLETED, ev.TASK_SCHEDULED]
    assert decode(result.new_events[1]["result"]) == "rcpt-1"
    assert result.actions == [{**task_scheduled(1, "ship", "rcpt-1"), "eid": 5, "ts": T1}]


def test_activity_failure_is_raised_as_task_failed_error() -> None:
    def orch(ctx: Any, _: Any) -> Any:
        try:
            yield ctx.call_activity("charge")
        except TaskFailedError as exc:
            return {"text": str(exc), "type": exc.details.error_type, "message": exc.details.message}
        return "paid"

    old = [orchestrator_started(T0), execution_started(), task_scheduled(0, "charge")]
    result = execute(orch, old, [orchestrator_started(T1), task_failed(0, "card declined", "PaymentError")])

    assert result.status == Status.COMPLETED
    assert decode(result.output) == {
        "text": "activity 'charge' failed: card declined",
        "type": "PaymentError",
        "message": "card declined",
    }


def test_timer_completes_when_fired_and_time_is_the_step_time() -> None:
    def orch(ctx: Any, _: Any) -> Any:
        yield ctx.create_timer(dt.timedelta(minutes=5))
        return ctx.current_utc_datetime

    first = execute(orch, [], [orchestrator_started(T0), execution_started()])
    assert first.actions == [{"k": ev.TIMER_CREATED, "fire_at": T0 + 300_000, "tid": 0, "eid": 2, "ts": T0}]

    old = [orchestrator_started(T0), execution_started(), timer_created(0, T0 + 300_000)]
    fired_at = T0 + 300_123
    done = execute(orch, old, [orchestrator_started(fired_at), timer_fired(0, T0 + 300_000)])
    assert done.status == Status.COMPLETED
    assert decode(done.output) == ms_to_datetime(fired_at)


# -- suspend and resume ----------------------------------------------------------------------------
def approval_flow(ctx: Any, _: Any) -> Any:
    draft = yield ctx.call_activity("draft")
    verdict = yield ctx.wait_for_external_event("verdict")
    return (yield ctx.call_activity("publish", input=[draft, verdict, ctx.current_utc_datetime.isoformat()]))


def test_events_received_while_suspended_are_applied_only_after_resume(runner: Callable[..., Run]) -> None:
    run = runner(approval_flow)
    assert run.start().actions == [{**task_scheduled(0, "draft"), "eid": 2, "ts": T0}]

    paused = run.step(T1, suspended("maintenance"), task_completed(0, "d1"), event_raised("verdict", "ok"))
    assert paused.status == Status.SUSPENDED
    assert paused.actions == []
    assert paused.output is None
    # recorded in arrival order, but the code has not seen them
    assert kinds(paused.new_events) == [
        ev.ORCHESTRATOR_STARTED,
        ev.EXECUTION_SUSPENDED,
        ev.TASK_COMPLETED,
        ev.EVENT_RAISED,
    ]

    still = run.step(T2)
    assert still.status == Status.SUSPENDED
    assert still.actions == []

    resumed_step = run.step(T3, resumed())
    assert resumed_step.status == Status.RUNNING
    # both buffered events were applied at resume: the code ran in the resume step (time T3)
    publish_input = ["d1", "ok", ms_to_datetime(T3).isoformat()]
    assert without_eid(resumed_step.actions) == [{**task_scheduled(1, "publish", publish_input), "ts": T3}]

    done = run.step(T3 + 1, task_completed(1, "published"))
    assert done.status == Status.COMPLETED
    assert decode(done.output) == "published"


def test_terminate_while_suspended_ends_the_execution(runner: Callable[..., Run]) -> None:
    run = runner(approval_flow)
    run.start()
    run.step(T1, suspended(), task_completed(0, "d1"))

    result = run.step(T2, terminated("cancelled"))
    assert result.status == Status.TERMINATED
    assert decode(result.output) == "cancelled"
    assert result.actions == []


# -- external events -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("waited", "raised"),
    [("Approval", "approval"), ("Approval", "APPROVAL"), ("approval", "ApProVaL"), ("Straße", "STRASSE")],
)
def test_external_event_names_are_case_insensitive(waited: str, raised: str) -> None:
    def orch(ctx: Any, _: Any) -> Any:
        return (yield ctx.wait_for_external_event(waited))

    old = [orchestrator_started(T0), execution_started()]
    new = [orchestrator_started(T1), event_raised("unrelated", 0), event_raised(raised, {"by": "ops"})]
    result = execute(orch, old, new)

    assert result.status == Status.COMPLETED
    assert decode(result.output) == {"by": "ops"}


def test_event_raised_before_the_wait_is_buffered_case_insensitively() -> None:
    def orch(ctx: Any, _: Any) -> Any:
        yield ctx.call_activity("prepare")
        first = yield ctx.wait_for_external_event("APPROVAL")
        second = yield ctx.wait_for_external_event("Approval")
        return [first, second]

    old = [orchestrator_started(T0), execution_started(), task_scheduled(0, "prepare")]
    new = [
        orchestrator_started(T1),
        event_raised("approval", "first"),
        event_raised("approvals", "other name"),
        event_raised("aPPROVAL", "second"),
        task_completed(0),
    ]
    result = execute(orch, old, new)

    assert result.status == Status.COMPLETED
    assert decode(result.output) == ["first", "second"]  # in arrival order, one event per wait


def test_event_with_another_name_does_not_complete_the_wait() -> None:
    def orch(ctx: Any, _: Any) -> Any:
        return (yield ctx.wait_for_external_event("approval"))

    old = [orchestrator_started(T0), execution_started()]
    result = execute(orch, old, [orchestrator_started(T1), event_raised("approvals", 1)])

    assert result.status == Status.RUNNING
    assert result.output is None
    assert kinds(result.new_events) == [ev.ORCHESTRATOR_STARTED, ev.EVENT_RAISED]


# -- terminate -------------------------------------------------------------------------------------
def test_terminate_ends_the_execution_with_its_output_and_closes_the_code() -> None:
    closed: list[str] = []

    def orch(ctx: Any, _: Any) -> Any:
        try:
            return (yield ctx.wait_for_external_event("never"))
        finally:
            closed.append("finally ran")

    old = [orchestrator_started(T0), execution_started()]
    new = [orchestrator_started(T1), terminated("stopped by operator"), event_raised("never", 1)]
    result = execute(orch, old, new)

    assert result.status == Status.TERMINATED
    assert result.output == encode("stopped by operator")
    assert result.failure is None
    assert result.actions == []
    # the event after the termination is neither applied nor recorded
    assert result.new_events == [
        {"k": ev.ORCHESTRATOR_STARTED, "ts": T1, "eid": 2},
        {**terminated("stopped by operator"), "eid": 3, "ts": T1},
        completed_event("TERMINATED", 4, T1, encode("stopped by operator")),
    ]
    assert closed == ["finally ran"]


def test_terminate_drops_the_actions_of_its_step() -> None:
    new = [orchestrator_started(T1), task_completed(0, "rcpt-1"), terminated()]
    result = execute(checkout, CHECKOUT_STEP1, new)

    assert result.status == Status.TERMINATED
    assert result.output is None
    assert result.actions == []  # 'ship' was scheduled by the code, but never leaves the step
    assert kinds(result.new_events) == [
        ev.ORCHESTRATOR_STARTED,
        ev.TASK_COMPLETED,
        ev.EXECUTION_TERMINATED,
        ev.EXECUTION_COMPLETED,
    ]


# -- replay-stable values --------------------------------------------------------------------------
def test_new_uuid_and_current_time_are_stable_across_replay() -> None:
    seen: list[tuple[str, bool]] = []

    def orch(ctx: Any, _: Any) -> Any:
        before = [ctx.new_uuid(), ctx.new_uuid(), ctx.current_utc_datetime]
        seen.append(("before", ctx.is_replaying))
        yield ctx.call_activity("work")
        after = [ctx.new_uuid(), ctx.current_utc_datetime]
        seen.append(("after", ctx.is_replaying))
        return [before, after]

    live = new_executor(orch)
    step1 = live.execute([orchestrator_started(T0), execution_started()])
    step2_events = [orchestrator_started(T0 + 1_234), task_completed(0)]
    step2 = live.execute(copy.deepcopy(step2_events))
    assert step2.status == Status.COMPLETED
    before, after = decode(step2.output)
    u1, u2, t1 = before
    u3, t2 = after
    assert len({u1, u2, u3}) == 3
    assert all(uuid.UUID(u).version == 5 for u in (u1, u2, u3))
    assert t1 == ms_to_datetime(T0)  # the time of the step the code ran in
    assert t2 == ms_to_datetime(T0 + 1_234)
    assert seen == [("before", False), ("after", False)]

    # a cache miss: the executor is rebuilt from step 1's history and runs step 2 again
    rebuilt = new_executor(orch)
    rebuilt.replay(copy.deepcopy(step1.new_events))
    again = rebuilt.execute(copy.deepcopy(step2_events))
    assert again.output == step2.output  # byte for byte: same uuids, same times
    assert seen[2:] == [("before", True), ("after", False)]

    # the ids are per instance: the same history replayed for another instance gives others
    other = execute(orch, step1.new_events, step2_events, instance_id="order-43")
    other_before, other_after = decode(other.output)
    assert other_before[2] == t1 and other_after[1] == t2
    assert {other_before[0], other_before[1], other_after[0]}.isdisjoint({u1, u2, u3})


# -- when_any / when_all ---------------------------------------------------------------------------
def race(ctx: Any, _: Any) -> Any:
    primary = ctx.call_activity("primary")
    backup = ctx.call_activity("backup")
    winner = yield when_any([primary, backup])
    source = "primary" if winner is primary else "backup"
    confirmation = yield ctx.call_activity("confirm", input=winner.get_result())
    return [source, winner.get_result(), confirmation]


RACE_STEP1 = [
    orchestrator_started(T0),
    execution_started(),
    task_scheduled(0, "primary"),
    task_scheduled(1, "backup"),
]


def test_when_any_schedules_every_child() -> None:
    result = execute(race, [], RACE_STEP1[:2])
    assert result.actions == [
        {**task_scheduled(0, "primary"), "eid": 2, "ts": T0},
        {**task_scheduled(1, "backup"), "eid": 3, "ts": T0},
    ]


def test_when_any_first_completion_wins_and_later_ones_do_not_change_it() -> None:
    both = [orchestrator_started(T1), task_completed(1, "from-backup"), task_completed(0, "from-primary")]
    step2 = execute(race, RACE_STEP1, both)
    # the backup completed first in this step; the primary's completion is recorded, not used
    assert kinds(step2.new_events) == [
        ev.ORCHESTRATOR_STARTED,
        ev.TASK_COMPLETED,
        ev.TASK_COMPLETED,
        ev.TASK_SCHEDULED,
    ]
    assert step2.actions == [{**task_scheduled(2, "confirm", "from-backup"), "eid": 7, "ts": T1}]

    # the same with the loser completing in a later step
    old = [
        *RACE_STEP1,
        orchestrator_started(T1),
        task_completed(1, "from-backup"),
        task_scheduled(2, "confirm", "from-backup"),
    ]
    late = [orchestrator_started(T2), task_completed(0, "late primary"), task_completed(2, "confirmed")]
    done = execute(race, old, late)
    assert done.status == Status.COMPLETED
    assert decode(done.output) == ["backup", "from-backup", "confirmed"]


def test_when_any_with_a_timer_times_out() -> None:
    def orch(ctx: Any, _: Any) -> Any:
        reply = ctx.wait_for_external_event("reply")
        timeout = ctx.create_timer(dt.timedelta(seconds=30))
        winner = yield when_any([reply, timeout])
        return "timed out" if winner is timeout else winner.get_result()

    first = execute(orch, [], [orchestrator_started(T0), execution_started()])
    # waiting for an event is no action; the timer is task 0
    assert first.actions == [{"k": ev.TIMER_CREATED, "fire_at": T0 + 30_000, "tid": 0, "eid": 2, "ts": T0}]

    old = [orchestrator_started(T0), execution_started(), timer_created(0, T0 + 30_000)]
    new = [orchestrator_started(T0 + 30_000), timer_fired(0, T0 + 30_000), event_raised("reply", "too late")]
    assert decode(execute(orch, old, new).output) == "timed out"


def fan_out(ctx: Any, n: int) -> Any:
    return (yield when_all([ctx.call_activity("square", input=i) for i in range(1, n + 1)]))


FAN_OUT_STEP1 = [
    orchestrator_started(T0),
    execution_started(3),
    task_scheduled(0, "square", 1),
    task_scheduled(1, "square", 2),
    task_scheduled(2, "square", 3),
]


def test_when_all_fans_out_then_fans_in_in_call_order() -> None:
    first = execute(fan_out, [], FAN_OUT_STEP1[:2])
    assert first.actions == [
        {**task_scheduled(0, "square", 1), "eid": 2, "ts": T0},
        {**task_scheduled(1, "square", 2), "eid": 3, "ts": T0},
        {**task_scheduled(2, "square", 3), "eid": 4, "ts": T0},
    ]

    partial = [orchestrator_started(T1), task_completed(2, 9), task_completed(0, 1)]
    waiting = execute(fan_out, FAN_OUT_STEP1, partial)
    assert waiting.status == Status.RUNNING
    assert waiting.actions == []
    assert waiting.output is None

    done = execute(fan_out, FAN_OUT_STEP1 + partial, [orchestrator_started(T2), task_completed(1, 4)])
    assert done.status == Status.COMPLETED
    assert decode(done.output) == [1, 4, 9]  # results in call order, not completion order


def test_when_all_fails_with_the_first_child_failure() -> None:
    def orch(ctx: Any, _: Any) -> Any:
        try:
            yield when_all([ctx.call_activity("a"), ctx.call_activity("b"), ctx.call_activity("c")])
        except TaskFailedError as exc:
            return [str(exc), exc.details.error_type]
        return "all done"

    old = [orchestrator_started(T0), execution_started()] + [
        task_scheduled(i, n) for i, n in enumerate("abc")
    ]
    new = [orchestrator_started(T1), task_completed(0), task_failed(1, "b broke", "ValueError")]
    result = execute(orch, old, new)

    assert result.status == Status.COMPLETED  # without waiting for "c"
    assert decode(result.output) == ["activity 'b' failed: b broke", "ValueError"]


def test_when_all_of_nothing_completes_at_once() -> None:
    def orch(ctx: Any, _: Any) -> Any:
        return (yield when_all([]))

    result = execute(orch, [], [orchestrator_started(T0), execution_started()])
    assert result.status == Status.COMPLETED
    assert decode(result.output) == []


# -- retries ---------------------------------------------------------------------------------------
RETRY = RetryPolicy(
    first_retry_interval=dt.timedelta(seconds=5), max_number_of_attempts=3, backoff_coefficient=2.0
)


def flaky(ctx: Any, _: Any) -> Any:
    return (yield ctx.call_activity("flaky", input="x", retry_policy=RETRY))


def retry_timer(tid: int, fire_at: int, ts: int, call: int = 0) -> ev.Event:
    return {"k": ev.TIMER_CREATED, "fire_at": fire_at, "retry": True, "call": call, "tid": tid, "ts": ts}


def retry_scheduled(tid: int, attempt: int, ts: int, call: int = 0) -> ev.Event:
    """A retry of call ``call``: the same call id (stable idempotency key), its attempt number."""
    return {**task_scheduled(tid, "flaky", "x"), "call": call, "attempt": attempt, "ts": ts}


def test_failed_attempt_schedules_a_retry_timer_then_a_new_attempt(runner: Callable[..., Run]) -> None:
    run = runner(flaky)
    assert without_eid(run.start().actions) == [{**task_scheduled(0, "flaky", "x"), "ts": T0}]

    failed = run.step(T1, task_failed(0, "boom 1"))
    assert failed.status == Status.RUNNING
    assert without_eid(failed.actions) == [retry_timer(1, T1 + 5_000, T1)]

    retry = run.step(T1 + 5_000, timer_fired(1, T1 + 5_000))
    assert without_eid(retry.actions) == [retry_scheduled(2, 2, T1 + 5_000)]

    done = run.step(T1 + 6_000, task_completed(2, "finally"))
    assert done.status == Status.COMPLETED
    assert decode(done.output) == "finally"


def test_exhausted_retries_fail_the_call(runner: Callable[..., Run]) -> None:
    run = runner(flaky)
    run.start()
    assert without_eid(run.step(T1, task_failed(0, "boom 1")).actions) == [retry_timer(1, T1 + 5_000, T1)]
    t = T1 + 5_000
    assert without_eid(run.step(t, timer_fired(1, t)).actions) == [retry_scheduled(2, 2, t)]
    # the second wait doubles (backoff coefficient 2)
    t += 1_000
    assert without_eid(run.step(t, task_failed(2, "boom 2")).actions) == [retry_timer(3, t + 10_000, t)]
    t += 10_000
    assert without_eid(run.step(t, timer_fired(3, t)).actions) == [retry_scheduled(4, 3, t)]

    t += 1_000
    result = run.step(t, task_failed(4, "boom 3", "IOError"))  # the third and last attempt
    assert result.status == Status.FAILED
    assert result.actions == []
    assert result.failure is not None
    assert result.failure.error_type == "TaskFailedError"
    assert result.failure.message == "activity 'flaky' failed: boom 3"
    assert kinds(result.new_events) == [ev.ORCHESTRATOR_STARTED, ev.TASK_FAILED, ev.EXECUTION_COMPLETED]


def test_retry_timeout_stops_retrying(runner: Callable[..., Run]) -> None:
    policy = RetryPolicy(
        first_retry_interval=dt.timedelta(seconds=10),
        max_number_of_attempts=5,
        retry_timeout=dt.timedelta(seconds=15),
    )

    def orch(ctx: Any, _: Any) -> Any:
        try:
            return (yield ctx.call_activity("slow", retry_policy=policy))
        except TaskFailedError as exc:
            return f"gave up: {exc.details.message}"

    run = runner(orch)
    run.start()
    # 1s elapsed + 10s wait <= 15s: retry
    assert without_eid(run.step(T1, task_failed(0, "first")).actions) == [retry_timer(1, T1 + 10_000, T1)]
    t = T1 + 10_000
    run.step(t, timer_fired(1, t))
    # 12s elapsed + 10s wait > 15s: no more attempts
    result = run.step(T0 + 12_000, task_failed(2, "second"))
    assert result.actions == []
    assert result.status == Status.COMPLETED
    assert decode(result.output) == "gave up: second"


# -- sub-orchestrations ----------------------------------------------------------------------------
def ship_order(ctx: Any, order: Any) -> Any:
    try:
        tracking = yield ctx.call_sub_orchestrator("ship", input=order)
    except TaskFailedError as exc:
        return {"failed": exc.details.error_type, "message": str(exc)}
    return {"tracking": tracking}


SHIP_STEP1 = [
    orchestrator_started(T0),
    execution_started({"id": 7}),
    sub_created(0, "ship", f"{INSTANCE}:0000", {"id": 7}),
]


def test_sub_orchestration_action_gets_a_derived_instance_id() -> None:
    result = execute(ship_order, [], SHIP_STEP1[:2])
    assert result.actions == [
        {
            "k": ev.SUB_CREATED,
            "name": "ship",
            "input": encode({"id": 7}),
            "iid": "order-42:0000",
            "tid": 0,
            "eid": 2,
            "ts": T0,
        }
    ]


def test_sub_orchestration_with_explicit_instance_id_and_function_name() -> None:
    def label(ctx: Any, _: Any) -> str:
        return "child"

    def orch(ctx: Any, _: Any) -> Any:
        yield ctx.call_activity("first")
        return (yield ctx.call_sub_orchestrator(label, input=1, instance_id="label-7"))

    old = [orchestrator_started(T0), execution_started(), task_scheduled(0, "first")]
    result = execute(orch, old, [orchestrator_started(T1), task_completed(0)])
    assert without_eid(result.actions) == [{**sub_created(1, "label", "label-7", 1), "ts": T1}]


def test_sub_orchestration_completion_returns_its_output() -> None:
    result = execute(ship_order, SHIP_STEP1, [orchestrator_started(T1), sub_completed(0, "TRACK-1")])
    assert result.status == Status.COMPLETED
    assert decode(result.output) == {"tracking": "TRACK-1"}


def test_sub_orchestration_failure_can_be_caught() -> None:
    new = [orchestrator_started(T1), sub_failed(0, "out of stock", "StockError")]
    result = execute(ship_order, SHIP_STEP1, new)
    assert result.status == Status.COMPLETED
    assert decode(result.output) == {
        "failed": "StockError",
        "message": "sub-orchestration 'ship' failed: out of stock",
    }


def test_uncaught_sub_orchestration_failure_fails_the_parent() -> None:
    def orch(ctx: Any, order: Any) -> Any:
        return (yield ctx.call_sub_orchestrator("ship", input=order))

    new = [orchestrator_started(T1), sub_failed(0, "out of stock", "StockError")]
    result = execute(orch, SHIP_STEP1, new)
    assert result.status == Status.FAILED
    assert result.failure is not None
    assert result.failure.error_type == "TaskFailedError"
    assert result.failure.message == "sub-orchestration 'ship' failed: out of stock"


# -- continue-as-new -------------------------------------------------------------------------------
def countdown(ctx: Any, n: int) -> Any:
    if n > 0:
        ctx.continue_as_new(n - 1)
        return None
    return "liftoff"


def test_continue_as_new_carries_the_new_input() -> None:
    result = execute(countdown, [], [orchestrator_started(T0), execution_started(2)])

    assert result.status == Status.CONTINUED_AS_NEW
    assert result.continue_as_new == (encode(1), [])
    assert result.output == encode(1)
    assert result.actions == []
    assert result.new_events[-1] == completed_event("CONTINUED_AS_NEW", 2, T0, encode(1))


def test_continue_as_new_generations_until_completion() -> None:
    """Restart as the partition does: a fresh executor started with the carried input."""
    inputs: list[Any] = []
    data: bytes | None = encode(3)
    while True:
        inputs.append(decode(data))
        executor = new_executor(countdown)
        started = execution_started() | {"input": data}
        result = executor.execute([orchestrator_started(T0), started])
        if result.continue_as_new is None:
            break
        data = result.continue_as_new[0]
    assert inputs == [3, 2, 1, 0]
    assert result.status == Status.COMPLETED
    assert decode(result.output) == "liftoff"


@pytest.mark.parametrize("save_events", [True, False])
def test_continue_as_new_carries_unconsumed_events_with_save_events(save_events: bool) -> None:
    def orch(ctx: Any, seen: list[Any]) -> Any:
        yield ctx.call_activity("work")
        tick = yield ctx.wait_for_external_event("tick")
        ctx.continue_as_new([*seen, tick], save_events=save_events)

    old = [orchestrator_started(T0), execution_started([]), task_scheduled(0, "work")]
    new = [
        orchestrator_started(T1),
        event_raised("tick", 1),
        event_raised("Tick", 2),
        event_raised("other", "x"),
        task_completed(0),
    ]
    result = execute(orch, old, new)

    assert result.status == Status.CONTINUED_AS_NEW
    carried = [("Tick", encode(2)), ("other", encode("x"))] if save_events else []
    # the first tick was consumed; the rest keep their original names
    assert result.continue_as_new == (encode([1]), carried)


def test_continue_as_new_carries_events_later_in_the_same_step() -> None:
    def orch(ctx: Any, seen: list[Any]) -> Any:
        tick = yield ctx.wait_for_external_event("tick")
        ctx.continue_as_new([*seen, tick], save_events=True)

    old = [orchestrator_started(T0), execution_started([])]
    new = [orchestrator_started(T1), event_raised("tick", 1), event_raised("tick", 2)]
    result = execute(orch, old, new)

    assert result.status == Status.CONTINUED_AS_NEW
    # the second tick arrived in the same step, after the code consumed the first one: it is
    # carried into the next execution (the partition has already taken it out of the inbox)
    assert result.continue_as_new == (encode([1]), [("tick", encode(2))])


def test_a_terminate_after_the_continue_as_new_point_applies_to_the_next_execution() -> None:
    def orch(ctx: Any, seen: list[Any]) -> Any:
        tick = yield ctx.wait_for_external_event("tick")
        ctx.continue_as_new([*seen, tick])

    old = [orchestrator_started(T0), execution_started([])]
    terminate = {"k": ev.EXECUTION_TERMINATED, "output": encode("stop")}
    new = [orchestrator_started(T1), event_raised("tick", 1), terminate]
    result = execute(orch, old, new)

    assert result.status == Status.CONTINUED_AS_NEW
    assert result.continue_as_new == (encode([1]), [])  # save_events=False: no events carried ...
    assert [e["k"] for e in result.continue_with] == [ev.EXECUTION_TERMINATED]  # ... but the terminate is


# -- entities --------------------------------------------------------------------------------------
COUNTER = "@counter@c1"


def use_counter(ctx: Any, _: Any) -> Any:
    ctx.signal_entity(EntityId("Counter", "c1"), "reset")
    try:
        return (yield ctx.call_entity(COUNTER, "add", input=5))
    except TaskFailedError as exc:
        return ["failed", str(exc), exc.details.error_type]


COUNTER_STEP1 = [
    orchestrator_started(T0),
    execution_started(),
    entity_signaled(0, COUNTER, "reset"),
    entity_called(1, COUNTER, "add", entity_rid(T0, 1), 5),
]


def test_signal_and_call_entity_actions() -> None:
    result = execute(use_counter, [], COUNTER_STEP1[:2])

    assert result.status == Status.RUNNING
    assert result.actions == [
        {
            "k": ev.ENTITY_SIGNALED,
            "name": "reset",
            "entity": COUNTER,
            "input": encode(None),
            "tid": 0,
            "eid": 2,
            "ts": T0,
        },
        {
            "k": ev.ENTITY_CALLED,
            "name": "add",
            "entity": COUNTER,
            "input": encode(5),
            "tid": 1,
            "rid": f"order-42:{T0:x}:1",
            "eid": 3,
            "ts": T0,
        },
    ]


def test_entity_response_completes_the_call() -> None:
    new = [
        orchestrator_started(T1),
        entity_responded("someone-else:1:1", 99),
        entity_responded(entity_rid(T0, 1), 5),
    ]
    result = execute(use_counter, COUNTER_STEP1, new)

    assert result.status == Status.COMPLETED
    assert decode(result.output) == 5
    # a response nobody waits for is not recorded
    assert kinds(result.new_events) == [ev.ORCHESTRATOR_STARTED, ev.ENTITY_RESPONDED, ev.EXECUTION_COMPLETED]
    assert result.new_events[1]["rid"] == entity_rid(T0, 1)


def test_entity_failure_response_fails_the_call() -> None:
    new = [
        orchestrator_started(T1),
        entity_responded(entity_rid(T0, 1), fail=failure("not a number", "TypeError")),
    ]
    result = execute(use_counter, COUNTER_STEP1, new)
    assert decode(result.output) == [
        "failed",
        f"operation 'add' on {COUNTER} failed: not a number",
        "TypeError",
    ]


def test_entity_request_id_from_history_is_authoritative_on_replay() -> None:
    old = [*COUNTER_STEP1[:3], entity_called(1, COUNTER, "add", "recorded-rid", 5)]
    result = execute(use_counter, old, [orchestrator_started(T1), entity_responded("recorded-rid", 6)])
    assert result.status == Status.COMPLETED
    assert decode(result.output) == 6


ACCOUNT_A, ACCOUNT_B = "@account@a", "@account@b"
LOCK_RID = entity_rid(T0, 0)
CALL_RID = entity_rid(T1, 1)


def transfer(ctx: Any, amount: int) -> Any:
    with (yield ctx.lock_entities(ACCOUNT_B, EntityId("Account", "a"))) as lock:
        balance = yield ctx.call_entity(ACCOUNT_A, "withdraw", input=amount)
        ctx.signal_entity(ACCOUNT_B, "deposit", input=amount)
    return [balance, [str(e) for e in lock.entities]]


TRANSFER_STEP1 = [
    orchestrator_started(T0),
    execution_started(10),
    lock_requested(0, [ACCOUNT_A, ACCOUNT_B], LOCK_RID),
]
TRANSFER_STEP2 = [
    orchestrator_started(T1),
    lock_granted(LOCK_RID),
    entity_called(1, ACCOUNT_A, "withdraw", CALL_RID, 10) | {"cs": LOCK_RID},
]


def test_lock_entities_requests_the_locks_in_global_order() -> None:
    result = execute(transfer, [], TRANSFER_STEP1[:2])
    assert result.status == Status.RUNNING
    assert result.actions == [
        {
            "k": ev.ENTITY_LOCK_REQUESTED,
            "entities": [ACCOUNT_A, ACCOUNT_B],
            "tid": 0,
            "rid": LOCK_RID,
            "eid": 2,
            "ts": T0,
        }
    ]


def test_lock_grant_enters_the_critical_section() -> None:
    result = execute(transfer, TRANSFER_STEP1, TRANSFER_STEP2[:2])
    assert result.status == Status.RUNNING
    # calls inside the section carry the lock's request id ("cs")
    assert result.actions == [
        {
            "k": ev.ENTITY_CALLED,
            "name": "withdraw",
            "entity": ACCOUNT_A,
            "input": encode(10),
            "cs": LOCK_RID,
            "tid": 1,
            "rid": CALL_RID,
            "eid": 5,
            "ts": T1,
        }
    ]


def test_leaving_the_critical_section_unlocks() -> None:
    new = [orchestrator_started(T2), entity_responded(CALL_RID, 90)]
    result = execute(transfer, TRANSFER_STEP1 + TRANSFER_STEP2, new)

    assert result.status == Status.COMPLETED
    assert decode(result.output) == [90, [ACCOUNT_A, ACCOUNT_B]]
    assert without_eid(result.actions) == [
        {**entity_signaled(2, ACCOUNT_B, "deposit", 10), "cs": LOCK_RID, "ts": T2},
        {"k": ev.ENTITY_UNLOCKED, "entities": [ACCOUNT_A, ACCOUNT_B], "rid": LOCK_RID, "tid": 3, "ts": T2},
    ]


def test_calling_an_unlocked_entity_in_a_critical_section_fails_and_still_unlocks() -> None:
    def orch(ctx: Any, _: Any) -> Any:
        with (yield ctx.lock_entities(ACCOUNT_A)):
            yield ctx.call_entity(ACCOUNT_B, "get")

    old = [orchestrator_started(T0), execution_started(), lock_requested(0, [ACCOUNT_A], LOCK_RID)]
    result = execute(orch, old, [orchestrator_started(T1), lock_granted(LOCK_RID)])

    assert result.status == Status.FAILED
    assert result.failure is not None
    assert result.failure.error_type == "RuntimeError"
    assert result.failure.message == (
        "inside a critical section an orchestration may only call the locked entities "
        f"({ACCOUNT_A}); {ACCOUNT_B} is not locked"
    )
    assert without_eid(result.actions) == [
        {"k": ev.ENTITY_UNLOCKED, "entities": [ACCOUNT_A], "rid": LOCK_RID, "tid": 1, "ts": T1}
    ]


# -- non-determinism -------------------------------------------------------------------------------
def charge_v2_renamed(ctx: Any, _: Any) -> Any:
    return (yield ctx.call_activity("refund"))


def charge_v2_timer(ctx: Any, _: Any) -> Any:
    yield ctx.create_timer(dt.timedelta(seconds=1))


def charge_v2_inserted(ctx: Any, _: Any) -> Any:
    yield ctx.call_activity("audit")
    return (yield ctx.call_activity("charge"))


def charge_v2_event(ctx: Any, _: Any) -> Any:
    return (yield ctx.wait_for_external_event("charged"))


@pytest.mark.parametrize(
    ("changed", "explanation"),
    [
        (charge_v2_renamed, "but the code now schedules TaskScheduled('refund')"),
        (charge_v2_timer, "but the code now schedules TimerCreated"),
        (charge_v2_inserted, "but the code now schedules TaskScheduled('audit')"),
        (charge_v2_event, "but the code did not schedule it at this point"),
    ],
)
def test_history_that_does_not_match_the_code_fails_with_nondeterminism(
    changed: Callable[..., Any], explanation: str
) -> None:
    # recorded by a version that called "charge" first
    old = [orchestrator_started(T0), execution_started(), task_scheduled(0, "charge")]
    executor = new_executor(changed)
    executor.replay(copy.deepcopy(old))  # replay itself does not raise ...
    result = executor.execute([orchestrator_started(T1), task_completed(0, "paid")])  # ... the step fails

    assert result.status == Status.FAILED
    assert result.nondeterminism is True
    assert result.actions == []
    assert result.output is None
    assert result.failure is not None
    assert result.failure.error_type == "NonDeterminismError"
    assert result.failure.message == (
        f"orchestration 'order-42': history records TaskScheduled('charge') (task 0), {explanation}"
    )
    assert without_eid(result.new_events) == [
        {
            "k": ev.EXECUTION_COMPLETED,
            "status": "FAILED",
            "result": None,
            "failure": result.failure.to_record(),
            "ts": T0,
        }
    ]
    assert executor.is_done


def test_matching_history_replays_without_nondeterminism() -> None:
    result = execute(checkout, CHECKOUT_STEP1, [orchestrator_started(T1), task_completed(0, "r")])
    assert result.nondeterminism is False
    assert result.status == Status.RUNNING


# -- failures of the orchestrator itself -----------------------------------------------------------
def invalid_order(ctx: Any, order: dict[str, Any]) -> Any:
    yield ctx.call_activity("validate")
    raise ValueError(f"order {order['id']} is invalid")


def test_orchestrator_exception_fails_with_failure_details() -> None:
    old = [orchestrator_started(T0), execution_started({"id": 7}), task_scheduled(0, "validate")]
    result = execute(invalid_order, old, [orchestrator_started(T1), task_completed(0)])

    assert result.status == Status.FAILED
    assert result.output is None
    assert result.actions == []
    details = result.failure
    assert details is not None
    assert details.error_type == "ValueError"
    assert details.message == "order 7 is invalid"
    assert details.stack_trace is not None
    assert "in invalid_order" in details.stack_trace
    assert "ValueError: order 7 is invalid" in details.stack_trace
    assert result.new_events[-1] == completed_event("FAILED", 5, T1, None, details.to_record())


def test_plain_function_exception_fails_in_the_first_step() -> None:
    def orch(ctx: Any, order: dict[str, Any]) -> Any:
        return order["missing"]

    result = execute(orch, [], [orchestrator_started(T0), execution_started({})])
    assert result.status == Status.FAILED
    assert result.failure is not None
    assert (result.failure.error_type, result.failure.message) == ("KeyError", "'missing'")


def test_yielding_something_else_than_a_task_fails() -> None:
    def orch(ctx: Any, _: Any) -> Any:
        yield 42

    result = execute(orch, [], [orchestrator_started(T0), execution_started()])
    assert result.status == Status.FAILED
    assert result.failure is not None
    assert result.failure.error_type == "TypeError"
    assert result.failure.message.startswith("orchestrator yielded/awaited int; only durable tasks")


def test_unknown_orchestrator_name_fails() -> None:
    result = execute(checkout, [], [orchestrator_started(T0), execution_started(name="nope")])
    assert result.status == Status.FAILED
    assert result.failure is not None
    assert result.failure.error_type == "OrchestrationNotFoundError"
    assert result.failure.message == "no orchestrator named 'nope' is registered with this worker"
