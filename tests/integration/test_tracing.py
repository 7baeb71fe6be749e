"""OpenTelemetry tracing: one trace from a client call through orchestrations, activities,
sub-orchestrations and entities, with the SDK's in-memory exporter; no duplicate spans when a
worker is SIGKILLed mid-run; a wire signal's traceparent joins its trace; nothing is imported
without the extra."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from _poll import wait_until
from _redis import connect
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from durable import Client, OrchestrationStatus, RetryPolicy, Worker, WorkerConfig

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
FAST = dict(poll_ms=50, balance_interval_ms=50, renew_interval_ms=200, lease_ttl_ms=3000)


def _exporter() -> InMemorySpanExporter:
    """One in-memory exporter for the test process (a tracer provider can be set only once)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = getattr(provider, "_durable_test_exporter", None)
    if exporter is None:
        exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        provider._durable_test_exporter = exporter  # type: ignore[attr-defined]
    return exporter


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = _exporter()
    exporter.clear()
    yield exporter
    exporter.clear()


def _by_name(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def _sid(span: ReadableSpan) -> int:
    ctx = span.get_span_context()
    assert ctx is not None
    return ctx.span_id


def _tid(span: ReadableSpan) -> int:
    ctx = span.get_span_context()
    assert ctx is not None
    return ctx.trace_id


def _parent(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def test_one_trace_holds_client_orchestration_activity_sub_orchestration_and_entity_spans(
    redis_url: str, hub: str, spans: InMemorySpanExporter
) -> None:
    worker = Worker(redis_url, hub, config=WorkerConfig(**FAST))
    attempts: Counter[str] = Counter()

    @worker.activity
    def flaky(ctx: Any, value: int) -> int:
        attempts["flaky"] += 1
        if attempts["flaky"] == 1:
            raise ValueError("first attempt fails")
        return value * 2

    @worker.orchestrator
    def child(ctx: Any, value: int) -> Any:
        policy = RetryPolicy(first_retry_interval=timedelta(milliseconds=20), max_number_of_attempts=3)
        return (yield ctx.call_activity(flaky, input=value, retry_policy=policy))

    @worker.orchestrator
    def checkout(ctx: Any, value: int) -> Any:
        yield ctx.create_timer(timedelta(milliseconds=20))
        doubled = yield ctx.call_sub_orchestrator(child, input=value)
        ctx.signal_entity("@tally@orders", "add", input=doubled)
        return doubled

    @worker.entity
    def tally(ctx: Any, amount: int) -> None:
        ctx.set_state(ctx.get_state(0) + amount)

    with worker, Client(redis_url, hub) as client:
        with trace.get_tracer("test").start_as_current_span("http-request") as request:
            iid = client.schedule_new_orchestration(checkout, input=21)
        state = client.wait_for_orchestration_completion(iid, timeout=30)
        assert state.runtime_status == OrchestrationStatus.COMPLETED and state.output == 42
        wait_until(
            lambda: len(_by_name(list(spans.get_finished_spans()), "entity:tally:add")) == 1, 10, "spans"
        )
        wait_until(
            lambda: len(_by_name(list(spans.get_finished_spans()), "orchestration:checkout")) == 1, 10, "s"
        )

    finished = [s for s in spans.get_finished_spans() if s.name != "http-request"]
    trace_id = request.get_span_context().trace_id
    assert {_tid(s) for s in finished} == {trace_id}, "one trace"
    names = Counter(s.name for s in finished)
    assert names == Counter(
        {
            "create_orchestration:checkout": 1,
            "orchestration:checkout": 1,
            "orchestration:child": 1,
            "activity:flaky": 2,  # one span per attempt
            "entity:tally:add": 1,
        }
    )
    (create,) = _by_name(finished, "create_orchestration:checkout")
    (orch,) = _by_name(finished, "orchestration:checkout")
    (sub,) = _by_name(finished, "orchestration:child")
    (entity,) = _by_name(finished, "entity:tally:add")
    assert _parent(create) == request.get_span_context().span_id
    assert _parent(orch) == _sid(create)
    assert _parent(sub) == _sid(orch)
    assert _parent(entity) == _sid(orch)
    activity_spans = _by_name(finished, "activity:flaky")
    assert {_parent(s) for s in activity_spans} == {_sid(sub)}
    assert sorted(s.status.status_code.name for s in activity_spans) == ["ERROR", "UNSET"]
    assert orch.attributes is not None and orch.attributes["durable.instance_id"] == iid
    assert orch.attributes["durable.orchestration.name"] == "checkout"
    assert "durable.orchestration.version" in orch.attributes
    assert orch.status.status_code.name == "OK"
    assert [e.name for e in orch.events] == ["timer"]  # the durable timer
    assert [e.name for e in sub.events] == ["timer"]  # the retry's wait
    assert orch.start_time is not None and sub.start_time is not None and orch.start_time <= sub.start_time


def _inbox(hub: str, target: str, partitions: int) -> str:
    return f"durable:{{{hub}:{zlib.crc32(target.encode()) % partitions:02d}}}:inbox"


def test_signal_and_start_from_another_service_join_its_trace(
    redis_url: str, hub: str, spans: InMemorySpanExporter
) -> None:
    worker = Worker(redis_url, hub, config=WorkerConfig(**FAST))

    @worker.entity
    def meter(ctx: Any, amount: int) -> None:
        ctx.set_state(ctx.get_state(0) + amount)

    @worker.orchestrator
    def ingest(ctx: Any, value: Any) -> Any:
        return value

    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    traceparent = f"00-{trace_id}-{parent_id}-01"
    with worker, Client(redis_url, hub) as client:
        r = connect(redis_url)
        partitions = int(r.hget(f"durable:{{{hub}}}:meta", "partitions"))
        # plain string fields, exactly what a producer in another language writes (docs/wire-format.md)
        signal_fields = {"v": "1", "kind": "signal", "target": "@meter@m1", "op": "add", "id": "s-1"}
        r.xadd(
            _inbox(hub, "@meter@m1", partitions), {**signal_fields, "data": "5", "traceparent": traceparent}
        )
        start_fields = {"v": "1", "kind": "start", "target": "wire-1", "op": "ingest", "id": "w-1"}
        r.xadd(_inbox(hub, "wire-1", partitions), {**start_fields, "data": "7", "traceparent": traceparent})
        assert client.wait_for_orchestration_completion("wire-1", timeout=30).output == 7
        wait_until(lambda: len(spans.get_finished_spans()) >= 2, 10, "the entity and orchestration spans")

    by_name = {s.name: s for s in spans.get_finished_spans()}
    for name in ("entity:meter:add", "orchestration:ingest"):
        span = by_name[name]
        assert f"{_tid(span):032x}" == trace_id
        assert f"{_parent(span):016x}" == parent_id


def test_worker_killed_mid_run_another_finishes_without_duplicate_spans(
    redis_url: str, hub: str, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    trace_file = tmp_path / "spans.jsonl"
    env = dict(
        os.environ,
        DURABLE_REDIS_URL=redis_url,
        DURABLE_HUB=hub,
        TRACE_FILE=str(trace_file),
        PYTHONPATH=os.pathsep.join([str(TESTS), str(REPO)]),
    )
    cmd = [sys.executable, "-m", "durable", "worker", "fixtures.traced_app:worker", "--log-level", "warning"]

    def records() -> list[dict[str, Any]]:
        if not trace_file.exists():
            return []
        return [json.loads(line) for line in trace_file.read_text().splitlines() if line]

    def named(name: str) -> list[dict[str, Any]]:
        return [r for r in records() if r["name"] == name]

    r = connect(redis_url)
    first = subprocess.Popen(cmd, env=dict(env, GATE_BLOCKS="1"), cwd=str(TESTS))
    second: subprocess.Popen[bytes] | None = None
    try:
        with Client(redis_url, hub) as client:
            with trace.get_tracer("test").start_as_current_span("batch") as batch:
                iids = [client.schedule_new_orchestration("traced_chain", input=i * 10) for i in range(6)]
            # mid-run: every instance has run two activities and waits in its gate (task 2)
            wait_until(
                lambda: r.scard(f"gate:{hub}") == 6 and len(named("activity:step")) == 12, 60, "the gates"
            )
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            assert named("orchestration:traced_chain") == [] and named("activity:gate") == []
            second = subprocess.Popen(cmd, env=env, cwd=str(TESTS))
            for i, iid in enumerate(iids):
                state = client.wait_for_orchestration_completion(iid, timeout=90)
                assert state.runtime_status == OrchestrationStatus.COMPLETED and state.output == i * 10 + 6
            wait_until(lambda: len(named("orchestration:traced_chain")) == 6, 10, "the orchestration spans")
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)

    rows = records()
    assert len({r["pid"] for r in rows}) == 2, "both workers emitted spans"
    trace_id = f"{batch.get_span_context().trace_id:032x}"
    assert {r["trace_id"] for r in rows} == {trace_id}
    creates = {
        s.attributes["durable.instance_id"]: s
        for s in spans.get_finished_spans()
        if s.attributes and s.name == "create_orchestration:traced_chain"
    }
    orchestrations = [r for r in rows if r["name"].startswith("orchestration:")]
    # one span per execution, never two, whichever worker ran which of its steps
    per_instance = Counter(r["attributes"]["durable.instance_id"] for r in orchestrations)
    assert len(per_instance) == 12 and set(per_instance.values()) == {1}
    span_of = {r["attributes"]["durable.instance_id"]: r for r in orchestrations}
    for iid in iids:
        assert span_of[iid]["parent_id"] == f"{_sid(creates[iid]):016x}"
        assert span_of[f"{iid}:0005"]["parent_id"] == span_of[iid]["span_id"]
    # one span per activity task; the gate attempts the kill cut short emitted none
    activities = [r for r in rows if r["name"].startswith("activity:")]
    per_task = Counter(
        (r["attributes"]["durable.instance_id"], r["attributes"]["durable.task_id"]) for r in activities
    )
    assert len(per_task) == 6 * 5 + 6 * 2 and set(per_task.values()) == {1}
    assert {r["attributes"]["durable.activity.delivery"] for r in named("activity:gate")} == {2}
    for row in activities:
        assert row["parent_id"] == span_of[row["attributes"]["durable.instance_id"]]["span_id"]


_NO_OTEL = textwrap.dedent(
    """
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ImportError("opentelemetry is not installed")
            return None
    sys.meta_path.insert(0, Block())
    from durable import Client, Worker, WorkerConfig
    worker = Worker(config=WorkerConfig(poll_ms=50, balance_interval_ms=50))

    @worker.activity
    def hello(ctx, name):
        return f"hello {name}"

    @worker.orchestrator
    def greet(ctx, name):
        return (yield ctx.call_activity(hello, input=name))

    with worker, Client() as client:
        iid = client.schedule_new_orchestration(greet, input="otel-less")
        print(client.wait_for_orchestration_completion(iid, timeout=30).output)
    print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
    """
)


def test_without_the_extra_nothing_changes_and_nothing_is_imported(
    redis_url: str, hub: str, tmp_path: Path
) -> None:
    script = tmp_path / "no_otel.py"
    script.write_text(_NO_OTEL)
    env = dict(os.environ, DURABLE_REDIS_URL=redis_url, DURABLE_HUB=hub, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["hello otel-less", "[]"]


def test_an_http_start_with_a_traceparent_header_joins_the_callers_trace(
    redis_url: str, hub: str, spans: InMemorySpanExporter
) -> None:
    from durable import AsyncClient
    from durable._ops.server import OpsApp, Request

    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]

    async def main() -> Any:
        async with AsyncClient(redis_url, hub) as client:
            app = OpsApp(None, client, None)
            request = Request(
                method="POST",
                path="/v1/orchestrations/later",
                segments=["v1", "orchestrations", "later"],
                query={"instance_id": ["http-1"], "tag.team": ["web"]},
                headers={"content-type": "application/json", "traceparent": f"00-{trace_id}-{parent_id}-01"},
                body=b"1",
            )
            response = await app.handle(request)
            state = await client.get_orchestration_state("http-1")
            return response.status, state

    status, state = anyio.run(main)
    assert status == 202 and state is not None and state.tags == {"team": "web"}
    (create,) = _by_name(list(spans.get_finished_spans()), "create_orchestration:later")
    assert f"{_tid(create):032x}" == trace_id and f"{_parent(create):016x}" == parent_id
