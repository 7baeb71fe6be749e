"""``durable sidecar``: entities implemented in Durable Task SDK workers (the ``durabletask`` package),
run by the engine's entity machinery: calls, signals, critical sections, failures, delayed signals,
entity actions, and interop with native clients and orchestrations on one hub."""

from __future__ import annotations

import datetime as _dt
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from durabletask import client as dt_client
from durabletask import entities, history
from fixtures import sdk_app

from durable import Client, EntityId, OrchestrationStatus, Worker, WorkerConfig
from durable._sidecar import Sidecar

pytestmark = pytest.mark.standalone_only


def _config() -> WorkerConfig:
    return WorkerConfig(partitions=4, poll_ms=100, balance_interval_ms=100, drain_timeout=5)


@pytest.fixture
def sidecar(redis_url: str, hub: str) -> Iterator[Sidecar]:
    with Sidecar(redis_url, hub, port=0, config=_config(), visibility_ms=2000) as sc:
        yield sc


@pytest.fixture
def sdk(sidecar: Sidecar) -> Iterator[dt_client.TaskHubGrpcClient]:
    w = sdk_app.build(sidecar.address)
    w.start()
    c = dt_client.TaskHubGrpcClient(host_address=sidecar.address)
    try:
        yield c
    finally:
        w.stop()


def _run(sdk: dt_client.TaskHubGrpcClient, orchestrator: Any, value: Any) -> Any:
    iid = sdk.schedule_new_orchestration(orchestrator, input=value)
    state = sdk.wait_for_orchestration_completion(iid, timeout=30)
    assert state is not None and state.runtime_status == dt_client.OrchestrationStatus.COMPLETED, state
    return state.serialized_output


def test_sdk_entities_calls_critical_sections_and_failures(
    sdk: dt_client.TaskHubGrpcClient, redis_url: str, hub: str
) -> None:
    output = _run(sdk, sdk_app.entity_calls, "k1")
    assert '"first": 5' in output and '"second": 10' in output and '"after": 10' in output
    assert "cannot divide" in output  # the failed operation's state change was rolled back

    account = sdk.get_entity(entities.EntityInstanceId("Account", "k1"), include_state=True)
    assert account is not None and account.get_state(int) in (5, 6)  # the final signal may be in flight
    with Client(redis_url, hub) as native:  # a native client reads the decoded value
        state = native.get_entity(EntityId("tally", "k1"))
        assert state is not None and state.state == 10 and state.locked_by is None


def test_entity_queries_storage_cleaning_and_an_orchestration_s_entity_history(
    sdk: dt_client.TaskHubGrpcClient,
) -> None:
    iid = sdk.schedule_new_orchestration(sdk_app.entity_calls, input="q1")
    assert sdk.wait_for_orchestration_completion(iid, timeout=30) is not None
    assert _run(sdk, sdk_app.entity_get, "q2") == "0"  # a call to a stateless entity creates nothing
    for key in ("q2", "q3", "other"):
        sdk.signal_entity(entities.EntityInstanceId("tally", key), "add", input=1)
    assert _run(sdk, sdk_app.entity_get, "other") == "1"  # the signals were applied

    found = sdk.get_all_entities(dt_client.EntityQuery(instance_id_starts_with="@Tally@q", page_size=1))
    assert sorted(str(e.id) for e in found) == ["@tally@q1", "@tally@q2", "@tally@q3"]  # over 3 pages
    assert {str(e.id): e.get_state(int) for e in found}["@tally@q1"] == 10
    everything = sdk.get_all_entities(dt_client.EntityQuery(include_state=False))
    assert {str(e.id) for e in everything} >= {"@account@q1", "@tally@other"}
    cleaned = sdk.clean_entity_storage()
    assert (cleaned.empty_entities_removed, cleaned.orphaned_locks_released) == (0, 0)

    events = sdk.get_orchestration_history(iid)
    kinds = {type(e) for e in events}
    assert {
        history.EntityOperationCalledEvent,
        history.EntityOperationCompletedEvent,
        history.EntityOperationFailedEvent,
        history.EntityLockRequestedEvent,
        history.EntityLockGrantedEvent,
        history.EntityUnlockSentEvent,
        history.EntityOperationSignaledEvent,
    } <= kinds


def test_sdk_entity_signals_from_clients_in_order_then_delayed(sdk: dt_client.TaskHubGrpcClient) -> None:
    counter_id = entities.EntityInstanceId("tally", "k2")
    for i in range(1, 6):
        sdk.signal_entity(counter_id, "add", input=i)
    # an orchestration's call reaches the entity after the client's signals, and sees them all
    get = _run(sdk, sdk_app.entity_get, "k2")
    assert get == "15"

    due = _dt.datetime.now(_dt.UTC) + _dt.timedelta(milliseconds=400)
    sdk.signal_entity(counter_id, "add", input=100, signal_time=due)
    assert _run(sdk, sdk_app.entity_get, "k2") == "15"  # not before its time
    deadline = time.monotonic() + 15
    while True:  # a timer's effect is observable only by polling
        state = sdk.get_entity(counter_id, include_state=True)
        if state is not None and state.get_state(int) == 115:
            break
        assert time.monotonic() < deadline, "the delayed signal never arrived"
        time.sleep(0.05)
    assert _dt.datetime.now(_dt.UTC) >= due


def test_sdk_entity_actions_signal_entities_and_start_orchestrations(
    sdk: dt_client.TaskHubGrpcClient,
) -> None:
    sdk.signal_entity(entities.EntityInstanceId("tally", "k3"), "notify", input="k4")
    # the entity's actions leave with its batch's commit, before it answers the next call
    assert _run(sdk, sdk_app.entity_get, "k3") == "0"
    deadline = time.monotonic() + 15
    while sdk.get_orchestration_state("started-by-k4") is None:  # forwarded after that commit
        assert time.monotonic() < deadline, "the entity's orchestration never started"
        time.sleep(0.02)
    started = sdk.wait_for_orchestration_completion("started-by-k4", timeout=30)
    assert started is not None and started.serialized_output == '["Hello k4!"]'
    # the signal to k4 left before the start, so the call below reaches k4 after it
    assert _run(sdk, sdk_app.entity_get, "k4") == "100"


def test_sdk_worker_killed_mid_entity_batch_the_operation_commits_once(
    sidecar: Sidecar, tmp_path: Path
) -> None:
    first = sdk_app.spawn(sidecar.address, tmp_path)
    second: subprocess.Popen[str] | None = None
    try:
        sdk = dt_client.TaskHubGrpcClient(host_address=sidecar.address)
        sdk.signal_entity(entities.EntityInstanceId("tally", "k6"), "slow", input="op")
        _wait_until(lambda: (tmp_path / f"op.{first.pid}").exists(), 30)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        (tmp_path / "op.go").write_text("go")  # the next attempt may finish
        second = sdk_app.spawn(sidecar.address, tmp_path)
        # the batch went to the second worker; the killed one's state change was never committed
        assert _run(sdk, sdk_app.entity_get, "k6") == "1"
        assert (tmp_path / f"op.{second.pid}").exists()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_native_orchestration_calls_an_sdk_entity_and_the_other_way_round(
    sidecar: Sidecar, sdk: dt_client.TaskHubGrpcClient, redis_url: str, hub: str
) -> None:
    native = Worker(redis_url, hub, config=_config())

    @native.entity
    def native_counter(ctx: Any, amount: int) -> int:
        ctx.set_state(ctx.get_state(0) + amount)
        return int(ctx.get_state())

    @native.orchestrator
    def native_caller(ctx: Any, key: str) -> Any:
        target = EntityId("tally", key)
        first = yield ctx.call_entity(target, "add", input=2)
        with (yield ctx.lock_entities(target)):
            second = yield ctx.call_entity(target, "add", input=3)
        return [first, second]

    with native, Client(redis_url, hub) as client:
        # the native worker owns the partitions: it commits the orchestration and the entity
        _wait_until(lambda: not sidecar.owned_partitions and len(native.owned_partitions) == 4, 10)
        iid = client.schedule_new_orchestration("native_caller", input="k5")
        state = client.wait_for_orchestration_completion(iid, timeout=30)
        # an SDK orchestration calls (inside a critical section) an entity the native worker runs
        sdk_iid = sdk.schedule_new_orchestration(sdk_app.call_entity, input=["native_counter", "n", "add", 7])
        sdk_state = sdk.wait_for_orchestration_completion(sdk_iid, timeout=30)
    assert state.runtime_status == OrchestrationStatus.COMPLETED and state.output == [2, 5]
    assert sdk_state is not None and sdk_state.serialized_output == "7", sdk_state


def _wait_until(cond: Any, timeout: float) -> None:
    """Wait for a state observable only by polling (partition ownership, another process's files)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
