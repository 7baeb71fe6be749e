"""``durable sidecar`` work is traced and counted as native work is: an SDK client's trace context
(``CreateInstanceRequest.parentTraceContext``) is joined, an SDK-run orchestration and its
activities emit this engine's ``orchestration:`` and ``activity:`` spans in that trace, the SDK
worker's own spans nest in them, and SDK activities count in the activity metrics."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from _poll import wait_until
from durabletask import client as dt_client
from durabletask import worker
from durabletask.internal import orchestrator_service_pb2 as pb
from durabletask.internal import orchestrator_service_pb2_grpc as stubs
from fixtures import sdk_app
from google.protobuf import wrappers_pb2
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from durable import WorkerConfig
from durable._runtime import metrics, tracing
from durable._sidecar import Sidecar

pytestmark = pytest.mark.standalone_only


def _exporter() -> InMemorySpanExporter:
    """One in-memory exporter for the test process (shared with test_tracing.py's)."""
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


def _ours(spans: list[ReadableSpan], name: str, iid: str) -> list[ReadableSpan]:
    """This engine's spans called ``name`` of instance ``iid`` (the SDK's own carry other keys)."""
    return [s for s in spans if s.name == name and (s.attributes or {}).get("durable.instance_id") == iid]


def _ctx(span: ReadableSpan) -> trace.SpanContext:
    ctx = span.get_span_context()
    assert ctx is not None
    return ctx


def _executions(name: str, status: str) -> float:
    labels = {"name": name, "status": status}
    return metrics.REGISTRY.get_sample_value("durable_activity_executions_total", labels) or 0.0


def test_sdk_orchestration_and_activities_join_the_sdk_clients_trace_and_count(
    sdk: dt_client.TaskHubGrpcClient, spans: InMemorySpanExporter
) -> None:
    before = _executions("hello", "completed")
    durations = metrics.REGISTRY.get_sample_value(
        "durable_activity_duration_seconds_count", {"name": "hello"}
    )
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("caller") as caller:
        iid = sdk.schedule_new_orchestration(sdk_app.sequence, input=["Tokyo", "Seattle"])
    state = sdk.wait_for_orchestration_completion(iid, timeout=30)
    assert state is not None and state.runtime_status == dt_client.OrchestrationStatus.COMPLETED

    wait_until(
        lambda: len(_ours(spans.get_finished_spans(), "orchestration:sequence", iid)) == 1, 10, "the spans"
    )
    wait_until(lambda: len(_ours(spans.get_finished_spans(), "activity:hello", iid)) == 2, 10, "the spans")
    finished = list(spans.get_finished_spans())
    trace_id = caller.get_span_context().trace_id
    (orch,) = _ours(finished, "orchestration:sequence", iid)
    assert _ctx(orch).trace_id == trace_id  # the SDK client's context was joined
    attributes = orch.attributes or {}
    assert attributes["durable.orchestration.status"] == "COMPLETED"
    assert attributes["durable.orchestration.name"] == "sequence"
    by_id = {_ctx(s).span_id: s for s in finished}

    def ancestors(span: ReadableSpan) -> list[int]:
        out, parent = [], span.parent
        while parent is not None and parent.span_id in by_id:
            out.append(parent.span_id)
            parent = by_id[parent.span_id].parent
        return out

    # one connected tree: the caller, both clients' create spans, this engine's orchestration
    # span, the SDK worker's spans (its orchestration, its calls, its activities) and ours
    assert _ctx(caller).span_id in ancestors(orch)
    in_trace = [s for s in finished if _ctx(s).trace_id == trace_id]
    for span in in_trace:
        assert span is by_id[_ctx(caller).span_id] or _ctx(caller).span_id in ancestors(span), span.name
    activities = _ours(finished, "activity:hello", iid)
    for span in activities:
        assert _ctx(orch).span_id in ancestors(span)
        assert (span.attributes or {})["durable.activity.name"] == "hello"
    sdk_spans = [s for s in in_trace if (s.attributes or {}).get("durable.instance_id") is None]
    assert sdk_spans and all(
        _ctx(orch).span_id in ancestors(s) for s in sdk_spans if s.name.startswith("activity:")
    )
    assert _executions("hello", "completed") == before + 2
    after = metrics.REGISTRY.get_sample_value("durable_activity_duration_seconds_count", {"name": "hello"})
    assert (after or 0) == (durations or 0) + 2


def test_failed_sdk_activity_is_counted_and_its_span_is_an_error(
    sdk: dt_client.TaskHubGrpcClient, spans: InMemorySpanExporter
) -> None:
    before = _executions("fail", "failed")
    iid = sdk.schedule_new_orchestration(sdk_app.failing, input="boom")
    state = sdk.wait_for_orchestration_completion(iid, timeout=30)
    assert state is not None and state.runtime_status == dt_client.OrchestrationStatus.FAILED
    wait_until(lambda: len(_ours(spans.get_finished_spans(), "activity:fail", iid)) >= 1, 10, "the spans")
    wait_until(
        lambda: len(_ours(spans.get_finished_spans(), "orchestration:failing", iid)) == 1, 10, "the spans"
    )
    (activity, *_) = _ours(spans.get_finished_spans(), "activity:fail", iid)
    assert activity.status.status_code == trace.StatusCode.ERROR
    (orch,) = _ours(spans.get_finished_spans(), "orchestration:failing", iid)
    assert orch.status.status_code == trace.StatusCode.ERROR
    assert (orch.attributes or {})["durable.orchestration.status"] == "FAILED"
    assert _executions("fail", "failed") >= before + 1


def _entity_spans(spans: list[ReadableSpan], name: str, entity_id: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name and (s.attributes or {}).get("durable.entity.id") == entity_id]


def test_sdk_entity_operations_emit_entity_spans_in_the_callers_trace(
    sdk: dt_client.TaskHubGrpcClient, spans: InMemorySpanExporter
) -> None:
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("caller") as caller:
        iid = sdk.schedule_new_orchestration(sdk_app.entity_calls, input="t1")
    state = sdk.wait_for_orchestration_completion(iid, timeout=30)
    assert state is not None and state.runtime_status == dt_client.OrchestrationStatus.COMPLETED
    wait_until(
        lambda: len(_ours(spans.get_finished_spans(), "orchestration:entity_calls", iid)) == 1,
        10,
        "the spans",
    )
    wait_until(
        lambda: len(_entity_spans(spans.get_finished_spans(), "entity:tally:get", "@tally@t1")) == 1,
        10,
        "the entity spans",
    )
    finished = list(spans.get_finished_spans())
    (orch,) = _ours(finished, "orchestration:entity_calls", iid)
    adds = _entity_spans(finished, "entity:tally:add", "@tally@t1")
    (fail,) = _entity_spans(finished, "entity:tally:fail", "@tally@t1")
    (get,) = _entity_spans(finished, "entity:tally:get", "@tally@t1")
    (deposit,) = _entity_spans(finished, "entity:account:deposit", "@account@t1")[:1]
    assert len(adds) == 2
    for span in (*adds, fail, get, deposit):
        # in the caller's trace, a child of the orchestration that called it (as a native entity's)
        assert _ctx(span).trace_id == _ctx(caller).trace_id
        assert span.parent is not None and span.parent.span_id == _ctx(orch).span_id
        assert (span.attributes or {})["durable.entity.name"] in ("tally", "account")
        assert span.start_time is not None and span.end_time is not None
        assert span.start_time <= span.end_time
    assert fail.status.status_code == trace.StatusCode.ERROR
    assert get.status.status_code != trace.StatusCode.ERROR
    # the SDK worker's own span of the operation nests in ours (the work item carried its context)
    sdk_get = [
        s for s in finished if s.parent is not None and s.parent.span_id == _ctx(get).span_id and s is not get
    ]
    assert sdk_get, "the SDK's entity span is not a child of the engine's"


def test_an_sdk_activity_completed_on_another_sidecar_is_counted_and_traced_once(
    redis_url: str, hub: str, spans: InMemorySpanExporter
) -> None:
    config = WorkerConfig(partitions=4, poll_ms=100, balance_interval_ms=100, drain_timeout=5)
    before = _executions("hello", "completed")
    with (
        Sidecar(redis_url, hub, port=0, config=config) as first,
        Sidecar(redis_url, hub, port=0, config=config) as second,
    ):
        w = worker.TaskHubGrpcWorker(host_address=first.address)  # runs the orchestration only
        w.add_orchestrator(sdk_app.sequence)
        w.use_work_item_filters()
        channel = grpc.insecure_channel(first.address)
        # a worker of the activity that takes its work item from the first sidecar ...
        only_hello = pb.WorkItemFilters(activities=[pb.ActivityFilter(name="hello")])
        items = stubs.TaskHubSidecarServiceStub(channel).GetWorkItems(
            pb.GetWorkItemsRequest(workItemFilters=only_hello)
        )
        w.start()
        try:
            sdk = dt_client.TaskHubGrpcClient(host_address=second.address)
            iid = sdk.schedule_new_orchestration(sdk_app.sequence, input=["Lima"])
            item = next(i for i in items if i.HasField("activityRequest"))
            assert item.activityRequest.parentTraceContext.traceParent
            # ... and completes it on the second one (twice: the repeat changes nothing)
            done = pb.ActivityResponse(
                instanceId=iid,
                taskId=item.activityRequest.taskId,
                result=wrappers_pb2.StringValue(value='"Hello Lima!"'),
                completionToken=item.completionToken,
            )
            with grpc.insecure_channel(second.address) as other:
                stubs.TaskHubSidecarServiceStub(other).CompleteActivityTask(done)
                stubs.TaskHubSidecarServiceStub(other).CompleteActivityTask(done)
            state = sdk.wait_for_orchestration_completion(iid, timeout=30)
            assert state is not None and state.serialized_output == '["Hello Lima!"]'
        finally:
            items.cancel()
            channel.close()
            w.stop()
    wait_until(lambda: len(_ours(spans.get_finished_spans(), "activity:hello", iid)) == 1, 10, "the span")
    assert _executions("hello", "completed") == before + 1
    (activity,) = _ours(spans.get_finished_spans(), "activity:hello", iid)
    # the span has the ids handed to the worker with the item, so the worker's spans nest in it
    parsed = tracing.parse_traceparent(item.activityRequest.parentTraceContext.traceParent)
    assert parsed is not None and (_ctx(activity).trace_id, _ctx(activity).span_id) == parsed[:2]
    (orch,) = _ours(spans.get_finished_spans(), "orchestration:sequence", iid)
    assert activity.parent is not None and activity.parent.trace_id == _ctx(orch).trace_id
    assert activity.start_time is not None and activity.end_time is not None
    assert activity.start_time <= activity.end_time
