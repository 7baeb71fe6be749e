"""The sample patterns of ``orchestrations.patterns`` against a real Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from durable import Client, OrchestrationStatus, Worker, WorkerConfig
from orchestrations import patterns
from orchestrations.patterns import (
    APPROVAL_EVENT,
    child_instance_id,
    fan_out_fan_in,
    function_chaining,
    human_interaction,
    monitor,
    retry_with_backoff,
    sample_order,
    sub_orchestrations,
)

TIMEOUT = 60


@pytest.fixture
def worker(redis_url: str, hub: str) -> Iterator[Worker]:
    w = patterns.register(Worker(redis_url, hub, config=WorkerConfig(balance_interval_ms=100, poll_ms=200)))
    with w:
        yield w


@pytest.fixture
def client(redis_url: str, hub: str) -> Iterator[Client]:
    with Client(redis_url, hub) as c:
        yield c


def test_module_worker_is_lazy_and_has_everything_registered() -> None:
    w = patterns.worker
    assert isinstance(w, Worker)
    assert w._runtime is None  # constructing it connected to nothing
    assert set(w.registry.orchestrators) == {f.__name__ for f in patterns.ORCHESTRATORS}
    assert set(w.registry.activities) == {f.__name__ for f in patterns.ACTIVITIES}


def test_register_on_another_worker_returns_it() -> None:
    w = Worker("redis://127.0.0.1:1/0", "unused")
    assert patterns.register(w) is w
    assert "function_chaining" in w.registry.orchestrators
    assert "process_item" in w.registry.activities


def test_function_chaining(worker: Worker, client: Client) -> None:
    order = sample_order(7)
    iid = client.schedule_new_orchestration(function_chaining, input=order)
    st = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert st.runtime_status == OrchestrationStatus.COMPLETED, st.failure_details
    assert st.output["order"] == order["id"]
    assert st.output["status"] == "shipped"
    assert st.output["total"] == round(sum(i["qty"] * i["price"] for i in order["items"]), 2)
    assert st.output["tracking"].startswith("TRK-")
    assert st.custom_status == "step 4/4: shipped"
    history = client.get_orchestration_history(iid)
    completed = [e["result"]["status"] for e in history if e["k"] == "TaskCompleted"]
    assert completed == ["validated", "reserved", "charged", "shipped"]


def test_function_chaining_failure_is_reported(worker: Worker, client: Client) -> None:
    iid = client.schedule_new_orchestration(function_chaining, input={"id": "EMPTY", "items": []})
    st = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert st.runtime_status == OrchestrationStatus.FAILED
    assert st.failure_details is not None
    assert "has no items" in st.failure_details.message


def test_fan_out_fan_in_500(worker: Worker, client: Client) -> None:
    n = 500
    iid = client.schedule_new_orchestration(fan_out_fan_in, input={"count": n})
    st = client.wait_for_orchestration_completion(iid, timeout=120)
    assert st.runtime_status == OrchestrationStatus.COMPLETED, st.failure_details
    assert st.output == {"items": n, "total": sum(i * i for i in range(1, n + 1))}
    assert st.custom_status == f"aggregated {n} results"


def test_human_interaction_approved(worker: Worker, client: Client) -> None:
    iid = client.schedule_new_orchestration(human_interaction, input={"subject": "laptop", "timeout_s": 60})
    # raise the event once the orchestration is waiting for it
    client.wait_for_orchestration_start(iid, timeout=TIMEOUT)
    client.raise_orchestration_event(iid, APPROVAL_EVENT, data={"approved": True, "by": "alice"})
    st = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert st.runtime_status == OrchestrationStatus.COMPLETED, st.failure_details
    assert st.output == "approved"
    assert st.custom_status == "approved"


def test_human_interaction_rejected(worker: Worker, client: Client) -> None:
    iid = client.schedule_new_orchestration(human_interaction, input={"timeout_s": 60})
    client.raise_orchestration_event(iid, APPROVAL_EVENT, data={"approved": False})
    st = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert st.output == "rejected"


def test_human_interaction_timed_out(worker: Worker, client: Client) -> None:
    iid = client.schedule_new_orchestration(human_interaction, input={"timeout_s": 0.5})
    st = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert st.runtime_status == OrchestrationStatus.COMPLETED, st.failure_details
    assert st.output == "timed out"
    # an approval arriving after the deadline changes nothing
    client.raise_orchestration_event(iid, APPROVAL_EVENT, data=True)
    assert client.get_orchestration_state(iid).output == "timed out"  # type: ignore[union-attr]


def test_monitor_completes_through_continue_as_new(worker: Worker, client: Client) -> None:
    job = {"job": "export-42", "interval_s": 0.1, "max_checks": 10, "ready_after": 4}
    iid = client.schedule_new_orchestration(monitor, input=job)
    st = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert st.runtime_status == OrchestrationStatus.COMPLETED, st.failure_details
    assert st.output == {"job": "export-42", "status": "done", "checks": 4}
    assert st.custom_status == {"job": "export-42", "check": 4, "status": "done"}
    # the last execution started from the continued-as-new input: its history holds one poll
    assert st.input == {**job, "check": 4}
    history = client.get_orchestration_history(iid)
    assert sum(1 for e in history if e["k"] == "TaskScheduled") == 1


def test_monitor_gives_up_after_max_checks(worker: Worker, client: Client) -> None:
    job = {"job": "stuck", "interval_s": 0.05, "max_checks": 3, "ready_after": 100}
    iid = client.schedule_new_orchestration(monitor, input=job)
    st = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert st.output == {"job": "stuck", "status": "gave up", "checks": 3}


def test_sub_orchestrations(worker: Worker, client: Client) -> None:
    orders = [sample_order(i) for i in range(1, 6)]
    iid = client.schedule_new_orchestration(sub_orchestrations, input={"orders": orders})
    st = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert st.runtime_status == OrchestrationStatus.COMPLETED, st.failure_details
    assert st.output["orders"] == len(orders)
    assert len(st.output["tracking"]) == len(orders)
    for order in orders:
        child = client.get_orchestration_state(child_instance_id(iid, order))
        assert child is not None
        assert child.runtime_status == OrchestrationStatus.COMPLETED
        assert child.parent_instance_id == iid
        assert child.output["order"] == order["id"]
    assert st.output["revenue"] == round(sum(o["total"] for o in _child_outputs(client, iid, orders)), 2)


def _child_outputs(client: Client, iid: str, orders: list[dict[str, object]]) -> list[dict[str, float]]:
    out = []
    for order in orders:
        state = client.get_orchestration_state(child_instance_id(iid, order))
        assert state is not None
        out.append(state.output)
    return out


def test_retry_succeeds_after_transient_failures(worker: Worker, client: Client) -> None:
    spec = {"fail_times": 2, "max_attempts": 4, "first_retry_s": 0.05}
    iid = client.schedule_new_orchestration(retry_with_backoff, input=spec)
    st = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert st.runtime_status == OrchestrationStatus.COMPLETED, st.failure_details
    assert st.output == {"attempts": 3, "result": "succeeded on attempt 3"}
    history = client.get_orchestration_history(iid)
    failed = [e for e in history if e["k"] == "TaskFailed"]
    assert len(failed) == 2
    assert all(e["failure"]["error_type"] == "TransientError" for e in failed)
    # the waits between attempts are durable timers
    assert sum(1 for e in history if e["k"] == "TimerCreated") == 2


def test_retry_exhausted_fails_with_details(worker: Worker, client: Client) -> None:
    spec = {"fail_times": 5, "max_attempts": 3, "first_retry_s": 0.05}
    iid = client.schedule_new_orchestration(retry_with_backoff, input=spec)
    st = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
    assert st.runtime_status == OrchestrationStatus.FAILED
    details = st.failure_details
    assert details is not None
    assert "simulated transient failure on attempt 3" in details.message
    assert "flaky_call" in details.message
    assert details.stack_trace
    failed = [e for e in client.get_orchestration_history(iid) if e["k"] == "TaskFailed"]
    assert len(failed) == 3


def test_patterns_together_on_one_worker(worker: Worker, client: Client) -> None:
    """All patterns at once, as the demo runs them."""
    started = {
        "chain": client.schedule_new_orchestration(function_chaining, input=sample_order(2)),
        "fan": client.schedule_new_orchestration(fan_out_fan_in, input=50),
        "human": client.schedule_new_orchestration(human_interaction, input={"timeout_s": 0.3}),
        "monitor": client.schedule_new_orchestration(
            monitor, input={"interval_s": 0.05, "ready_after": 2, "max_checks": 5}
        ),
        "sub": client.schedule_new_orchestration(sub_orchestrations, input={"count": 3}),
        "retry": client.schedule_new_orchestration(retry_with_backoff, input={"first_retry_s": 0.05}),
    }
    for key, iid in started.items():
        st = client.wait_for_orchestration_completion(iid, timeout=TIMEOUT)
        assert st.runtime_status == OrchestrationStatus.COMPLETED, (key, st)
