"""durable._runtime.metrics: names, types, labels and HELP match the fixed metric contract."""

from __future__ import annotations

import ast
import importlib.util
import platform
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import durable._runtime.metrics as metrics

METRICS_FILE = Path(metrics.__file__)

#: The contract fixed by the project lead: name -> (kind, labels).
EXPECTED: dict[str, tuple[str, tuple[str, ...]]] = {
    "durable_orchestrations_started_total": ("counter", ("name",)),
    "durable_orchestrations_finished_total": ("counter", ("name", "status")),
    "durable_orchestrations_purged_total": ("counter", ("reason",)),
    "durable_orchestration_duration_seconds": ("histogram", ("name", "status")),
    "durable_work_item_duration_seconds": ("histogram", ("kind",)),
    "durable_schedule_to_start_seconds": ("histogram", ("kind",)),
    "durable_activity_executions_total": ("counter", ("name", "status")),
    "durable_activity_duration_seconds": ("histogram", ("name",)),
    "durable_entity_operations_total": ("counter", ("entity", "status")),
    "durable_partition_backlog_messages": ("gauge", ("partition",)),
    "durable_partition_oldest_message_age_seconds": ("gauge", ("partition",)),
    "durable_partitions_owned": ("gauge", ()),
    "durable_lease_events_total": ("counter", ("event",)),
    "durable_redeliveries_total": ("counter", ("kind",)),
    "durable_timers_pending": ("gauge", ("partition",)),
    "durable_timer_lateness_seconds": ("histogram", ()),
    "durable_schedule_runs_total": ("counter", ("schedule", "outcome")),
    "durable_schedule_lateness_seconds": ("histogram", ()),
    "durable_replay_cache_events_total": ("counter", ("event",)),
    "durable_replay_cache_size": ("gauge", ()),
    "durable_nondeterminism_errors_total": ("counter", ("name",)),
    "durable_orchestrations_waiting_for_version": ("gauge", ("name", "version")),
    "durable_worker_slots": ("gauge", ("state",)),
    "durable_agent_model_calls_total": ("counter", ("agent", "status")),
    "durable_agent_tool_calls_total": ("counter", ("agent", "tool", "status")),
    "durable_agent_approvals_waiting": ("gauge", ("agent",)),
    "durable_build_info": ("gauge", ("version", "python")),
}

#: Module attribute exposing each metric.
ATTRIBUTES: dict[str, str] = {
    "durable_orchestrations_started_total": "ORCHESTRATIONS_STARTED",
    "durable_orchestrations_finished_total": "ORCHESTRATIONS_FINISHED",
    "durable_orchestrations_purged_total": "ORCHESTRATIONS_PURGED",
    "durable_orchestration_duration_seconds": "ORCHESTRATION_DURATION",
    "durable_work_item_duration_seconds": "WORK_ITEM_DURATION",
    "durable_schedule_to_start_seconds": "SCHEDULE_TO_START",
    "durable_activity_executions_total": "ACTIVITY_EXECUTIONS",
    "durable_activity_duration_seconds": "ACTIVITY_DURATION",
    "durable_entity_operations_total": "ENTITY_OPERATIONS",
    "durable_partition_backlog_messages": "PARTITION_BACKLOG",
    "durable_partition_oldest_message_age_seconds": "PARTITION_OLDEST_MESSAGE_AGE",
    "durable_partitions_owned": "PARTITIONS_OWNED",
    "durable_lease_events_total": "LEASE_EVENTS",
    "durable_redeliveries_total": "REDELIVERIES",
    "durable_timers_pending": "TIMERS_PENDING",
    "durable_timer_lateness_seconds": "TIMER_LATENESS",
    "durable_schedule_runs_total": "SCHEDULE_RUNS",
    "durable_schedule_lateness_seconds": "SCHEDULE_LATENESS",
    "durable_replay_cache_events_total": "REPLAY_CACHE_EVENTS",
    "durable_replay_cache_size": "REPLAY_CACHE_SIZE",
    "durable_nondeterminism_errors_total": "NONDETERMINISM_ERRORS",
    "durable_orchestrations_waiting_for_version": "ORCHESTRATIONS_WAITING_FOR_VERSION",
    "durable_worker_slots": "WORKER_SLOTS",
    "durable_agent_model_calls_total": "AGENT_MODEL_CALLS",
    "durable_agent_tool_calls_total": "AGENT_TOOL_CALLS",
    "durable_agent_approvals_waiting": "AGENT_APPROVALS_WAITING",
    "durable_build_info": "BUILD_INFO",
}

FORBIDDEN_LABELS = {"instance_id", "instance", "key", "entity_key", "execution_id", "worker_id", "id"}


@pytest.fixture
def isolated() -> Iterator[ModuleType]:
    """A private copy of durable._runtime.metrics with its own registry, safe to mutate."""
    name = "durable_metrics_isolated_copy"
    spec = importlib.util.spec_from_file_location(name, METRICS_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]


def families(module: ModuleType) -> dict[str, Any]:
    text = module.exposition().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_definitions_match_contract() -> None:
    defined = {d.name: (d.kind, d.labels) for d in metrics.METRIC_DEFINITIONS}
    assert defined == EXPECTED
    assert len({d.name for d in metrics.METRIC_DEFINITIONS}) == len(metrics.METRIC_DEFINITIONS)


def test_definitions_are_well_formed() -> None:
    for spec in metrics.METRIC_DEFINITIONS:
        assert spec.name.startswith("durable_")
        assert spec.help.strip() and spec.help.endswith("."), spec.name
        assert not set(spec.labels) & FORBIDDEN_LABELS, f"{spec.name} has an unbounded label"
        assert spec.name.endswith("_total") == (spec.kind == "counter"), spec.name
        if spec.kind == "histogram":
            assert spec.name.endswith("_seconds")
            assert spec.buckets, spec.name
            assert list(spec.buckets) == sorted(set(spec.buckets)), spec.name
            assert spec.buckets[0] > 0
            assert spec.series_names == (f"{spec.name}_bucket", f"{spec.name}_count", f"{spec.name}_sum")
        else:
            assert not spec.buckets
            assert spec.series_names == (spec.name,)
        assert metrics.definition(spec.name) is spec


def test_module_attributes_are_registered_collectors() -> None:
    registered = {getattr(metrics, attr) for attr in ATTRIBUTES.values()}
    assert len(registered) == len(ATTRIBUTES)
    for attr in ATTRIBUTES.values():
        assert attr in metrics.__all__
    # Everything lives in the module registry, not prometheus-client's default one.
    names = {family.name for family in metrics.REGISTRY.collect()}
    assert len(names) == len(EXPECTED)


def test_exposition_types_and_labels(isolated: ModuleType) -> None:
    for name, attr in ATTRIBUTES.items():
        kind, labels = EXPECTED[name]
        collector = getattr(isolated, attr)
        child = collector.labels(**dict.fromkeys(labels, "x")) if labels else collector
        if kind == "counter":
            child.inc()
        elif kind == "gauge":
            child.set(3)
        else:
            child.observe(0.2)

    exposed = families(isolated)
    for name, (kind, labels) in EXPECTED.items():
        family_name = name.removesuffix("_total") if kind == "counter" else name
        family = exposed[family_name]
        assert family.type == kind, name
        spec = metrics.definition(name)
        assert family.documentation == spec.help
        sample_names = {sample.name for sample in family.samples}
        assert set(spec.series_names) <= sample_names, (name, sample_names)
        for sample in family.samples:
            own = set(sample.labels) - {"le"}
            assert own == set(labels), (name, sample.labels)


def test_histogram_buckets_are_exposed(isolated: ModuleType) -> None:
    isolated.SCHEDULE_TO_START.labels(kind="activity").observe(0.003)
    family = families(isolated)["durable_schedule_to_start_seconds"]
    bounds = [s.labels["le"] for s in family.samples if s.name.endswith("_bucket")]
    expected = [*(str(float(b)) for b in metrics.definition(family.name).buckets), "+Inf"]
    assert [str(float(b)) if b != "+Inf" else b for b in bounds] == expected


def test_build_info(isolated: ModuleType) -> None:
    samples = families(isolated)["durable_build_info"].samples
    assert len(samples) == 1
    assert samples[0].value == 1
    assert samples[0].labels["python"] == platform.python_version()
    assert samples[0].labels["version"]


def test_bounded_enums_start_at_zero(isolated: ModuleType) -> None:
    exposed = families(isolated)
    lease = {
        s.labels["event"]: s.value
        for s in exposed["durable_lease_events"].samples
        if s.name.endswith("_total")
    }
    assert lease == {"acquired": 0, "lost": 0, "released": 0, "renew_failed": 0}
    cache = {
        s.labels["event"]: s.value
        for s in exposed["durable_replay_cache_events"].samples
        if s.name.endswith("_total")
    }
    assert cache == {"hit": 0, "miss": 0, "evict": 0}
    redeliveries = {
        s.labels["kind"] for s in exposed["durable_redeliveries"].samples if s.name.endswith("_total")
    }
    assert redeliveries == {"orchestration", "entity", "activity"}


def test_helpers(isolated: ModuleType) -> None:
    assert isolated.partition_label(0) == "00"
    assert isolated.partition_label(7) == "07"
    assert isolated.partition_label(31) == "31"
    with pytest.raises(ValueError):
        isolated.partition_label(-1)
    isolated.set_worker_slots(used=5, total=16)
    slots = {s.labels["state"]: s.value for s in families(isolated)["durable_worker_slots"].samples}
    assert slots == {"used": 5, "available": 11}
    isolated.set_worker_slots(used=20, total=16)
    slots = {s.labels["state"]: s.value for s in families(isolated)["durable_worker_slots"].samples}
    assert slots["available"] == 0
    assert isolated.CONTENT_TYPE.startswith("text/plain")


def test_module_has_no_redis_or_engine_imports() -> None:
    tree = ast.parse(METRICS_FILE.read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative (engine) imports"
            imported.add((node.module or "").split(".")[0])
    allowed = {"__future__", "importlib", "platform", "dataclasses", "typing", "prometheus_client"}
    assert imported <= allowed, imported - allowed
