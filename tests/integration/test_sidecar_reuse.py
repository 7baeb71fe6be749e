"""The id reuse policy of ``StartInstance`` (``OrchestrationIdReusePolicy``), through the SDK's own
client against ``durable sidecar``; and the engine's ``replace`` it maps to, natively."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest
from durabletask import client as dt_client
from durabletask import history
from durabletask.internal import orchestrator_service_pb2 as pb
from fixtures import sdk_app

from durable import Client, OrchestrationAlreadyExistsError, OrchestrationStatus, WorkerConfig
from durable._sidecar import Sidecar

pytestmark = pytest.mark.standalone_only
S = dt_client.OrchestrationStatus


@pytest.fixture
def sdk(redis_url: str, hub: str) -> Iterator[dt_client.TaskHubGrpcClient]:
    config = WorkerConfig(partitions=4, poll_ms=100, balance_interval_ms=100, drain_timeout=5)
    with Sidecar(redis_url, hub, port=0, config=config, visibility_ms=2000) as sidecar:
        w = sdk_app.build(sidecar.address)
        w.start()
        try:
            yield dt_client.TaskHubGrpcClient(host_address=sidecar.address)
        finally:
            w.stop()


def _policy(*statuses: S) -> pb.OrchestrationIdReusePolicy:
    return pb.OrchestrationIdReusePolicy(replaceableStatus=[s.value for s in statuses])


def _start(c: dt_client.TaskHubGrpcClient, iid: str, policy: pb.OrchestrationIdReusePolicy | None) -> str:
    return c.schedule_new_orchestration(sdk_app.approval, instance_id=iid, reuse_id_policy=policy)


def _refused(c: dt_client.TaskHubGrpcClient, iid: str, policy: pb.OrchestrationIdReusePolicy | None) -> str:
    with pytest.raises(grpc.RpcError) as info:
        _start(c, iid, policy)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    return str(info.value.details())


def _approve(c: dt_client.TaskHubGrpcClient, iid: str, answer: str) -> dt_client.OrchestrationState:
    c.raise_orchestration_event(iid, "approve", data=answer)
    state = c.wait_for_orchestration_completion(iid, timeout=30)
    assert state is not None and state.runtime_status == S.COMPLETED
    return state


def test_running_instance_is_replaced_only_when_the_policy_lists_its_status(
    sdk: dt_client.TaskHubGrpcClient,
) -> None:
    _start(sdk, "job", None)
    assert sdk.wait_for_orchestration_start("job", timeout=30) is not None
    # no policy: the engine's rule (only a finished instance is replaced); a policy without RUNNING
    assert "not finished" in _refused(sdk, "job", None)
    assert "RUNNING" in _refused(sdk, "job", _policy(S.COMPLETED, S.FAILED, S.TERMINATED))
    assert "RUNNING" in _refused(sdk, "job", _policy())

    # RUNNING listed: the running instance is terminated, then replaced by a fresh one
    assert _start(sdk, "job", _policy(S.RUNNING)) == "job"
    started = sdk.wait_for_orchestration_start("job", timeout=30)
    assert started is not None and started.runtime_status in (S.PENDING, S.RUNNING)
    # the new execution is not hit by the terminate that ended the old one
    assert _approve(sdk, "job", "second").serialized_output == '{"approved": "second"}'
    events = sdk.get_orchestration_history("job")
    assert sum(isinstance(e, history.ExecutionStartedEvent) for e in events) == 1
    assert not any(isinstance(e, history.ExecutionTerminatedEvent) for e in events)


def test_finished_instance_is_replaced_by_default_and_kept_when_the_policy_says_so(
    sdk: dt_client.TaskHubGrpcClient,
) -> None:
    _start(sdk, "done", None)
    sdk.wait_for_orchestration_start("done", timeout=30)
    _approve(sdk, "done", "first")
    # a policy that does not list COMPLETED (an empty one included) keeps the finished instance
    assert "COMPLETED" in _refused(sdk, "done", _policy())
    assert "COMPLETED" in _refused(sdk, "done", _policy(S.FAILED, S.RUNNING))
    kept = sdk.get_orchestration_state("done")
    assert kept is not None and kept.serialized_output == '{"approved": "first"}'

    _start(sdk, "done", _policy(S.COMPLETED))
    assert _approve(sdk, "done", "second").serialized_output == '{"approved": "second"}'
    _start(sdk, "done", None)  # no policy: a finished instance is replaced (the engine's rule)
    assert _approve(sdk, "done", "third").serialized_output == '{"approved": "third"}'


def test_concurrent_replacing_starts_leave_one_live_execution(sdk: dt_client.TaskHubGrpcClient) -> None:
    _start(sdk, "hot", None)
    sdk.wait_for_orchestration_start("hot", timeout=30)
    everything = _policy(S.PENDING, S.RUNNING, S.SUSPENDED, S.COMPLETED, S.FAILED, S.TERMINATED)
    errors: list[BaseException] = []

    def replace() -> None:
        try:
            _start(sdk, "hot", everything)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=replace) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    state = sdk.wait_for_orchestration_start("hot", timeout=30)
    assert state is not None and state.runtime_status in (S.PENDING, S.RUNNING)
    assert _approve(sdk, "hot", "last").serialized_output == '{"approved": "last"}'
    events = sdk.get_orchestration_history("hot")
    assert sum(isinstance(e, history.ExecutionStartedEvent) for e in events) == 1


def test_suspended_and_scheduled_instances_follow_the_policy(sdk: dt_client.TaskHubGrpcClient) -> None:
    _start(sdk, "paused", None)
    sdk.wait_for_orchestration_start("paused", timeout=30)
    sdk.suspend_orchestration("paused")
    sdk.wait_for_orchestration_start("paused", timeout=30)
    assert "SUSPENDED" in _refused(sdk, "paused", _policy(S.RUNNING))
    _start(sdk, "paused", _policy(S.SUSPENDED))
    assert _approve(sdk, "paused", "resumed").serialized_output == '{"approved": "resumed"}'


def test_native_client_replace_names_the_statuses(
    sdk: dt_client.TaskHubGrpcClient, redis_url: str, hub: str
) -> None:
    with Client(redis_url, hub) as client:
        client.schedule_new_orchestration("approval", instance_id="n1")
        client.wait_for_orchestration_start("n1", timeout=30)
        with pytest.raises(OrchestrationAlreadyExistsError):
            client.schedule_new_orchestration("approval", instance_id="n1", replace=[])
        client.schedule_new_orchestration("approval", instance_id="n1", replace=[OrchestrationStatus.RUNNING])
        client.raise_orchestration_event("n1", "approve", data="native")
        state = client.wait_for_orchestration_completion("n1", timeout=30)
        assert state.runtime_status == OrchestrationStatus.COMPLETED
        assert state.output == {"approved": "native"}
