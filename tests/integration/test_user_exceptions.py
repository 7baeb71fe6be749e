"""User code that raises a BaseException -- ``SystemExit(2)`` as ``argparse`` does on bad input, or
a ``KeyboardInterrupt`` of its own -- fails its instance, activity task or entity operation like
any other exception. The worker process survives it (a restarted worker would only crash again on
the same message) and other orchestrations go on."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from test_faults import Procs, _check_results, _run_workload

from durable import Client, OrchestrationState, OrchestrationStatus, TaskFailedError, Worker, WorkerConfig


@pytest.fixture
def procs(redis_url: str, hub: str) -> Iterator[Procs]:
    p = Procs(redis_url, hub, delay=0.0)
    yield p
    p.close()


def _wait_alive(
    client: Client, iid: str, proc: subprocess.Popen[bytes], timeout: float = 60
) -> OrchestrationState:
    """Wait for ``iid`` to finish while the worker process stays alive."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"the worker process exited with code {proc.returncode}"
        assert time.monotonic() < deadline, f"orchestration {iid} did not finish"
        try:
            return client.wait_for_orchestration_completion(iid, timeout=1)
        except TimeoutError:
            continue


def _others_complete(client: Client) -> None:
    _check_results(client, _run_workload(client, 3, 2), 2, timeout=60)


def test_worker_survives_an_orchestrator_raising_system_exit(procs: Procs, redis_url: str, hub: str) -> None:
    worker = procs.spawn()
    with Client(redis_url, hub=hub) as client:
        iid = client.schedule_new_orchestration("exits", input=2)
        state = _wait_alive(client, iid, worker)
        assert state.runtime_status == OrchestrationStatus.FAILED
        assert state.failure_details is not None
        assert (state.failure_details.error_type, state.failure_details.message) == ("SystemExit", "2")
        _others_complete(client)
    assert worker.poll() is None and procs.procs == [worker]


@pytest.mark.parametrize("activity", ["exits_async", "exits_sync"])
def test_worker_survives_an_activity_raising_system_exit(
    procs: Procs, redis_url: str, hub: str, activity: str
) -> None:
    """An ``async def`` activity and a plain one behave the same: the task fails, its orchestration
    sees a TaskFailedError carrying SystemExit and its message."""
    worker = procs.spawn()
    with Client(redis_url, hub=hub) as client:
        iid = client.schedule_new_orchestration("catches_activity_exit", input=activity)
        state = _wait_alive(client, iid, worker)
        assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
        assert state.output == ["SystemExit", "2"]
        _others_complete(client)
    assert worker.poll() is None and procs.procs == [worker]


def test_keyboard_interrupt_raised_by_an_orchestrator_fails_it_and_sigint_still_stops_the_worker(
    procs: Procs, redis_url: str, hub: str
) -> None:
    """``durable worker`` takes SIGINT through a signal receiver, so a KeyboardInterrupt inside an
    orchestrator can only be the code's own: it fails that instance. Ctrl-C still stops the worker."""
    worker = procs.spawn()
    with Client(redis_url, hub=hub) as client:
        iid = client.schedule_new_orchestration("interrupts")
        state = _wait_alive(client, iid, worker)
        assert state.runtime_status == OrchestrationStatus.FAILED
        assert state.failure_details is not None and state.failure_details.error_type == "KeyboardInterrupt"
        _others_complete(client)
    worker.send_signal(signal.SIGINT)
    assert worker.wait(timeout=30) == 0


def _config() -> WorkerConfig:
    return WorkerConfig(balance_interval_ms=100, poll_ms=200)


def test_entity_operation_raising_system_exit_fails_the_call(redis_url: str, hub: str) -> None:
    worker = Worker(redis_url, hub=hub, config=_config())

    @worker.entity(name="counter")
    def counter(ctx: Any, value: int) -> int:
        if ctx.operation == "exit":
            raise SystemExit(value)
        total = int(ctx.get_state(0)) + value
        ctx.set_state(total)
        return total

    @worker.orchestrator
    def calls_exiting_entity(ctx: Any, _: Any) -> Any:
        try:
            yield ctx.call_entity("@counter@k", "exit", input=2)
        except TaskFailedError as exc:
            failed = [exc.details.error_type, exc.details.message]
        total = yield ctx.call_entity("@counter@k", "add", input=5)
        return [failed, total]

    with worker, Client(redis_url, hub=hub) as client:
        iid = client.schedule_new_orchestration(calls_exiting_entity)
        state = client.wait_for_orchestration_completion(iid, timeout=30)
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.output == [["SystemExit", "2"], 5]


def test_async_activity_raising_cancelled_error_nobody_asked_for_fails_its_task(
    redis_url: str, hub: str
) -> None:
    """A cancellation exception the activity raises while the worker is not cancelling it is the
    activity's failure too; the worker's own cancellation (when it stops) still propagates."""
    worker = Worker(redis_url, hub=hub, config=_config())

    @worker.activity
    async def leaks_cancellation(ctx: Any, _: Any) -> None:
        raise asyncio.CancelledError("leaked")

    @worker.orchestrator
    def catches_cancellation(ctx: Any, _: Any) -> Any:
        try:
            yield ctx.call_activity(leaks_cancellation)
        except TaskFailedError as exc:
            return exc.details.error_type
        return "not reached"

    with worker, Client(redis_url, hub=hub) as client:
        iid = client.schedule_new_orchestration(catches_cancellation)
        state = client.wait_for_orchestration_completion(iid, timeout=30)
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.output == "CancelledError"
