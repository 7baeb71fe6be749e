"""``durable sidecar``: Durable Task SDK workers and clients (the ``durabletask`` package) on a real
Redis, alone and side by side with native workers and clients on one hub."""

from __future__ import annotations

import datetime as _dt
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from durabletask import client as dt_client
from durabletask import history
from durabletask.internal import orchestrator_service_pb2 as pb
from durabletask.internal import orchestrator_service_pb2_grpc as stubs
from fixtures import sdk_app

from durable import Client, OrchestrationStatus, Worker, WorkerConfig
from durable._sidecar import UNSUPPORTED, Sidecar

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
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


def test_sdk_worker_runs_activities_events_timers_and_sub_orchestrations(
    sdk: dt_client.TaskHubGrpcClient,
) -> None:
    iid = sdk.schedule_new_orchestration(sdk_app.sequence, input=["Tokyo", "Seattle"])
    state = sdk.wait_for_orchestration_completion(iid, timeout=30)
    assert state is not None and state.runtime_status == dt_client.OrchestrationStatus.COMPLETED
    assert state.serialized_output == '["Hello Tokyo!", "Hello Seattle!"]'
    assert state.serialized_input == '["Tokyo", "Seattle"]'
    events = sdk.get_orchestration_history(iid)
    scheduled = [e for e in events if isinstance(e, history.TaskScheduledEvent)]
    assert [e.name for e in scheduled] == ["hello", "hello"]
    assert isinstance(events[-1], history.ExecutionCompletedEvent)

    iid = sdk.schedule_new_orchestration(sdk_app.approval)
    started = sdk.wait_for_orchestration_start(iid, timeout=30)
    assert started is not None and started.runtime_status == dt_client.OrchestrationStatus.RUNNING
    sdk.raise_orchestration_event(iid, "approve", data=True)
    state = sdk.wait_for_orchestration_completion(iid, timeout=30)
    assert state is not None and state.serialized_output == '{"approved": true}'
    assert state.serialized_custom_status == '"waiting"'

    # an event raised before a scheduled start runs waits for the start
    due = _dt.datetime.now(_dt.UTC) + _dt.timedelta(milliseconds=300)
    iid = sdk.schedule_new_orchestration(sdk_app.approval, start_at=due)
    sdk.raise_orchestration_event(iid, "approve", data="early")
    state = sdk.wait_for_orchestration_completion(iid, timeout=30)
    assert state is not None and state.serialized_output == '{"approved": "early"}'

    iid = sdk.schedule_new_orchestration(sdk_app.parent, input=["Oslo"])
    state = sdk.wait_for_orchestration_completion(iid, timeout=30)
    assert state is not None and state.serialized_output == '{"child": ["Hello Oslo!"]}'

    iid = sdk.schedule_new_orchestration(sdk_app.fan_out, input=20)
    state = sdk.wait_for_orchestration_completion(iid, timeout=30)
    assert state is not None and state.serialized_output == "20"

    iid = sdk.schedule_new_orchestration(sdk_app.counter, input=0)
    state = sdk.wait_for_orchestration_completion(iid, timeout=30)
    assert state is not None and state.serialized_output == "3"


def test_sdk_failures_terminate_suspend_resume_purge_and_query(sdk: dt_client.TaskHubGrpcClient) -> None:
    iid = sdk.schedule_new_orchestration(sdk_app.failing)
    state = sdk.wait_for_orchestration_completion(iid, timeout=30)
    assert state is not None and state.runtime_status == dt_client.OrchestrationStatus.FAILED
    assert state.failure_details is not None and "boom" in state.failure_details.message

    waiting = sdk.schedule_new_orchestration(sdk_app.approval)
    sdk.wait_for_orchestration_start(waiting, timeout=30)
    sdk.suspend_orchestration(waiting)
    sdk.raise_orchestration_event(waiting, "approve", data="late")
    suspended = sdk.get_orchestration_state(waiting)
    assert suspended is not None and suspended.runtime_status == dt_client.OrchestrationStatus.SUSPENDED
    sdk.resume_orchestration(waiting)
    state = sdk.wait_for_orchestration_completion(waiting, timeout=30)
    assert state is not None and state.serialized_output == '{"approved": "late"}'

    stuck = sdk.schedule_new_orchestration(sdk_app.approval)
    sdk.wait_for_orchestration_start(stuck, timeout=30)
    sdk.terminate_orchestration(stuck, output="stop")
    state = sdk.wait_for_orchestration_completion(stuck, timeout=30)
    assert state is not None and state.runtime_status == dt_client.OrchestrationStatus.TERMINATED
    assert state.serialized_output == '"stop"'

    found = sdk.get_all_orchestration_states(
        dt_client.OrchestrationQuery(runtime_status=[dt_client.OrchestrationStatus.FAILED])
    )
    assert [s.instance_id for s in found] == [iid]
    finished = sdk.list_instance_ids(page_size=2)
    assert len(finished.items) == 2 and finished.continuation_token is not None
    rest = sdk.list_instance_ids(page_size=2, continuation_token=finished.continuation_token)
    assert sorted(finished.items + rest.items) == sorted([iid, waiting, stuck])
    assert rest.continuation_token is None
    failed = sdk.list_instance_ids(runtime_status=[dt_client.OrchestrationStatus.FAILED])
    assert failed.items == [iid]
    assert sdk.purge_orchestration(iid).deleted_instance_count == 1
    assert sdk.get_orchestration_state(iid) is None


def test_native_client_starts_an_orchestration_an_sdk_worker_runs(
    sdk: dt_client.TaskHubGrpcClient, redis_url: str, hub: str
) -> None:
    with Client(redis_url, hub) as native:
        iid = native.schedule_new_orchestration("sequence", input=["Lima"])
        state = native.wait_for_orchestration_completion(iid, timeout=30)
    assert state.runtime_status == OrchestrationStatus.COMPLETED
    assert state.output == ["Hello Lima!"]  # the decoded JSON value


def test_sdk_client_starts_an_orchestration_a_native_worker_runs(
    sidecar: Sidecar, redis_url: str, hub: str
) -> None:
    native = Worker(redis_url, hub, config=_config())

    @native.activity
    def double(ctx: Any, n: int) -> int:
        return n * 2

    @native.orchestrator
    def doubled(ctx: Any, items: list[int]) -> Any:
        out = []
        for i in items:
            out.append((yield ctx.call_activity(double, input=i)))
        return out

    with native:
        # where a native worker is live it owns the partitions (a sidecar runs no code of its own)
        _wait_until(lambda: not sidecar.owned_partitions and len(native.owned_partitions) == 4, 10)
        sdk = dt_client.TaskHubGrpcClient(host_address=sidecar.address)
        iid = sdk.schedule_new_orchestration("doubled", input=[1, 2, 3])
        state = sdk.wait_for_orchestration_completion(iid, timeout=30)
    assert state is not None and state.runtime_status == dt_client.OrchestrationStatus.COMPLETED
    assert state.serialized_output == "[2, 4, 6]"


def test_two_sidecars_share_a_hub(redis_url: str, hub: str) -> None:
    with (
        Sidecar(redis_url, hub, port=0, config=_config()) as first,
        Sidecar(redis_url, hub, port=0, config=_config()) as second,
    ):
        w = sdk_app.build(first.address)  # the only SDK worker is connected to the first
        w.start()
        try:
            sdk = dt_client.TaskHubGrpcClient(host_address=second.address)
            ids = [sdk.schedule_new_orchestration(sdk_app.sequence, input=[str(i)]) for i in range(8)]
            states = [sdk.wait_for_orchestration_completion(i, timeout=30) for i in ids]
            owners = {p for sc in (first, second) for p in sc.owned_partitions}
        finally:
            w.stop()
    assert [s.serialized_output if s else None for s in states] == [f'["Hello {i}!"]' for i in range(8)]
    assert first.owned_partitions == [] and second.owned_partitions == []  # released on stop
    assert owners  # both took part in partition ownership while running


def _wait_until(cond: Any, timeout: float) -> None:
    """Wait for a state observable only by polling (partition ownership, another process's files)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _wait_for_file(folder: Path, pattern: str, timeout: float) -> list[Path]:
    _wait_until(lambda: sorted(folder.glob(pattern)), timeout)
    return sorted(folder.glob(pattern))


def test_sdk_worker_killed_mid_activity_work_completes_on_the_next_worker(
    sidecar: Sidecar, tmp_path: Path
) -> None:
    first = sdk_app.spawn(sidecar.address, tmp_path)
    second: subprocess.Popen[str] | None = None
    try:
        sdk = dt_client.TaskHubGrpcClient(host_address=sidecar.address)
        iid = sdk.schedule_new_orchestration(sdk_app.long_task, input="job")
        _wait_for_file(tmp_path, f"job.{first.pid}", 30)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        (tmp_path / "job.go").write_text("go")  # the next attempt may finish
        second = sdk_app.spawn(sidecar.address, tmp_path)
        state = sdk.wait_for_orchestration_completion(iid, timeout=30)
        assert state is not None and state.runtime_status == dt_client.OrchestrationStatus.COMPLETED
        assert state.serialized_output == f'"job done by {second.pid}"'
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_readme_sdk_example_runs(sidecar: Sidecar, tmp_path: Path) -> None:
    text = (REPO / "README.md").read_text()
    example = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "TaskHubGrpcWorker" in b)
    assert 'host = "localhost:4001"' in example
    script = tmp_path / "sdk_example.py"
    script.write_text(example.replace('host = "localhost:4001"', f'host = "{sidecar.address}"'))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == '["Hello Tokyo!", "Hello Lima!"]'


def test_unsupported_rpcs_answer_unimplemented_with_a_reason(sidecar: Sidecar) -> None:
    with grpc.insecure_channel(sidecar.address) as channel:
        stub = stubs.TaskHubSidecarServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.RewindInstance(pb.RewindInstanceRequest(instanceId="x"))
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "RewindInstance" in str(info.value.details()) and "RewindInstance" in UNSUPPORTED
