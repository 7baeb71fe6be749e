"""``durable sidecar``: Durable Task SDK workers and clients (the ``durabletask`` package) on a real
Redis, alone and side by side with native workers and clients on one hub."""

from __future__ import annotations

import datetime as _dt
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from durabletask import client as dt_client
from durabletask import history
from durabletask.internal import orchestrator_service_pb2 as pb
from durabletask.internal import orchestrator_service_pb2_grpc as stubs
from fixtures import sdk_app
from google.protobuf import wrappers_pb2

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


def test_a_start_keeps_its_version_and_tags(sidecar: Sidecar, redis_url: str, hub: str) -> None:
    native = Worker(redis_url, hub, config=_config())

    @native.orchestrator(name="flow", version="2")
    def flow_v2(ctx: Any, _: Any) -> Any:
        return f"v{ctx.version}"
        yield  # pragma: no cover

    with native, grpc.insecure_channel(sidecar.address) as channel:
        _wait_until(lambda: len(native.owned_partitions) == 4, 10)
        stub = stubs.TaskHubSidecarServiceStub(channel)
        request = pb.CreateInstanceRequest(name="flow", instanceId="tagged-1")
        request.version.value = "2"
        request.tags["tenant"] = "acme"
        assert stub.StartInstance(request).instanceId == "tagged-1"
        with Client(redis_url, hub) as client:
            state = client.wait_for_orchestration_completion("tagged-1", timeout=30)
        reply = stub.GetInstance(pb.GetInstanceRequest(instanceId="tagged-1", getInputsAndOutputs=True))
    assert state.version == "2" and state.tags == {"tenant": "acme"} and state.output == "v2"
    assert reply.orchestrationState.version.value == "2"
    assert dict(reply.orchestrationState.tags) == {"tenant": "acme"}


def test_malformed_requests_are_refused_and_the_sidecar_keeps_serving(
    sidecar: Sidecar, redis_url: str, hub: str
) -> None:
    with grpc.insecure_channel(sidecar.address) as channel:
        stub = stubs.TaskHubSidecarServiceStub(channel)
        bad_input = pb.CreateInstanceRequest(name="flow", instanceId="bad-json")
        bad_input.input.value = "{not json"
        forged = [
            pb.OrchestratorResponse(instanceId="x", completionToken="garbage"),
            pb.OrchestratorResponse(instanceId="x", completionToken="o\x1fstream\x1f1-0\x1fx\x1ftok"),
            pb.ActivityResponse(instanceId="x", taskId=1, completionToken="garbage"),
        ]
        with pytest.raises(grpc.RpcError) as info:
            stub.StartInstance(bad_input)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        for request in forged:
            call = stub.CompleteActivityTask if isinstance(request, pb.ActivityResponse) else None
            call = call or stub.CompleteOrchestratorTask
            try:
                call(request)
            except grpc.RpcError as exc:  # refused as malformed, or accepted and ignored: never a crash
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
        ok = pb.CreateInstanceRequest(name="flow", instanceId="after-garbage")
        assert stub.StartInstance(ok).instanceId == "after-garbage"
    with Client(redis_url, hub) as client:
        assert client.get_orchestration_state("bad-json") is None  # nothing half-created
        assert client.get_orchestration_state("after-garbage") is not None


def test_unsupported_rpcs_answer_unimplemented_with_a_reason(sidecar: Sidecar) -> None:
    with grpc.insecure_channel(sidecar.address) as channel:
        stub = stubs.TaskHubSidecarServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.DeleteTaskHub(pb.DeleteTaskHubRequest())
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "DeleteTaskHub" in str(info.value.details()) and "DeleteTaskHub" in UNSUPPORTED
    assert "never deletes a hub" in str(info.value.details())
    assert "RewindInstance" not in UNSUPPORTED and "CreateTaskHub" not in UNSUPPORTED


def test_create_task_hub_keeps_the_hub_and_recreating_it_is_refused(
    sidecar: Sidecar, redis_url: str, hub: str
) -> None:
    admin = redis.Redis.from_url(redis_url)
    meta = f"durable:{{{hub}}}:meta"
    partitions = admin.hget(meta, "partitions")
    assert partitions == b"4"
    with grpc.insecure_channel(sidecar.address) as channel:
        stub = stubs.TaskHubSidecarServiceStub(channel)
        stub.CreateTaskHub(pb.CreateTaskHubRequest())  # it exists: nothing changes
        assert admin.hget(meta, "partitions") == partitions
        admin.delete(meta)  # lost metadata is written again, with the partition count in use
        stub.CreateTaskHub(pb.CreateTaskHubRequest())
        assert admin.hget(meta, "partitions") == partitions
        with pytest.raises(grpc.RpcError) as info:
            stub.CreateTaskHub(pb.CreateTaskHubRequest(recreateIfExists=True))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "never deletes a hub" in str(info.value.details())
        with pytest.raises(grpc.RpcError) as info:
            stub.SkipGracefulOrchestrationTerminations(pb.SkipGracefulOrchestrationTerminationsRequest())
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    admin.close()
    with Client(redis_url, hub) as client:  # the hub still works
        client.schedule_new_orchestration("sequence", instance_id="after-create")
        assert client.get_orchestration_state("after-create") is not None


def test_rewind_instance_rewinds_a_native_run_orchestration(
    sidecar: Sidecar, redis_url: str, hub: str
) -> None:
    native = Worker(redis_url, hub, config=_config())
    calls: list[int] = []

    @native.activity
    def flaky(ctx: Any, n: int) -> int:
        calls.append(n)
        if len(calls) == 1:
            raise ConnectionError("down")
        return n + 1

    @native.orchestrator
    def flaky_once(ctx: Any, n: int) -> Any:
        return (yield ctx.call_activity(flaky, input=n))

    with native:
        _wait_until(lambda: not sidecar.owned_partitions and len(native.owned_partitions) == 4, 10)
        sdk = dt_client.TaskHubGrpcClient(host_address=sidecar.address)
        iid = sdk.schedule_new_orchestration("flaky_once", input=1)
        state = sdk.wait_for_orchestration_completion(iid, timeout=30)
        assert state is not None and state.runtime_status == dt_client.OrchestrationStatus.FAILED
        with grpc.insecure_channel(sidecar.address) as channel:
            stub = stubs.TaskHubSidecarServiceStub(channel)
            sdk.rewind_orchestration(iid, reason="it is back")  # the SDK client's own call
            with pytest.raises(grpc.RpcError) as info:
                stub.RewindInstance(pb.RewindInstanceRequest(instanceId="no-such-instance"))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
        state = sdk.wait_for_orchestration_completion(iid, timeout=30)
    assert state is not None and state.runtime_status == dt_client.OrchestrationStatus.COMPLETED
    assert state.serialized_output == "2" and calls == [1, 1]


def test_rewind_of_an_sdk_run_orchestration_is_refused_with_the_reason(
    sdk: dt_client.TaskHubGrpcClient, sidecar: Sidecar, redis_url: str, hub: str
) -> None:
    iid = sdk.schedule_new_orchestration(sdk_app.failing, input=None)
    state = sdk.wait_for_orchestration_completion(iid, timeout=30)
    assert state is not None and state.runtime_status == dt_client.OrchestrationStatus.FAILED
    with grpc.insecure_channel(sidecar.address) as channel:
        stub = stubs.TaskHubSidecarServiceStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            stub.RewindInstance(pb.RewindInstanceRequest(instanceId=iid))
        assert time.monotonic() - started < 10  # refused at once, not after a timeout
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "Durable Task SDK worker" in str(info.value.details())
        with pytest.raises(grpc.RpcError) as info:  # a running or finished one: not FAILED
            done = sdk.schedule_new_orchestration(sdk_app.sequence, input=["x"])
            sdk.wait_for_orchestration_completion(done, timeout=30)
            stub.RewindInstance(pb.RewindInstanceRequest(instanceId=done))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with Client(redis_url, hub) as native:  # a native client is told the same
        with pytest.raises(ValueError, match="Durable Task SDK worker"):
            native.rewind_orchestration(iid, timeout=10)
        after = native.get_orchestration_state(iid)
    assert after is not None and after.runtime_status == OrchestrationStatus.FAILED
    assert after.failure_details is not None and after.failure_details.error_type == "RewindError"
    assert after.failure_details.inner_failure is not None
    assert after.failure_details.inner_failure.message != after.failure_details.message


class _RawWorker:
    """A Durable Task worker speaking the protocol directly (the Python SDK has no API for some
    actions): ``answer(name, request)`` gives the actions of each orchestration work item."""

    def __init__(self, address: str, answer: Any) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = stubs.TaskHubSidecarServiceStub(self.channel)
        self.answer = answer
        self.stream = self.stub.GetWorkItems(pb.GetWorkItemsRequest())
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for item in self.stream:
                if not item.HasField("orchestratorRequest"):
                    continue
                req = item.orchestratorRequest
                events = [*req.pastEvents, *req.newEvents]
                started = next(e.executionStarted for e in events if e.HasField("executionStarted"))
                actions = self.answer(started.name, started.input.value, events)
                self.stub.CompleteOrchestratorTask(
                    pb.OrchestratorResponse(
                        instanceId=req.instanceId, actions=actions, completionToken=item.completionToken
                    )
                )
        except grpc.RpcError:
            return  # closed

    def close(self) -> None:
        self.stream.cancel()
        self.channel.close()
        self.thread.join(5)


def test_terminate_orchestration_actions_terminate_their_target_and_its_tree(
    sidecar: Sidecar, redis_url: str, hub: str
) -> None:
    def answer(name: str, data: str, events: list[Any]) -> list[pb.OrchestratorAction]:
        if name == "idle_parent" and not any(e.HasField("subOrchestrationInstanceCreated") for e in events):
            child = pb.CreateSubOrchestrationAction(instanceId=json.loads(data), name="idle")
            return [pb.OrchestratorAction(id=0, createSubOrchestration=child)]
        if name == "terminator":
            target = json.loads(data)
            reason = wrappers_pb2.StringValue(value="no longer needed")
            stop = pb.TerminateOrchestrationAction(instanceId=target, reason=reason, recurse=True)
            done = pb.CompleteOrchestrationAction(
                orchestrationStatus=pb.ORCHESTRATION_STATUS_COMPLETED,
                result=wrappers_pb2.StringValue(value='"sent"'),
            )
            return [
                pb.OrchestratorAction(id=0, terminateOrchestration=stop),
                pb.OrchestratorAction(id=1, completeOrchestration=done),
            ]
        return []  # idle: waits for ever

    raw = _RawWorker(sidecar.address, answer)
    try:
        with Client(redis_url, hub) as client:
            parent = client.schedule_new_orchestration("idle_parent", input="the-child")
            _wait_until(
                lambda: (
                    (s := client.get_orchestration_state("the-child")) is not None
                    and s.runtime_status == OrchestrationStatus.RUNNING
                ),
                20,
            )
            iid = client.schedule_new_orchestration("terminator", input=parent)
            done = client.wait_for_orchestration_completion(iid, timeout=20)
            assert done.runtime_status == OrchestrationStatus.COMPLETED and done.output == "sent"
            for target in (parent, "the-child"):
                state = client.wait_for_orchestration_completion(target, timeout=20)
                assert state.runtime_status == OrchestrationStatus.TERMINATED, target
                assert state.output == "no longer needed"
            history = client.get_orchestration_history(iid)
    finally:
        raw.close()
    assert not any(e.get("k") == "remote_terminate" for e in history)  # not a history event


def test_native_client_terminates_an_sdk_run_tree(sidecar: Sidecar, redis_url: str, hub: str) -> None:
    def answer(name: str, data: str, events: list[Any]) -> list[pb.OrchestratorAction]:
        if name == "idle_parent" and not any(e.HasField("subOrchestrationInstanceCreated") for e in events):
            child = pb.CreateSubOrchestrationAction(instanceId=json.loads(data), name="idle")
            return [pb.OrchestratorAction(id=0, createSubOrchestration=child)]
        return []

    raw = _RawWorker(sidecar.address, answer)
    try:
        with Client(redis_url, hub) as client:
            parent = client.schedule_new_orchestration("idle_parent", input="kid")
            _wait_until(
                lambda: (
                    (s := client.get_orchestration_state("kid")) is not None
                    and s.runtime_status == OrchestrationStatus.RUNNING
                ),
                20,
            )
            client.terminate_orchestration(parent, output="stop")  # recursive by default
            for target in (parent, "kid"):
                state = client.wait_for_orchestration_completion(target, timeout=20)
                assert state.runtime_status == OrchestrationStatus.TERMINATED, target
    finally:
        raw.close()
