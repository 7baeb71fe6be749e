"""Work a worker lacks the code for, against a real redis-server: activities and entity operations
left for a worker that has them (failed only after the grace period), versions of sub-orchestrations
and continue-as-new, and terminating an instance that waits for its version."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from _poll import wait_until
from _redis import connect

from durable import Client, EntityId, OrchestrationStatus, TaskFailedError, Worker, WorkerConfig
from durable._core.registry import capability
from durable._store.keys import HubKeys

FAST = {
    "lease_ttl_ms": 2000,
    "renew_interval_ms": 400,
    "balance_interval_ms": 100,
    "poll_ms": 200,
    "heartbeat_ttl_ms": 1500,
    "activity_visibility_ms": 1500,
    "drain_timeout": 5,
}


@pytest.fixture
def client(redis_url: str, hub: str) -> Iterator[Client]:
    with Client(redis_url, hub) as c:
        yield c


def knows(worker: Worker, cap: str) -> bool:
    """Whether ``worker`` has heard (from a heartbeat) of a live worker with ``cap``."""
    runtime = worker._runtime
    return runtime is not None and runtime.caps.live(cap)


def work_length(redis_url: str, hub: str, cap: str) -> int:
    r = connect(redis_url)
    try:
        return int(r.xlen(HubKeys(hub).work(cap)))
    finally:
        r.close()


def stamp(ctx: Any, text: str) -> str:
    return f"[{text}]"


def test_an_activity_waits_for_a_worker_that_has_it_and_fails_only_after_the_grace(
    redis_url: str, hub: str, client: Client
) -> None:
    def owner() -> Worker:  # runs the orchestration, lacks the activity
        worker = Worker(redis_url, hub=hub, config=WorkerConfig(**FAST, missing_code_grace_ms=2000))

        @worker.orchestrator
        def stamps(ctx: Any, text: str) -> Any:
            try:
                return (yield ctx.call_activity("stamp", input=text))
            except TaskFailedError as exc:
                return exc.details.to_record()

        return worker

    def stamper() -> Worker:  # has the activity only
        worker = Worker(redis_url, hub=hub, config=WorkerConfig(**FAST))
        worker.add_activity(stamp)
        return worker

    cap = capability("a", "stamp")
    with owner() as running:
        with stamper():
            wait_until(lambda: knows(running, cap), 20, "the owner to hear of the stamper")
        first = client.schedule_new_orchestration("stamps", input="one")
        wait_until(
            lambda: work_length(redis_url, hub, cap), 20, "the task to be left for a worker with 'stamp'"
        )
        assert client.get_orchestration_state(first).runtime_status == OrchestrationStatus.RUNNING
        with stamper():  # a worker that has it comes (back): it runs the task
            assert client.wait_for_orchestration_completion(first, timeout=20).output == "[one]"
        second = client.schedule_new_orchestration("stamps", input="two")
        # nobody has "stamp" any more: once the grace period is over the task fails, naming it
        state = client.wait_for_orchestration_completion(second, timeout=20)
    failure = state.output
    assert failure["error_type"] == "ActivityNotRegisteredError"
    assert "'stamp'" in failure["message"] and "grace period" in failure["message"]


def test_entity_operations_wait_for_a_worker_that_has_the_entity(
    redis_url: str, hub: str, client: Client
) -> None:
    def counter(ctx: Any, amount: int) -> Any:
        if ctx.operation == "add":
            ctx.set_state(ctx.get_state(0) + amount)
        return ctx.get_state(0)

    owner = Worker(redis_url, hub=hub, config=WorkerConfig(**FAST))

    @owner.orchestrator
    def reads(ctx: Any, _: Any) -> Any:
        return (yield ctx.call_entity(EntityId("counter", "c"), "get"))

    def keeper() -> Worker:
        worker = Worker(redis_url, hub=hub, config=WorkerConfig(**FAST))
        worker.add_entity(counter)
        return worker

    cap = capability("e", "counter")
    with owner:
        with keeper():
            wait_until(lambda: knows(owner, cap), 20, "the owner to hear of the keeper")
        for n in (1, 2, 3):
            client.signal_entity("@counter@c", "add", input=n)
        iid = client.schedule_new_orchestration("reads")
        wait_until(lambda: work_length(redis_url, hub, cap), 20, "the operations to be left for the keeper")
        assert client.get_entity("@counter@c") is None  # nothing applied by a worker without the code
        with keeper():
            state = client.wait_for_orchestration_completion(iid, timeout=20)
            wait_until(lambda: client.get_entity("@counter@c"), 20, "the entity")
    assert state.runtime_status == OrchestrationStatus.COMPLETED and state.output == 6
    entity = client.get_entity("@counter@c")
    assert entity is not None and entity.state == 6


def test_versions_of_sub_orchestrations_and_continue_as_new(redis_url: str, hub: str, client: Client) -> None:
    worker = Worker(redis_url, hub=hub, config=WorkerConfig(**FAST))

    @worker.orchestrator(name="flow", version="1")
    def flow_v1(ctx: Any, n: int) -> Any:
        if n == 0:
            ctx.continue_as_new(1, version="2")  # the only way to move an instance to another version
            return None
        return f"v1 {ctx.version}"

    @worker.orchestrator(name="flow", version="2")
    def flow_v2(ctx: Any, n: int) -> Any:
        return f"v2 {ctx.version} after {n}"

    @worker.orchestrator
    def parent(ctx: Any, _: Any) -> Any:
        pinned = yield ctx.call_sub_orchestrator("flow", input=5, version="1")
        newest = yield ctx.call_sub_orchestrator("flow", input=5)
        return [pinned, newest]

    with worker:
        moved = client.schedule_new_orchestration("flow", input=0, version="1")
        nested = client.schedule_new_orchestration(parent)
        newest = client.schedule_new_orchestration("flow", input=7)
        moved_state = client.wait_for_orchestration_completion(moved, timeout=20)
        assert moved_state.output == "v2 2 after 1" and moved_state.version == "2"
        assert client.wait_for_orchestration_completion(nested, timeout=20).output == ["v1 1", "v2 2 after 5"]
        newest_state = client.wait_for_orchestration_completion(newest, timeout=20)
        assert newest_state.version == "2"
        [started] = [e for e in client.get_orchestration_history(newest) if e["k"] == "ExecutionStarted"]
        assert started["ver"] == "2"  # the pin is recorded in the history


def test_an_instance_waiting_for_its_version_can_be_terminated(
    redis_url: str, hub: str, client: Client
) -> None:
    worker = Worker(redis_url, hub=hub, config=WorkerConfig(**FAST))

    @worker.orchestrator(name="flow", version="1")
    def flow_v1(ctx: Any, _: Any) -> Any:
        yield ctx.wait_for_external_event("never")

    with worker:
        iid = client.schedule_new_orchestration("flow", version="9")  # nobody has version 9
        wait_until(lambda: work_length(redis_url, hub, capability("o", "flow", "9")), 20, "the step to wait")
        assert client.get_orchestration_state(iid).runtime_status == OrchestrationStatus.PENDING
        client.terminate_orchestration(iid, output="gave up")
        state = client.wait_for_orchestration_completion(iid, timeout=20)
    assert state.runtime_status == OrchestrationStatus.TERMINATED and state.output == "gave up"


def test_continue_as_new_to_a_version_another_worker_has_carries_the_saved_events(
    redis_url: str, hub: str, client: Client
) -> None:
    first, second = (Worker(redis_url, hub=hub, config=WorkerConfig(**FAST)) for _ in range(2))

    @first.orchestrator(name="flow", version="1")
    def flow_v1(ctx: Any, _: Any) -> Any:
        got = yield ctx.wait_for_external_event("first")
        ctx.continue_as_new(got, save_events=True, version="2")

    @second.orchestrator(name="flow", version="2")
    def flow_v2(ctx: Any, got: Any) -> Any:
        later = yield ctx.wait_for_external_event("second")
        return [ctx.version, got, later]

    iid = client.schedule_new_orchestration("flow", version="1")
    client.raise_orchestration_event(iid, "second", data=2)  # received by v1, carried over to v2
    client.raise_orchestration_event(iid, "first", data=1)
    with first, second:
        state = client.wait_for_orchestration_completion(iid, timeout=20)
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.output == ["2", 1, 2] and state.version == "2"
