"""Pure helpers of the instance lifecycle: what an ending execution leaves open (timers,
sub-orchestrations), and rewinding a failed execution.

Rewind rewrites a FAILED execution's history so that its failed activity and sub-orchestration
calls are forgotten: each such call keeps only its first ``TaskScheduled``/``SubOrchestrationCreated``
event, and loses its failures, retry timers and later attempts, and the final
``ExecutionCompleted`` goes. A failure the code handled (it went on to schedule other work) cannot
be forgotten without changing the code's path: each failed call is forgotten only if the history
without it still replays. The replayed executor then continues from there: the calls left open
(forgotten ones, and those whose results arrived after the failure and were dropped) are sent again,
and successful steps are not run again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import events as ev
from .executor import OrchestrationExecutor, StepResult

_COMPLETIONS = (ev.TASK_COMPLETED, ev.TASK_FAILED, ev.SUB_COMPLETED, ev.SUB_FAILED, ev.TIMER_FIRED)
_FAILURES = (ev.TASK_FAILED, ev.SUB_FAILED)
#: at most this many failed calls are examined one by one (each costs a replay)
_MAX_CALLS_EXAMINED = 64


class RewindError(Exception):
    """A failed execution cannot be rewound (the reason says why)."""


def open_timers(history: list[ev.Event]) -> list[int]:
    """Task ids of the timers created in ``history`` that have not fired."""
    created = [e["tid"] for e in history if e["k"] == ev.TIMER_CREATED]
    fired = {e.get("tid") for e in history if e["k"] == ev.TIMER_FIRED}
    return [tid for tid in created if tid not in fired]


def open_children(history: list[ev.Event]) -> list[str]:
    """Instance ids of the sub-orchestrations started in ``history`` whose result it lacks."""
    started = [(e["tid"], str(e["iid"])) for e in history if e["k"] == ev.SUB_CREATED and e.get("iid")]
    done = {e.get("tid") for e in history if e["k"] in (ev.SUB_COMPLETED, ev.SUB_FAILED)}
    return [iid for tid, iid in started if tid not in done]


def children(history: list[ev.Event]) -> list[str]:
    """Instance ids of every sub-orchestration started in ``history`` (each once, in order)."""
    out: dict[str, None] = {}
    for e in history:
        if e["k"] == ev.SUB_CREATED and e.get("iid"):
            out[str(e["iid"])] = None
    return list(out)


@dataclass
class RewindPlan:
    """A rewound execution, ready to continue."""

    #: the rewritten history (dense event ids), which ``executor`` has replayed
    history: list[ev.Event]
    executor: OrchestrationExecutor
    #: how many failed calls were forgotten
    forgotten: int
    #: the scheduling events of the work to send again (activities, sub-orchestrations, timers)
    redo: list[ev.Event] = field(default_factory=list)


def _failed_calls(events: list[ev.Event]) -> list[set[int]]:
    """Per call whose last attempt failed: the positions of its events other than its first
    scheduling event, in the order of the calls' first events."""
    positions: dict[int, list[int]] = {}
    call_of: dict[int, int] = {}
    for i, e in enumerate(events):
        kind, tid = e["k"], e.get("tid")
        if kind in (ev.TASK_SCHEDULED, ev.SUB_CREATED) and isinstance(tid, int):
            call = e.get("call", tid)
            call_of[tid] = call
            positions.setdefault(call, []).append(i)
        elif kind == ev.TIMER_CREATED and e.get("retry") and e.get("call") in positions:
            if isinstance(tid, int):
                call_of[tid] = e["call"]
            positions[e["call"]].append(i)
        elif kind in _COMPLETIONS and tid in call_of:
            positions[call_of[tid]].append(i)
    return [set(p[1:]) for p in positions.values() if events[p[-1]]["k"] in _FAILURES]


def _without(events: list[ev.Event], drop: set[int]) -> list[ev.Event]:
    return [dict(e) for i, e in enumerate(events) if i not in drop]


def plan_rewind(history: list[ev.Event], new_executor: Callable[[], OrchestrationExecutor]) -> RewindPlan:
    """Rewrite a failed execution's history and replay it; raises :class:`RewindError`."""
    base = [e for e in history if e["k"] != ev.EXECUTION_COMPLETED]
    if not any(e["k"] == ev.EXECUTION_STARTED for e in base):
        raise RewindError("its history has no ExecutionStarted event")
    probe = new_executor()
    probe.replay(_without(base, set()))
    if probe._replay_error is not None:
        raise RewindError(f"its history does not replay with the current code: {probe._replay_error}")
    calls = _failed_calls(base)
    drop: set[int] = set()
    if len(calls) > _MAX_CALLS_EXAMINED:
        drop = set().union(*calls)
    else:
        for positions in reversed(calls):  # latest first: the failures that ended it
            trial = drop | positions
            probe = new_executor()
            probe.replay(_without(base, trial))
            if probe._replay_error is None:
                drop = trial
    if calls and not drop:
        raise RewindError(
            "none of its failed calls can be forgotten: the code went on after them (it handled "
            "the failure, or left an entity critical section), so forgetting one changes its path"
        )
    events = _without(base, drop)
    for eid, event in enumerate(events):
        event["eid"] = eid
    executor = new_executor()
    executor.replay(events)
    if executor._replay_error is not None:
        raise RewindError(f"its history does not replay with the current code: {executor._replay_error}")
    entities = executor.ctx._extensions.get("entities")
    if entities is not None and (entities.open or entities.held is not None or entities.pending):
        raise RewindError(
            "it was waiting for entity operations or held entity locks, which were let go when it failed"
        )
    ctx = executor.ctx
    wanted = set(ctx._open_tasks) | set(ctx._retry_timers)
    redo = [
        dict(e)
        for e in events
        if e["k"] in (ev.TASK_SCHEDULED, ev.SUB_CREATED, ev.TIMER_CREATED) and e.get("tid") in wanted
    ]
    return RewindPlan(
        events, executor, len(calls) if len(calls) > _MAX_CALLS_EXAMINED else _count(calls, drop), redo
    )


def _count(calls: list[set[int]], drop: set[int]) -> int:
    return sum(1 for positions in calls if positions and positions <= drop)


def run_rewind(plan: RewindPlan, ts: int, reason: str | None) -> StepResult:
    """The step that resumes a rewound execution at ``ts``: its new events (``ExecutionRewound``,
    and whatever the code does next) and its actions (the redone work first)."""
    executor = plan.executor
    result = StepResult()
    for event in ({"k": ev.ORCHESTRATOR_STARTED, "ts": ts}, _rewound(reason, plan.forgotten)):
        executor._apply(event)
        executor._append(event, result)
    step = executor.execute([])
    step.new_events[:0] = result.new_events
    step.actions[:0] = [dict(e) for e in plan.redo] if not executor.is_done else []
    return step


def _rewound(reason: str | None, forgotten: int) -> dict[str, Any]:
    return {"k": ev.EXECUTION_REWOUND, "reason": reason, "forgotten": forgotten}
