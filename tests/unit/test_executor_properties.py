"""Property-based tests of the replay executor (reliability test plan T14/T15).

Hypothesis generates small orchestration *programs* -- lists of steps interpreted by one generator
orchestrator: call an activity (with or without a retry policy), create a timer, wait for an
external event, ``when_all`` of k activities, ``when_any`` of an activity and a timer, call a
sub-orchestration, set the custom status, take ``new_uuid()`` or the step time; a program may end
with ``continue_as_new`` for a few generations.  Every failed task is caught and recorded in the
output, so the output shows every result the code saw.

A pure in-memory *driver* plays the outside world, as a partition would: it feeds the executor
one step at a time (``OrchestratorStarted`` first), turns the actions of each step into
deliverable completions (activity results or failures, timer firings, sub-orchestration results)
plus the external events the program waits for, and then delivers them in a random order, in
random batches, with duplicate deliveries, and with random cache evictions (the executor is thrown
away and rebuilt by ``replay(history)`` before a step).  A completion only becomes deliverable
after the step that scheduled it, as in the engine, where dispatch follows the commit.

The oracle (``test_batched_faulty_run_matches_one_event_per_step_reference``)
------------------------------------------------------------------------------
Let ``C`` be the sequence of *applied* completion events of an execution's history (TaskCompleted,
TaskFailed, TimerFired, SubOrchestrationCompleted/Failed, EventRaised) -- the "completion order".
The reference run delivers exactly ``C`` to a fresh executor, one event per step, without faults;
the step delivering ``C[n]`` gets the time of the faulty run's step in which ``C[n]`` was applied
(the code that runs after a completion sees that time in both runs), and the first step, with
``ExecutionStarted`` alone, gets the time of the faulty run's first step.  Then, per execution:

1. ``C`` equals the faulty driver's deliveries with duplicates removed and with whatever followed
   the completion of the execution cut off (duplicates are applied zero times, the rest once);
2. the scheduling events (TaskScheduled, TimerCreated, SubOrchestrationCreated), the completion
   events and the ExecutionCompleted event are equal, field by field (task ids, names, inputs,
   timer due times, sub-orchestration ids, payloads, timestamps), in both histories; only the
   ``eid`` and the interleaving differ, because batching moves ``OrchestratorStarted`` boundaries;
3. the interleaving is the one batching implies: in the reference, a scheduling event follows
   the completion that let the code reach it (``C[n]``); in the faulty run it must follow exactly
   the completions applied up to the end of the step that applied ``C[n]``;
4. both runs published the same last custom status, and both end with the same status and output;
5. histories are well formed: dense ``eid``, each task completed at most once and only after it
   was scheduled, nothing after ExecutionCompleted.

``test_replay_of_any_prefix_then_rest_equals_live_executor`` checks cache-eviction equivalence
exactly: for every step boundary k, an executor rebuilt by replaying the history up to k and fed
the remaining steps produces byte-identical history (OrchestratorStarted and timestamps included),
the same actions and the same results as the executor that was never evicted.

``test_mutated_program_fails_with_nondeterminism`` changes the program at a call that history
has already recorded (rename the activity, turn it into a timer, or insert an activity before it)
and checks that replay turns into a FAILED result caused by NonDeterminismError, with no actions.
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from durable import RetryPolicy, TaskFailedError, when_all, when_any
from durable._core import events as ev
from durable._core.executor import OrchestrationExecutor, StepResult
from durable._core.model import OrchestrationStatus
from durable._core.registry import name_of
from durable._core.serialization import decode, encode, pack_record

INSTANCE = "inst-1"
T0 = 1_700_000_000_000
COMPLETION_KINDS = frozenset(
    {ev.TASK_COMPLETED, ev.TASK_FAILED, ev.TIMER_FIRED, ev.SUB_COMPLETED, ev.SUB_FAILED, ev.EVENT_RAISED}
)
TASK_COMPLETIONS = COMPLETION_KINDS - {ev.EVENT_RAISED}
EVENT_NAMES = ("go", "GO", "next")  # "go" and "GO" share one queue: event names are case-insensitive

Step = tuple[Any, ...]
Program = tuple[list[Step], int]  # (steps, generations of continue_as_new after the first)

# -- programs ------------------------------------------------------------------------------------
STEP = st.one_of(
    st.tuples(st.just("act"), st.integers(0, 2), st.integers(0, 99)),
    st.tuples(st.just("retry"), st.integers(0, 2), st.integers(0, 99)),
    st.tuples(st.just("timer"), st.integers(1, 600)),
    st.tuples(st.just("event"), st.sampled_from(EVENT_NAMES)),
    st.tuples(st.just("all"), st.integers(1, 5)),
    st.tuples(st.just("any"), st.integers(1, 600)),
    st.tuples(st.just("sub"), st.integers(0, 1)),
    st.tuples(st.just("status"), st.integers(0, 9)),
    st.tuples(st.just("uuid")),
    st.tuples(st.just("now")),
)
PROGRAMS = st.tuples(st.lists(STEP, max_size=8), st.integers(0, 2))
#: programs without retry policies: each call_activity() then schedules exactly one TaskScheduled
PLAIN_PROGRAMS = st.tuples(st.lists(STEP.filter(lambda s: s[0] != "retry"), max_size=8), st.integers(0, 2))
SEEDS = st.integers(0, 2**32 - 1)


def make_orchestrator(program: Program, mutation: tuple[int, str] | None = None) -> Any:
    """The interpreter: one generator orchestrator running ``program``.

    ``mutation=(n, how)`` changes the n-th ``call_activity`` made by an execution: ``rename`` it,
    turn it into a ``timer``, or ``insert`` another activity call before it.
    """
    steps, generations = program
    retry = RetryPolicy(dt.timedelta(seconds=1), max_number_of_attempts=3, backoff_coefficient=2.0)

    def orchestrator(ctx: Any, data: Any) -> Any:
        gen = data["gen"] if data else 0
        out: list[Any] = []
        calls = 0

        def activity(name: str, value: Any, policy: RetryPolicy | None = None) -> Any:
            nonlocal calls
            index, calls = calls, calls + 1
            if mutation is not None and mutation[0] == index:
                if mutation[1] == "rename":
                    name += "-renamed"
                elif mutation[1] == "timer":
                    return ctx.create_timer(dt.timedelta(seconds=1))
                else:
                    ctx.call_activity("inserted", input=None)
            return ctx.call_activity(name, input=value, retry_policy=policy)

        for i, step in enumerate(steps):
            kind = step[0]
            try:
                if kind in ("act", "retry"):
                    policy = retry if kind == "retry" else None
                    out.append((yield activity(f"a{step[1]}", [gen, i, step[2]], policy)))
                elif kind == "timer":
                    yield ctx.create_timer(dt.timedelta(seconds=step[1]))
                    out.append(["timer", ctx.current_utc_datetime.isoformat()])
                elif kind == "event":
                    out.append(["event", (yield ctx.wait_for_external_event(step[1]))])
                elif kind == "all":
                    tasks = [activity(f"a{j % 3}", [gen, i, j]) for j in range(step[1])]
                    out.append((yield when_all(tasks)))
                elif kind == "any":
                    act = activity("a0", [gen, i])
                    timer = ctx.create_timer(dt.timedelta(seconds=step[1]))
                    winner = yield when_any([act, timer])
                    if winner is act:
                        out.append(["any", "activity", act.is_failed or act.get_result()])
                    else:
                        out.append(["any", "timer"])
                elif kind == "sub":
                    out.append((yield ctx.call_sub_orchestrator(f"child{step[1]}", input=[gen, i])))
                elif kind == "status":
                    ctx.set_custom_status({"gen": gen, "step": i, "value": step[1], "seen": len(out)})
                elif kind == "uuid":
                    out.append(["uuid", ctx.new_uuid()])
                elif kind == "now":
                    out.append(["now", ctx.current_utc_datetime.isoformat()])
            except TaskFailedError as exc:
                out.append(["failed", i, exc.details.message])
        if gen < generations:
            ctx.continue_as_new({"gen": gen + 1})
            return None
        return out

    return orchestrator


# -- the simulated environment -------------------------------------------------------------------
@dataclass
class Execution:
    """One execution as driven: its steps (time, events fed) and what came out."""

    history: list[ev.Event] = field(default_factory=list)
    steps: list[tuple[int, list[ev.Event]]] = field(default_factory=list)
    results: list[StepResult] = field(default_factory=list)
    delivered: list[ev.Event] = field(default_factory=list)  # every delivery, duplicates included
    duplicates: list[bool] = field(default_factory=list)  # per delivery: was it a re-delivery?

    @property
    def final(self) -> StepResult:
        return self.results[-1]

    def published_status(self) -> bytes | None:
        status = None
        for res in self.results:
            if res.custom_status_set:
                status = res.custom_status
        return status


def new_executor(orchestrator: Any) -> OrchestrationExecutor:
    return OrchestrationExecutor(INSTANCE, lambda n: orchestrator if n == "prog" else None, name_of)


def started_event(data: bytes | None, generation: int) -> ev.Event:
    return {
        "k": ev.EXECUTION_STARTED,
        "name": "prog",
        "input": data,
        "exec": f"x{generation}",
        "parent": None,
    }


def event_names(program: Program) -> list[str]:
    return [s[1] for s in program[0] if s[0] == "event"]


class World:
    """Turns actions into completions; the random choices come from one seeded generator."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def completion(self, action: ev.Event) -> ev.Event:
        kind, tid = action["k"], action["tid"]
        fail = self.rng.random() < 0.25
        if kind == ev.TASK_SCHEDULED:
            if fail:
                return {"k": ev.TASK_FAILED, "tid": tid, "failure": _failure(f"{action['name']} broke")}
            value = [action["name"], tid, decode(action.get("input"))]
            return {"k": ev.TASK_COMPLETED, "tid": tid, "result": encode(value)}
        if kind == ev.TIMER_CREATED:
            return {"k": ev.TIMER_FIRED, "tid": tid, "fire_at": action["fire_at"]}
        assert kind == ev.SUB_CREATED, action
        if fail:
            return {"k": ev.SUB_FAILED, "tid": tid, "failure": _failure(f"{action['iid']} broke")}
        return {"k": ev.SUB_COMPLETED, "tid": tid, "result": encode(["child", action["iid"]])}


def _failure(message: str) -> dict[str, Any]:
    return {"message": message, "error_type": "Boom", "stack_trace": None}


def drive_faulty(
    program: Program, seed: int, *, max_batch: int = 4, dup_p: float = 0.2, evict_p: float = 0.3
) -> list[Execution]:
    """Run ``program`` to its end with random batching, duplicates and cache evictions."""
    rng = random.Random(seed)
    world = World(rng)
    orchestrator = make_orchestrator(program)
    executions: list[Execution] = []
    data: bytes | None = encode({"gen": 0})
    now = T0
    while True:
        run = Execution()
        executions.append(run)
        executor = new_executor(orchestrator)
        deliverable: list[ev.Event] = []  # completions whose task a committed step scheduled
        waiting = event_names(program)  # external events the program will wait for
        rng.shuffle(waiting)
        batch: list[ev.Event] = [started_event(data, len(executions) - 1)]
        while True:
            # deliveries for this step (the first step starts the execution; events may join it)
            budget = rng.randint(0 if len(run.steps) == 0 else 1, max_batch)
            for _ in range(budget):
                redeliverable = [d for d in run.delivered if d["k"] != ev.EVENT_RAISED]
                if redeliverable and rng.random() < dup_p:
                    # a re-delivered completion (an event raised twice is two events, not a duplicate)
                    batch.append(rng.choice(redeliverable))
                    run.duplicates.append(True)
                elif deliverable or (waiting and rng.random() < 0.5):
                    pool = deliverable if deliverable and (not waiting or rng.random() < 0.8) else None
                    item = pool.pop(rng.randrange(len(pool))) if pool else _external(rng, waiting)
                    batch.append(item)
                    run.duplicates.append(False)
                else:
                    continue
                run.delivered.append(batch[-1])
            if len(run.steps) > 0 and not batch:
                assert deliverable or waiting, "the program waits for something nobody will deliver"
                continue
            if run.steps and rng.random() < evict_p:
                executor = new_executor(orchestrator)
                executor.replay(copy.deepcopy(run.history))
            now += rng.choice((0, 1, 250, 1000, 60_000))
            result = executor.execute([{"k": ev.ORCHESTRATOR_STARTED, "ts": now}, *copy.deepcopy(batch)])
            run.steps.append((now, batch))
            run.results.append(result)
            run.history.extend(copy.deepcopy(result.new_events))
            deliverable.extend(world.completion(a) for a in result.actions if a["k"] != ev.EVENT_SENT)
            batch = []
            if executor.is_done:
                break
        if run.final.continue_as_new is None:
            return executions
        data = run.final.continue_as_new[0]


def _external(rng: random.Random, waiting: list[str]) -> ev.Event:
    name = waiting.pop()
    return {"k": ev.EVENT_RAISED, "name": name, "input": encode(rng.randint(0, 1000))}


def run_steps(
    orchestrator: Any, steps: list[tuple[int, list[ev.Event]]], *, evict_before: int | None = None
) -> Execution:
    """Feed recorded steps to one executor; optionally rebuild it by replay before a given step."""
    run = Execution()
    executor = new_executor(orchestrator)
    for index, (now, batch) in enumerate(steps):
        if index == evict_before:
            executor = new_executor(orchestrator)
            executor.replay(copy.deepcopy(run.history))
        result = executor.execute([{"k": ev.ORCHESTRATOR_STARTED, "ts": now}, *copy.deepcopy(batch)])
        run.steps.append((now, batch))
        run.results.append(result)
        run.history.extend(copy.deepcopy(result.new_events))
        if executor.is_done:
            break
    return run


def reference_steps(run: Execution) -> list[tuple[int, list[ev.Event]]]:
    """One event per step: ExecutionStarted, then every applied completion, at its step's time."""
    steps: list[tuple[int, list[ev.Event]]] = []
    now = 0
    for event in run.history:
        kind = event["k"]
        if kind == ev.ORCHESTRATOR_STARTED:
            now = event["ts"]
        elif kind == ev.EXECUTION_STARTED or kind in COMPLETION_KINDS:
            steps.append((now, [_strip(event, "eid", "ts")]))
    return steps


# -- oracle helpers -----------------------------------------------------------------------------
def _strip(event: ev.Event, *keys: str) -> ev.Event:
    return {k: v for k, v in event.items() if k not in keys}


def check_well_formed(history: list[ev.Event]) -> None:
    assert [e["eid"] for e in history] == list(range(len(history)))
    scheduled: set[int] = set()
    completed: Counter[int] = Counter()
    for e in history:
        if e["k"] in ev.SCHEDULING_EVENTS:
            assert e["tid"] not in scheduled
            scheduled.add(e["tid"])
        elif e["k"] in TASK_COMPLETIONS:
            assert e["tid"] in scheduled, f"completion before scheduling: {e}"
            completed[e["tid"]] += 1
    assert all(n == 1 for n in completed.values()), completed
    ends = [i for i, e in enumerate(history) if e["k"] == ev.EXECUTION_COMPLETED]
    assert ends == [len(history) - 1]


def check_applied_once(run: Execution) -> None:
    """Applied completions = the driver's fresh deliveries, in order, each once; duplicates are
    never applied, and only deliveries of the final step (after the end) may be left out."""
    applied = [_strip(e, "eid", "ts") for e in run.history if e["k"] in COMPLETION_KINDS]
    fresh = [d for d, dup in zip(run.delivered, run.duplicates, strict=True) if not dup]
    assert applied == fresh[: len(applied)]
    last_batch = [e for e in run.steps[-1][1] if e["k"] != ev.EXECUTION_STARTED]
    last_fresh = sum(not dup for dup in run.duplicates[len(run.duplicates) - len(last_batch) :])
    assert len(fresh) - len(applied) <= last_fresh


def interleaving(history: list[ev.Event]) -> tuple[list[int], list[int]]:
    """Per scheduling event, how many completions precede it; and the completion count at each
    step boundary (OrchestratorStarted), ending with the total."""
    before: list[int] = []
    bounds: list[int] = []
    count = 0
    for e in history:
        if e["k"] == ev.ORCHESTRATOR_STARTED:
            bounds.append(count)
        elif e["k"] in COMPLETION_KINDS:
            count += 1
        elif e["k"] in ev.SCHEDULING_EVENTS:
            before.append(count)
    bounds.append(count)
    return before, bounds


def step_end(bounds: list[int], n: int) -> int:
    """The completion count at the end of the step that applied completion number n (1-based)."""
    if n == 0:
        return bounds[1]
    for lo, hi in itertools.pairwise(bounds):
        if lo < n <= hi:
            return hi
    raise AssertionError(f"completion {n} not found in step bounds {bounds}")


def kinds(history: list[ev.Event], wanted: frozenset[str] | set[str]) -> list[ev.Event]:
    return [_strip(e, "eid") for e in history if e["k"] in wanted]


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- properties ----------------------------------------------------------------------------------
@SETTINGS
@given(program=PROGRAMS, seed=SEEDS)
def test_batched_faulty_run_matches_one_event_per_step_reference(program: Program, seed: int) -> None:
    executions = drive_faulty(program, seed)
    assert len(executions) == program[1] + 1  # every continue_as_new generation ran
    orchestrator = make_orchestrator(program)
    for run in executions:
        check_well_formed(run.history)
        check_applied_once(run)
        applied = kinds(run.history, COMPLETION_KINDS)

        ref = run_steps(orchestrator, reference_steps(run))
        check_well_formed(ref.history)
        assert len(ref.steps) == len(applied) + 1  # the reference consumed every completion
        for wanted in (ev.SCHEDULING_EVENTS, COMPLETION_KINDS, {ev.EXECUTION_COMPLETED}):
            assert kinds(run.history, wanted) == kinds(ref.history, wanted)

        before, bounds = interleaving(run.history)
        ref_before, _ = interleaving(ref.history)
        assert before == [step_end(bounds, n) for n in ref_before]

        assert run.published_status() == ref.published_status()
        assert run.final.status == ref.final.status
        assert run.final.output == ref.final.output
        assert run.final.continue_as_new == ref.final.continue_as_new
    last = executions[-1].final
    assert last.status == OrchestrationStatus.COMPLETED, last.failure
    assert isinstance(decode(last.output), list)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=PROGRAMS, seed=SEEDS)
def test_replay_of_any_prefix_then_rest_equals_live_executor(program: Program, seed: int) -> None:
    orchestrator = make_orchestrator(program)
    for faulty in drive_faulty(program, seed):
        live = run_steps(orchestrator, faulty.steps)  # the same steps, never evicted
        packed = [pack_record(e) for e in live.history]
        assert packed == [pack_record(e) for e in faulty.history]
        for k in range(1, len(faulty.steps)):
            rebuilt = run_steps(orchestrator, faulty.steps, evict_before=k)
            assert [pack_record(e) for e in rebuilt.history] == packed, f"evicted before step {k}"
            for mine, theirs in zip(rebuilt.results[k:], live.results[k:], strict=True):
                assert mine.actions == theirs.actions
                assert (mine.status, mine.output, mine.custom_status, mine.custom_status_set) == (
                    theirs.status,
                    theirs.output,
                    theirs.custom_status,
                    theirs.custom_status_set,
                )
                assert mine.continue_as_new == theirs.continue_as_new


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    program=PLAIN_PROGRAMS,
    seed=SEEDS,
    how=st.sampled_from(("rename", "timer", "insert")),
    pick=st.integers(0, 10_000),
)
def test_mutated_program_fails_with_nondeterminism(program: Program, seed: int, how: str, pick: int) -> None:
    runs = [r for r in drive_faulty(program, seed) if len(r.steps) > 1]
    if not runs:
        return
    run = runs[pick % len(runs)]
    cut = 1 + pick % (len(run.steps) - 1)  # a step boundary before the execution finished
    prefix = run_steps(make_orchestrator(program), run.steps[:cut])
    calls = sum(1 for e in prefix.history if e["k"] == ev.TASK_SCHEDULED)
    if calls == 0:
        return  # nothing recorded that a mutation could contradict
    index = pick % calls
    executor = new_executor(make_orchestrator(program, (index, how)))
    executor.replay(copy.deepcopy(prefix.history))
    now, batch = run.steps[cut]
    result = executor.execute([{"k": ev.ORCHESTRATOR_STARTED, "ts": now}, *copy.deepcopy(batch)])
    assert result.status == OrchestrationStatus.FAILED
    assert result.nondeterminism
    assert result.failure is not None and result.failure.error_type == "NonDeterminismError"
    assert result.actions == []
    assert result.new_events[-1]["k"] == ev.EXECUTION_COMPLETED
    assert result.new_events[-1]["eid"] == len(prefix.history)
    assert executor.is_done


def test_unmutated_replay_of_every_prefix_is_clean() -> None:
    """The control for the mutation test: the same cut without a mutation never fails."""
    program: Program = ([("act", 0, 1), ("all", 3), ("any", 5), ("event", "go"), ("sub", 1)], 1)
    for seed in range(20):
        for run in drive_faulty(program, seed):
            for cut in range(1, len(run.steps)):
                prefix = run_steps(make_orchestrator(program), run.steps[:cut])
                executor = new_executor(make_orchestrator(program))
                executor.replay(copy.deepcopy(prefix.history))
                now, batch = run.steps[cut]
                result = executor.execute([{"k": ev.ORCHESTRATOR_STARTED, "ts": now}, *copy.deepcopy(batch)])
                assert not result.nondeterminism
                assert result.new_events == run.results[cut].new_events
