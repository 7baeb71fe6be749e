"""Every metric moves as it should after a real workload on a live worker (scraped from /metrics)."""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from durable import AsyncClient, RetryPolicy, TaskFailedError, Worker, WorkerConfig, when_all
from durable._ops.server import serve_ops
from durable._runtime import metrics
from durable._runtime.metrics import METRIC_DEFINITIONS

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def total(samples: Samples, metric: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == metric and want <= lab)


def _worker(url: str, hub: str, **extra: Any) -> Worker:
    config = WorkerConfig(balance_interval_ms=100, poll_ms=200, cache_size=2, **extra)
    return Worker(url, hub=hub, config=config)


def _v1(ctx: Any, _: Any) -> Any:
    yield ctx.call_activity("work", input=1)
    yield ctx.wait_for_external_event("go")


def _v2(ctx: Any, _: Any) -> Any:
    yield ctx.create_timer(dt.timedelta(seconds=1))  # changed code under a running instance


@pytest.mark.anyio
async def test_every_metric_moves(redis_url: str, hub: str) -> None:
    before = scrape(metrics.exposition().decode())
    worker = _worker(redis_url, hub)
    calls: dict[str, int] = {}

    @worker.activity
    def work(ctx: Any, n: int) -> int:
        key = f"{ctx.orchestration_id}/{n}"  # a retry is a new task (new idempotency key)
        calls[key] = calls.get(key, 0) + 1
        if n < 0 and calls[key] == 1:
            raise ValueError("first attempt fails")
        return n

    @worker.orchestrator
    def mix(ctx: Any, n: int) -> Any:
        values = yield when_all([ctx.call_activity(work, input=i) for i in range(n)])
        yield ctx.create_timer(dt.timedelta(milliseconds=50))
        with contextlib.suppress(TaskFailedError):
            yield ctx.call_activity(work, input=-1)
        retried = yield ctx.call_activity(
            work, input=-2, retry_policy=RetryPolicy(dt.timedelta(milliseconds=20), 2)
        )
        return sum(values) + retried

    worker.add_orchestrator(_v1, name="flow")

    @worker.orchestrator
    def nop(ctx: Any, _: Any) -> None:
        return None

    entity_support = hasattr(AsyncClient, "signal_entity")
    if entity_support:

        def counter(ctx: Any, value: Any) -> Any:
            ctx.set_state(ctx.get_state(0) + value)

        worker.add_entity(counter, name="counter")

    async with AsyncClient(redis_url, hub) as client:
        async with worker, anyio.create_task_group() as tg:
            runtime = worker._runtime
            assert runtime is not None
            port = await tg.start(serve_ops, runtime, client, "127.0.0.1", 0, None)
            ids = [await client.schedule_new_orchestration(mix, input=5) for _ in range(6)]
            for iid in ids:
                done = await client.wait_for_orchestration_completion(iid, timeout=30)
                assert done.output == 8, done.failure_details
            flow = await client.schedule_new_orchestration("flow")
            with anyio.fail_after(30):
                while not any(
                    e["k"] == "TaskCompleted" for e in await client.get_orchestration_history(flow)
                ):
                    await anyio.sleep(0.05)
            if entity_support:
                for _ in range(5):
                    await client.signal_entity("@counter@a", "add", input=1)  # type: ignore[attr-defined]
                with anyio.fail_after(30):
                    while (await client.get_entity("@counter@a")) is None:  # type: ignore[attr-defined]
                        await anyio.sleep(0.05)
            # a schedule: one run on its calendar
            every = await client.create_schedule("metered", nop, interval=dt.timedelta(seconds=1))
            with anyio.fail_after(30):
                while not (await client.get_schedule("metered") or every).runs_started:
                    await anyio.sleep(0.05)  # a count only observable by polling
            await client.delete_schedule("metered")
            text = await anyio.to_thread.run_sync(_http_get, port, "/metrics")
            tg.cancel_scope.cancel()
        # the same instance under changed code: non-determinism
        changed = _worker(redis_url, hub)
        changed.add_orchestrator(_v2, name="flow")
        async with changed:
            await client.raise_orchestration_event(flow, "go")
            state = await client.wait_for_orchestration_completion(flow, timeout=30)
            assert state.failure_details is not None
            assert state.failure_details.error_type == "NonDeterminismError"
    after = scrape(text)
    final = scrape(metrics.exposition().decode())

    def moved(metric: str, samples: Samples = after, **labels: str) -> float:
        return total(samples, metric, **labels) - total(before, metric, **labels)

    assert moved("durable_orchestrations_started_total", name="mix") == 6
    assert moved("durable_orchestrations_finished_total", name="mix", status="COMPLETED") == 6
    assert moved("durable_orchestration_duration_seconds_count", name="mix", status="COMPLETED") == 6
    assert moved("durable_work_item_duration_seconds_count", kind="orchestration") > 0
    assert moved("durable_work_item_duration_seconds_count", kind="activity") >= 6 * 8
    assert moved("durable_schedule_to_start_seconds_count", kind="activity") >= 6 * 8
    assert moved("durable_schedule_to_start_seconds_count", kind="orchestration") > 0
    assert moved("durable_activity_executions_total", name="work", status="completed") >= 6 * 6
    assert moved("durable_activity_executions_total", name="work", status="failed") >= 6 * 2
    assert moved("durable_activity_duration_seconds_count", name="work") >= 6 * 8
    assert moved("durable_timer_lateness_seconds_count") >= 6 * 2  # a timer and a retry wait each
    assert total(after, "durable_partitions_owned") == 32
    assert moved("durable_lease_events_total", event="acquired") >= 32
    assert moved("durable_lease_events_total", samples=final, event="released") >= 32
    assert moved("durable_replay_cache_events_total", event="miss") > 0
    assert moved("durable_replay_cache_events_total", event="evict") > 0  # cache_size=2
    assert moved("durable_replay_cache_events_total", event="hit") > 0
    assert total(after, "durable_replay_cache_size") <= 2
    assert moved("durable_nondeterminism_errors_total", samples=final, name="flow") == 1
    assert total(after, "durable_worker_slots", state="available") > 0
    assert total(after, "durable_build_info") == 1
    assert {lab for (n, lab) in after if n == "durable_partition_backlog_messages"}
    assert {lab for (n, lab) in after if n == "durable_partition_oldest_message_age_seconds"}
    assert {lab for (n, lab) in after if n == "durable_timers_pending"}
    assert moved("durable_schedule_runs_total", schedule="metered", outcome="started") >= 1
    assert moved("durable_schedule_lateness_seconds_count") >= 1
    if entity_support:
        assert moved("durable_entity_operations_total", entity="counter") == 5
        assert moved("durable_work_item_duration_seconds_count", kind="entity") > 0
    # every defined metric family is exposed; redeliveries are covered by the fault tests, the
    # agent families (which no engine workload touches) by tests/integration/test_agents.py, and
    # the instances waiting for a version by test_deploys
    names = {n for (n, _) in after} | {n for (n, _) in final}
    elsewhere = ("durable_redeliveries_total", "durable_orchestrations_waiting_for_version")
    for d in METRIC_DEFINITIONS:
        if d.name in elsewhere or d.name.startswith("durable_agent_"):
            continue
        assert any(s in names for s in d.series_names), d.name


def _http_get(port: int, path: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return str(resp.read().decode())


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
