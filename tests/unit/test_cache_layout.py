"""What a cached (waiting) instance keeps: the layout that makes it cost ~1.5 KB, not ~4 KB.

A cached instance holds its live generator (so a step replays nothing), and little else: the
per-instance objects have slots, the history of earlier steps is packed bytes, and the context's
unused maps are the one shared empty map. These tests guard that layout (not byte counts)."""

from __future__ import annotations

from typing import Any

import pytest

from durable._core import events as ev
from durable._core.context import NOTHING, OrchestrationContext
from durable._core.executor import OrchestrationExecutor
from durable._core.serialization import encode
from durable._core.tasks import CompletableTask, EventTask, RetryableTask, WhenAllTask, WhenAnyTask
from durable._runtime.cache import InstanceCache
from durable._runtime.instances import Instance
from durable._runtime.telemetry import Telemetry


def waiter(ctx: OrchestrationContext, _: Any) -> Any:
    first = yield ctx.wait_for_external_event("Go")
    second = yield ctx.call_activity("work", input=first)
    return second


def _name_of(fn: Any, kind: str) -> str:
    return fn if isinstance(fn, str) else str(fn.__name__)


def _started(ts: int = 1000) -> list[ev.Event]:
    return [
        {"k": ev.ORCHESTRATOR_STARTED, "ts": ts},
        {"k": ev.EXECUTION_STARTED, "name": "waiter", "input": encode(None), "exec": "e1", "parent": None},
    ]


def _executor() -> OrchestrationExecutor:
    return OrchestrationExecutor("i1", {"waiter": waiter}.get, _name_of)


@pytest.mark.parametrize(
    "cls", [OrchestrationExecutor, OrchestrationContext, Instance, CompletableTask, EventTask, RetryableTask]
)
def test_per_instance_objects_have_no_instance_dict(cls: type) -> None:
    assert "__slots__" in vars(cls)
    assert all("__dict__" not in vars(base) for base in cls.__mro__ if base is not object)


def test_a_waiting_executor_keeps_its_history_packed_and_its_context_maps_shared() -> None:
    ex = _executor()
    result = ex.execute(_started())
    assert not result.actions and not ex.is_done
    # no decoded history dicts are kept once the step is over: one packed chunk
    assert not ex._history and isinstance(ex._frozen, bytes)
    assert ex.history_len == 2
    ctx = ex.ctx
    for name in ("_pending_actions", "_open_tasks", "_retry_timers", "_received_events", "_extensions"):
        assert getattr(ctx, name) is NOTHING, name
    assert isinstance(ctx._event_waiters, EventTask)  # one wait: the task itself, no container
    # reading the history decodes it, equal to what the step produced
    assert ex.history == result.new_events


def test_history_survives_packing_across_steps_and_matches_a_replay() -> None:
    live = _executor()
    first = live.execute(_started())
    second = live.execute(
        [{"k": ev.ORCHESTRATOR_STARTED, "ts": 2000}, {"k": ev.EVENT_RAISED, "name": "go", "input": encode(5)}]
    )
    assert [a["k"] for a in second.actions] == [ev.TASK_SCHEDULED]
    assert isinstance(live._frozen, list) and len(live._frozen) == 2  # one chunk per step
    assert live.history_len == len(first.new_events) + len(second.new_events)
    recorded = [*first.new_events, *second.new_events]
    assert live.history == recorded
    # an evicted instance is rebuilt by replay into the same state: the next step agrees
    rebuilt = _executor()
    rebuilt.replay([dict(e) for e in recorded])
    assert rebuilt.replay_error is None and rebuilt.history_len == live.history_len
    done = [
        {"k": ev.ORCHESTRATOR_STARTED, "ts": 3000},
        {"k": ev.TASK_COMPLETED, "tid": second.actions[0]["tid"], "result": encode(6)},
    ]
    a, b = live.execute([dict(e) for e in done]), rebuilt.execute([dict(e) for e in done])
    assert a.status == b.status and a.output == b.output == encode(6)
    assert live.history == rebuilt.history


def test_the_shared_empty_map_refuses_writes() -> None:
    with pytest.raises(TypeError):
        NOTHING["x"] = 1
    with pytest.raises(TypeError):
        NOTHING.setdefault("x", 1)
    assert NOTHING == {}


def test_composite_tasks_register_with_their_children() -> None:
    a, b = CompletableTask[int](), CompletableTask[int]()
    both, first = WhenAllTask([a, b]), WhenAnyTask([a, b])
    assert a._parents == (both, first)
    b._set_result(2)
    assert first.is_complete and not both.is_complete
    a._set_result(1)
    assert both.get_result() == [1, 2]


def test_instance_rare_state_is_allocated_on_use_and_dropped_when_cleared() -> None:
    inst = Instance("i1")
    assert inst._rare is None and inst.pending_events == () and inst.parked == ()
    inst.loaded = None
    inst.delegated = ""
    assert inst._rare is None
    inst.parked = [*inst.parked, {"kind": "x"}]
    assert inst.parked == [{"kind": "x"}] and inst._rare is not None
    inst.parked = []
    assert inst._rare is None


def test_lru_is_one_order_across_partitions() -> None:
    cache: InstanceCache[str] = InstanceCache(3, Telemetry())
    for index, iid in ((0, "a"), (1, "b"), (0, "c")):
        cache.partition(index)[iid] = iid.upper()
        cache.touch(index, [iid])
    cache.touch(0, ["a"])  # a hit: now the most recent
    cache.partition(1)["d"] = "D"
    cache.touch(1, ["d"])  # over capacity: b (least recently used) goes
    assert cache.partition(0) == {"a": "A", "c": "C"} and cache.partition(1) == {"d": "D"}
    cache.forget(0, "c")
    assert list(cache._lru) == ["a", "d"]
    cache.clear_partition(1)
    assert list(cache._lru) == ["a"] and cache.partition(1) == {}
