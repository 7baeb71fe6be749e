"""Continue-as-new with several messages in one step: nothing the step took from the inbox is lost.

The events are sent while no worker runs, so the partition takes them in one batch: the first one
makes the code continue as new, and the rest must reach the next execution (with
``save_events=True``), as must a terminate that follows them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from durable import Client, OrchestrationStatus, Worker, WorkerConfig

FAST = WorkerConfig(balance_interval_ms=100, poll_ms=200)


def adder(ctx: Any, total: int) -> Any:
    ctx.set_custom_status(total)
    n = yield ctx.wait_for_external_event("add")
    if n is None:
        return total
    ctx.continue_as_new(total + n, save_events=True)


@pytest.fixture
def worker(redis_url: str, hub: str) -> Worker:
    w = Worker(redis_url, hub=hub, config=WorkerConfig(**vars(FAST)))
    w.add_orchestrator(adder)
    return w


@pytest.fixture
def client(redis_url: str, hub: str) -> Iterator[Client]:
    c = Client(redis_url, hub=hub)
    yield c
    c.close()


def test_events_after_the_restart_point_reach_the_next_execution(worker: Worker, client: Client) -> None:
    with worker:
        iid = client.schedule_new_orchestration(adder, input=0)
        client.wait_for_orchestration_start(iid, timeout=20)
    for n in range(1, 21):  # no worker: these wait in the inbox and arrive in one batch
        client.raise_orchestration_event(iid, "add", data=n)
    client.raise_orchestration_event(iid, "add", data=None)  # the last one ends the loop
    with worker:
        state = client.wait_for_orchestration_completion(iid, timeout=30)
    assert state.runtime_status == OrchestrationStatus.COMPLETED
    assert state.output == sum(range(1, 21))


def test_a_terminate_after_the_restart_point_terminates_the_instance(worker: Worker, client: Client) -> None:
    with worker:
        iid = client.schedule_new_orchestration(adder, input=0)
        client.wait_for_orchestration_start(iid, timeout=20)
    client.raise_orchestration_event(iid, "add", data=5)  # continues as new ...
    client.terminate_orchestration(iid, output="stopped")  # ... and the terminate must not be lost
    with worker:
        state = client.wait_for_orchestration_completion(iid, timeout=30)
    assert state.runtime_status == OrchestrationStatus.TERMINATED
    assert state.output == "stopped"
