"""Versions, pinning, patching and strict replay in the pure core: hand-built histories in,
actions and findings out (no Redis)."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from typing import Any

import pytest

from durable._core import events as ev
from durable._core.context import OrchestrationContext
from durable._core.delegation import step_result_from, step_result_record
from durable._core.executor import OrchestrationExecutor, StepResult
from durable._core.model import OrchestrationStatus
from durable._core.registry import Registry, capability, name_of, split_capability, version_key
from durable._core.replay import normalize_event, replay_one
from durable._core.serialization import decode, encode
from durable._runtime.capabilities import CapabilityView

IID = "order-7"
T0 = 1_700_000_000_000


def started(input: Any = None, *, ver: Any = "absent", name: str = "flow") -> ev.Event:
    event: ev.Event = {"k": ev.EXECUTION_STARTED, "name": name, "input": encode(input), "exec": "x1"}
    if ver != "absent":
        event["ver"] = ver
    return event


def step_started(ts: int) -> ev.Event:
    return {"k": ev.ORCHESTRATOR_STARTED, "ts": ts}


def executor(registry: Registry, *, strict: bool = False) -> OrchestrationExecutor:
    return OrchestrationExecutor(
        IID,
        registry.orchestrators.get,
        name_of,
        OrchestrationContext,
        resolve_version=registry.resolve_orchestrator,
        strict=strict,
    )


class Run:
    """One instance over several steps, recording history like a partition (optionally replaying
    it into a fresh executor before every step, as after a cache miss)."""

    def __init__(self, registry: Registry, *, rebuild: bool = False, strict: bool = False) -> None:
        self.registry, self.rebuild, self.strict = registry, rebuild, strict
        self.history: list[ev.Event] = []
        self.ex = executor(registry, strict=strict)

    def step(self, ts: int, *events: ev.Event) -> StepResult:
        if self.rebuild:
            self.ex = executor(self.registry, strict=self.strict)
            self.ex.replay(copy.deepcopy(self.history))
        result = self.ex.execute([step_started(ts), *copy.deepcopy(events)])
        self.history.extend(copy.deepcopy(result.new_events))
        return result


def registry_of(*versions: tuple[str | None, Callable[..., Any]], name: str = "flow") -> Registry:
    reg = Registry()
    for version, fn in versions:
        reg.add_orchestrator(fn, name, version)
    return reg


def returns_version(ctx: Any, _: Any) -> Any:
    yield ctx.create_timer(ctx.current_utc_datetime)
    return ctx.version


def returns_version_too(ctx: Any, _: Any) -> Any:
    yield ctx.create_timer(ctx.current_utc_datetime)
    return f"also {ctx.version}"


# -- versions and the registry ----------------------------------------------------------------------
def test_versions_compare_as_dotted_integers_else_as_strings() -> None:
    ordered = ["", "alpha", "beta", "1", "1.9", "1.10", "2", "10"]
    assert sorted(reversed(ordered), key=version_key) == ordered


def test_registry_keeps_several_versions_and_advertises_them() -> None:
    reg = registry_of(("1.9", returns_version), ("1.10", returns_version_too))
    assert reg.newest_version("flow") == "1.10"
    assert reg.resolve_orchestrator("flow") == ("1.10", returns_version_too)
    assert reg.resolve_orchestrator("flow", "1.9") == ("1.9", returns_version)
    assert reg.resolve_orchestrator("flow", "3") is None
    assert reg.can_run("flow", None) and not reg.can_run("other", None)
    assert reg.capabilities() == ["o|flow|*", "o|flow|1.9", "o|flow|1.10"]
    assert split_capability(capability("o", "a|b", "2")) == ("o", "a|b", "2")
    assert split_capability("o|flow|*") == ("o", "flow", None)
    with pytest.raises(ValueError, match=r"already registered as version '1\.9' of 'flow'"):
        reg.add_orchestrator(returns_version_too, "flow", "1.9")
    with pytest.raises(ValueError, match="invalid version"):
        reg.add_orchestrator(returns_version, "flow", "*")


# -- pinning ----------------------------------------------------------------------------------------
def test_an_unpinned_start_is_pinned_to_the_newest_version_and_recorded() -> None:
    run = Run(registry_of(("1", returns_version), ("2", returns_version_too)))
    run.step(T0, started(ver=None))
    recorded = next(e for e in run.history if e["k"] == ev.EXECUTION_STARTED)
    assert recorded["ver"] == "2" and run.ex.version == "2"
    result = run.step(T0 + 1, {"k": ev.TIMER_FIRED, "tid": 0})
    assert decode(result.output) == "also 2"


@pytest.mark.parametrize("rebuild", [False, True])
def test_a_pinned_instance_runs_its_own_version(rebuild: bool) -> None:
    run = Run(registry_of(("1", returns_version), ("2", returns_version_too)), rebuild=rebuild)
    run.step(T0, started(ver="1"))
    result = run.step(T0 + 1, {"k": ev.TIMER_FIRED, "tid": 0})
    assert result.status == OrchestrationStatus.COMPLETED and decode(result.output) == "1"


def test_history_from_before_versions_is_unversioned() -> None:
    run = Run(registry_of((None, returns_version)))
    run.step(T0, started())  # no "ver" at all, as recorded before versions existed
    assert "ver" not in run.history[1] and run.ex.version == ""
    assert decode(run.step(T0 + 1, {"k": ev.TIMER_FIRED, "tid": 0}).output) == ""


def test_a_missing_version_fails_the_local_executor_with_its_name() -> None:
    run = Run(registry_of(("1", returns_version)))
    result = run.step(T0, started(ver="7"))
    assert result.status == OrchestrationStatus.FAILED and result.failure is not None
    assert "no orchestrator named 'flow' version '7'" in result.failure.message


def test_continue_as_new_keeps_or_moves_the_version_and_sub_orchestrations_carry_one() -> None:
    def flow(ctx: Any, n: int) -> Any:
        yield ctx.call_sub_orchestrator("child", input=n, version="3")
        ctx.continue_as_new(n + 1, version="2" if n == 0 else None)

    run = Run(registry_of(("1", flow)))
    first = run.step(T0, started(0, ver="1"))
    [sub] = first.actions
    assert sub["k"] == ev.SUB_CREATED and sub["ver"] == "3"
    done = run.step(T0 + 1, {"k": ev.SUB_COMPLETED, "tid": 0, "result": encode(None)})
    assert done.status == OrchestrationStatus.CONTINUED_AS_NEW and done.continue_version == "2"
    again = Run(registry_of(("1", flow)))
    again.step(T0, started(1, ver="1"))
    kept = again.step(T0 + 1, {"k": ev.SUB_COMPLETED, "tid": 0, "result": encode(None)})
    assert kept.continue_version == "1"


# -- patching ---------------------------------------------------------------------------------------
def old_code(ctx: Any, _: Any) -> Any:
    a = yield ctx.call_activity("a")
    event = yield ctx.wait_for_external_event("go")
    return [a, event]


def patched_code(ctx: Any, _: Any) -> Any:
    a = yield ctx.call_activity("a")
    patched = ctx.is_patched("extra-step")
    b = (yield ctx.call_activity("b")) if patched else None
    event = yield ctx.wait_for_external_event("go")
    return [a, b, event, patched, ctx.is_patched("extra-step")]


def deprecated_code(ctx: Any, _: Any) -> Any:  # the patch's old branch removed, the call kept ...
    a = yield ctx.call_activity("a")
    ctx.is_patched("extra-step")
    b = yield ctx.call_activity("b")
    event = yield ctx.wait_for_external_event("go")
    return [a, b, event]


def finished_code(ctx: Any, _: Any) -> Any:  # ... then the call removed too
    a = yield ctx.call_activity("a")
    b = yield ctx.call_activity("b")
    event = yield ctx.wait_for_external_event("go")
    return [a, b, event]


def test_is_patched_is_true_for_a_new_execution_and_records_one_marker() -> None:
    run = Run(registry_of((None, patched_code)))
    run.step(T0, started())
    result = run.step(T0 + 1, {"k": ev.TASK_COMPLETED, "tid": 0, "result": encode("A")})
    markers = [e for e in result.new_events if e["k"] == ev.PATCH_MARKER]
    assert markers == [{"k": ev.PATCH_MARKER, "patch": "extra-step", "eid": markers[0]["eid"], "ts": T0 + 1}]
    assert [a["name"] for a in result.actions] == ["b"]
    run.step(T0 + 2, {"k": ev.TASK_COMPLETED, "tid": 1, "result": encode("B")})
    done = run.step(T0 + 3, {"k": ev.EVENT_RAISED, "name": "go", "input": encode(1)})
    assert decode(done.output) == ["A", "B", 1, True, True]


def test_is_patched_is_false_for_a_history_that_passed_the_point_without_it() -> None:
    old = Run(registry_of((None, old_code)))
    old.step(T0, started())
    old.step(T0 + 1, {"k": ev.TASK_COMPLETED, "tid": 0, "result": encode("A")})  # now waits for "go"
    new = executor(registry_of((None, patched_code)))
    new.replay(copy.deepcopy(old.history))
    assert new.replay_error is None
    done = new.execute([step_started(T0 + 2), {"k": ev.EVENT_RAISED, "name": "go", "input": encode(1)}])
    assert decode(done.output) == ["A", None, 1, False, False]
    assert not any(e["k"] == ev.PATCH_MARKER for e in done.new_events)


@pytest.mark.parametrize("code", [patched_code, deprecated_code, finished_code])
def test_patched_histories_replay_through_the_deprecation_steps(code: Callable[..., Any]) -> None:
    run = Run(registry_of((None, patched_code)))
    run.step(T0, started())
    run.step(T0 + 1, {"k": ev.TASK_COMPLETED, "tid": 0, "result": encode("A")})
    run.step(T0 + 2, {"k": ev.TASK_COMPLETED, "tid": 1, "result": encode("B")})
    later = executor(registry_of((None, code)))
    later.replay(copy.deepcopy(run.history))
    assert later.replay_error is None
    done = later.execute([step_started(T0 + 3), {"k": ev.EVENT_RAISED, "name": "go", "input": encode(2)}])
    assert decode(done.output)[:3] == ["A", "B", 2]


# -- what replay catches ----------------------------------------------------------------------------
def test_an_activity_inserted_before_a_wait_the_history_passed_is_nondeterminism() -> None:
    def inserted(ctx: Any, _: Any) -> Any:
        a = yield ctx.call_activity("a")
        yield ctx.call_activity("audit")  # new code, before the wait the old history already reached
        event = yield ctx.wait_for_external_event("go")
        return [a, event]

    old = Run(registry_of((None, old_code)))
    old.step(T0, started())
    old.step(T0 + 1, {"k": ev.TASK_COMPLETED, "tid": 0, "result": encode("A")})
    new = executor(registry_of((None, inserted)))
    new.replay(copy.deepcopy(old.history))
    assert new.replay_error is not None and "'audit'" in str(new.replay_error)
    assert new.replay_failed_at == len(old.history) - 1
    failed = new.execute([step_started(T0 + 2), {"k": ev.EVENT_RAISED, "name": "go"}])
    assert failed.status == OrchestrationStatus.FAILED and failed.nondeterminism


def test_strict_replay_compares_inputs_so_random_values_surface() -> None:
    def lucky(ctx: Any, _: Any) -> Any:
        n = yield ctx.call_activity("echo", input=random.random())
        return n

    for strict, expected in ((False, OrchestrationStatus.COMPLETED), (True, OrchestrationStatus.FAILED)):
        run = Run(registry_of((None, lucky)), rebuild=True, strict=strict)
        run.step(T0, started())
        result = run.step(T0 + 1, {"k": ev.TASK_COMPLETED, "tid": 0, "result": encode(1)})
        assert result.status == expected
    assert result.failure is not None and "different input" in result.failure.message


# -- the replay check ----------------------------------------------------------------------------------
def test_replay_one_reports_the_first_mismatching_event_and_reads_exported_json() -> None:
    old = Run(registry_of((None, old_code)))
    old.step(T0, started(ver=None))
    old.step(T0 + 1, {"k": ev.TASK_COMPLETED, "tid": 0, "result": encode("A")})
    history = copy.deepcopy(old.history)

    def renamed(ctx: Any, _: Any) -> Any:
        yield ctx.call_activity("a2")

    ok = replay_one(
        IID, copy.deepcopy(history), registry_of((None, patched_code)).resolve_orchestrator, name_of
    )
    assert ok.ok and ok.name == "flow" and ok.version == ""
    bad = replay_one(IID, copy.deepcopy(history), registry_of((None, renamed)).resolve_orchestrator, name_of)
    assert (
        not bad.ok and bad.event is not None and bad.event["k"] == ev.TASK_SCHEDULED and bad.event["eid"] == 2
    )
    assert "'a'" in (bad.error or "") and "'a2'" in (bad.error or "")
    missing = replay_one(
        IID, copy.deepcopy(history), registry_of(("2", old_code)).resolve_orchestrator, name_of
    )
    assert not missing.ok and "is registered by this code" in (missing.error or "")
    exported = {
        "event_id": 3,
        "kind": "TaskCompleted",
        "timestamp": "2023-11-14T22:13:21+00:00",
        "result": [1],
    }
    assert normalize_event(exported, payloads_encoded=True) == {
        "k": "TaskCompleted",
        "eid": 3,
        "ts": T0 + 1_000,
        "result": encode([1]),
    }


def test_step_results_travel_intact() -> None:
    run = Run(registry_of((None, patched_code)))
    run.step(T0, started())
    result = run.step(T0 + 1, {"k": ev.TASK_COMPLETED, "tid": 0, "result": encode("A")})
    back = step_result_from(copy.deepcopy(step_result_record(result)))
    assert back.new_events == result.new_events and back.actions == result.actions
    assert back.status == result.status
    assert back.actions[0] is next(e for e in back.new_events if e["eid"] == back.actions[0]["eid"])


# -- capabilities -------------------------------------------------------------------------------------
def test_capabilities_are_live_while_a_heartbeat_carries_them_and_recent_within_the_grace() -> None:
    now = [10_000]
    view = CapabilityView(lambda: now[0], grace_ms=5_000, own=["a|mine"])
    view.update({"a|x": 12_000, "a|y": 6_000, "a|z": 1_000})
    assert view.live("a|mine") and view.live("a|x") and not view.live("a|y")
    assert view.recent("a|y") and not view.recent("a|z") and not view.recent("a|never")
    assert view.stale() == ["a|z"]
