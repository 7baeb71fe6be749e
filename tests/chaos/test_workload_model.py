"""The chaos harness's predictions against an in-memory, fault-free run of the same programs.

``ops/chaos/workload.py`` predicts, without the engine, what every instance of a seeded workload
must produce; the chaos oracles compare the real run with those predictions. Here each program
runs through the real replay executor with an in-memory driver (activities computed by the same
functions as the worker app, timers fired, events raised, sub-orchestrations run recursively,
continue-as-new followed), and must produce exactly the predicted output, scheduling shape,
activities and children. The history validator of the harness must accept those histories and
reject broken ones.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from durable._core import events as ev
from durable._core.executor import OrchestrationExecutor
from durable._core.registry import name_of
from durable._core.serialization import decode, encode

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ops" / "chaos"))

import oracles
import workload


def _activity(name: str, data: Any) -> Any:
    if name == workload.ACTIVITY:
        return workload.activity_value(data["id"], data["v"])
    if name == workload.BIG_IN:
        return workload.big_in_result(data)
    assert name == workload.BIG_OUT, name
    return workload.blob(data["n"], data["seed"])


class Run:
    """A fault-free in-memory run of one instance (and, recursively, its children)."""

    def __init__(self) -> None:
        self.children: list[str] = []
        self.activities: list[str] = []

    def instance(self, iid: str, spec: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
        data: bytes | None = encode(spec)
        while True:
            history, result = self._execution(iid, data)
            if result.continue_as_new is None:
                assert result.status.value == "COMPLETED", result.failure
                return decode(result.output), history
            data = result.continue_as_new[0]

    def _execution(self, iid: str, data: bytes | None) -> tuple[list[dict[str, Any]], Any]:
        ex = OrchestrationExecutor(iid, {workload.ORCHESTRATOR: workload.program}.get, name_of)
        history: list[dict[str, Any]] = []
        start = {"k": ev.EXECUTION_STARTED, "name": workload.ORCHESTRATOR, "input": data, "exec": "x"}
        events = [start]
        events += [
            {"k": ev.EVENT_RAISED, "name": name, "input": encode(value)}
            for name, value in workload.predict(iid, decode(data)).events
        ]  # raised at once; the program buffers them
        now = 1_000_000
        while True:
            now += 1000
            result = ex.execute([{"k": ev.ORCHESTRATOR_STARTED, "ts": now}, *events])
            history += result.new_events
            if ex.is_done:
                return history, result
            events = []
            for action in result.actions:
                events.extend(self._complete(action))
            assert events, "the program waits for something the driver never delivers"

    def _complete(self, action: dict[str, Any]) -> list[dict[str, Any]]:
        kind, tid = action["k"], action["tid"]
        if kind == ev.TASK_SCHEDULED:
            data = decode(action["input"])
            self.activities.append(data["id"])
            return [{"k": ev.TASK_COMPLETED, "tid": tid, "result": encode(_activity(action["name"], data))}]
        if kind == ev.TIMER_CREATED:
            if action["fire_at"] - action["ts"] >= workload.LONG_TIMER_S * 1000:
                return []  # the timer that loses to an event that arrives
            return [{"k": ev.TIMER_FIRED, "tid": tid, "fire_at": action["fire_at"]}]
        assert kind == ev.SUB_CREATED, action
        self.children.append(action["iid"])
        output, _ = self.instance(action["iid"], decode(action["input"]))
        return [{"k": ev.SUB_COMPLETED, "tid": tid, "result": encode(output)}]


@pytest.mark.parametrize("seed", [1, 7, 42])
def test_predictions_match_a_fault_free_in_memory_run(seed: int) -> None:
    plan = workload.generate(seed, 60, 0)
    assert {p.family for p in plan} >= {"chain", "fanout", "tree", "loop", "big"}
    for planned in plan:
        pred = workload.predict(planned.instance_id, planned.spec)
        run = Run()
        output, history = run.instance(planned.instance_id, planned.spec)
        assert output == pred.output, planned
        assert oracles.shape(history) == pred.shape, planned
        assert oracles.validate_history(history, "COMPLETED") == []
        assert Counter(a for a in run.activities if a.startswith(planned.instance_id + "|")) == Counter(
            pred.activities
        )
        assert [e["iid"] for e in history if e["k"] == ev.SUB_CREATED] == [c for c, _ in pred.children]


def test_history_validator_rejects_broken_histories() -> None:
    _, good = Run().instance("v-1", {"steps": [["fan", 3, 1], ["timer", 1], ["act", 2]]})
    assert oracles.validate_history(good, "COMPLETED") == []
    completed = next(e for e in good if e["k"] == ev.TASK_COMPLETED)
    scheduled = next(e for e in good if e["k"] == ev.TASK_SCHEDULED)
    timer = next(e for e in good if e["k"] == ev.TIMER_CREATED)
    renumber = lambda h: [{**e, "eid": i} for i, e in enumerate(h)]  # noqa: E731
    broken = {
        "completed twice": renumber([*good[:-1], completed, good[-1]]),
        "scheduled twice": renumber([*good[:-1], scheduled, good[-1]]),
        "event after the end": renumber([*good, good[0]]),
        "ids not dense": [*good[:3], *good[4:]],
        "wrong completion kind": renumber([*good[:-1], {**completed, "tid": timer["tid"]}, good[-1]]),
        "wrong final status": good,
    }
    for what, history in broken.items():
        status = "FAILED" if what == "wrong final status" else "COMPLETED"
        assert oracles.validate_history(history, status), what
