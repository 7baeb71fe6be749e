"""Events raised to an instance whose scheduled start has not run yet wait for it (none is lost)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from durable import Client, OrchestrationStatus, Worker, WorkerConfig


def collect(ctx: Any, n: int) -> Any:
    got = []
    for _ in range(n):
        got.append((yield ctx.wait_for_external_event("item")))
    return got


@pytest.fixture
def worker(redis_url: str, hub: str) -> Worker:
    w = Worker(redis_url, hub=hub, config=WorkerConfig(balance_interval_ms=100, poll_ms=200))
    w.add_orchestrator(collect)
    return w


@pytest.fixture
def client(redis_url: str, hub: str) -> Iterator[Client]:
    c = Client(redis_url, hub=hub)
    yield c
    c.close()


def test_events_before_a_scheduled_start_are_delivered_after_it(worker: Worker, client: Client) -> None:
    with worker:
        start_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)
        iid = client.schedule_new_orchestration(collect, input=3, start_at=start_at)
        client.raise_orchestration_event(iid, "item", data=1)  # the worker holds these two ...
        client.raise_orchestration_event(iid, "item", data=2)
        assert client.get_orchestration_state(iid).runtime_status == OrchestrationStatus.PENDING
        client.wait_for_orchestration_start(iid, timeout=20)
        client.raise_orchestration_event(iid, "item", data=3)  # ... and this one comes after the start
        state = client.wait_for_orchestration_completion(iid, timeout=20)
    assert state.runtime_status == OrchestrationStatus.COMPLETED
    assert state.output == [1, 2, 3]


def test_a_terminated_scheduled_start_drops_its_held_events(worker: Worker, client: Client) -> None:
    with worker:
        start_at = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        iid = client.schedule_new_orchestration(collect, input=1, start_at=start_at)
        client.raise_orchestration_event(iid, "item", data="early")
        client.terminate_orchestration(iid, output="cancelled")
        state = client.wait_for_orchestration_completion(iid, timeout=20)
        assert state.runtime_status == OrchestrationStatus.TERMINATED
        # started again under the same id: the old held event does not leak into the new run
        client.schedule_new_orchestration(collect, input=1, instance_id=iid)
        client.raise_orchestration_event(iid, "item", data="fresh")
        assert client.wait_for_orchestration_completion(iid, timeout=20).output == ["fresh"]
