"""Dashboards, alerts and autoscaling queries may only use metrics that exist.

Every PromQL expression in the Grafana dashboard, ops/prometheus/alerts.yaml,
the chart's PrometheusRule and the KEDA Prometheus trigger is checked against
``durable._runtime.metrics.METRIC_DEFINITIONS``: metric names (histograms through their
``_bucket``/``_count``/``_sum`` series) and the label names used in matchers,
``by (...)`` clauses, legends and alert annotations. The committed dashboard
JSON must also be exactly what ops/grafana/generate.py produces.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from durable._runtime.metrics import METRIC_DEFINITIONS, MetricDefinition

yaml = pytest.importorskip("yaml")

REPO_ROOT = Path(__file__).resolve().parents[2]
GENERATOR = REPO_ROOT / "ops" / "grafana" / "generate.py"
DASHBOARD = REPO_ROOT / "ops" / "grafana" / "durable-overview.json"
ALERTS = REPO_ROOT / "ops" / "prometheus" / "alerts.yaml"
KEDA_VALUES = REPO_ROOT / "helm" / "durable" / "ci" / "keda-monitoring-values.yaml"

#: Labels Prometheus attaches to every scraped series (target labels) plus `le`.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "service", "container", "endpoint", "le"})

SERIES: dict[str, MetricDefinition] = {
    series: spec for spec in METRIC_DEFINITIONS for series in spec.series_names
}
METRIC_RE = re.compile(r"\b(durable_[a-zA-Z0-9_]+)\b")
SELECTOR_RE = re.compile(r"\b(durable_[a-zA-Z0-9_]+)\s*\{([^}]*)\}")
MATCHER_RE = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING_RE = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
LEGEND_RE = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")
ANNOTATION_LABEL_RE = re.compile(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)")

Render = Callable[..., list[dict[str, Any]]]


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("durable_grafana_generate", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolve string annotations through sys.modules during class creation.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def check_expression(expr: str, extra_labels: set[str] | None = None) -> set[str]:
    """Assert ``expr`` only uses known metrics and labels; return the labels it may expose."""
    names = METRIC_RE.findall(expr)
    assert names, f"expression uses no durable metric: {expr}"
    unknown = sorted({n for n in names if n not in SERIES})
    assert not unknown, f"unknown metric(s) {unknown} (not in METRIC_DEFINITIONS) in: {expr}"

    for metric, matchers in SELECTOR_RE.findall(expr):
        for label in MATCHER_RE.findall(matchers):
            allowed = set(SERIES[metric].labels) | TARGET_LABELS
            assert label in allowed, f"{metric} has no label {label!r} in: {expr}"

    allowed = set(TARGET_LABELS)
    for name in names:
        allowed |= set(SERIES[name].labels)
    for grouping in GROUPING_RE.findall(expr):
        for label in (part.strip() for part in grouping.split(",")):
            if label:
                assert label in allowed, f"grouping label {label!r} is on none of the metrics in: {expr}"
    for label in extra_labels or set():
        assert label in allowed, (
            f"label {label!r} (legend or annotation) is on none of the metrics in: {expr}"
        )
    return allowed


def dashboard_targets(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [target for panel in dashboard["panels"] for target in panel.get("targets", [])]


def alert_rules(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in groups for rule in group["rules"]]


def annotation_labels(rule: dict[str, Any]) -> set[str]:
    text = " ".join(str(v) for v in rule.get("annotations", {}).values())
    return set(ANNOTATION_LABEL_RE.findall(text))


# --- Grafana dashboard ---------------------------------------------------------------


def test_dashboard_is_up_to_date() -> None:
    generator = load_generator()
    assert DASHBOARD.read_text(encoding="utf-8") == generator.render(), (
        "ops/grafana/durable-overview.json is stale: run python ops/grafana/generate.py"
    )


def test_dashboard_expressions_use_known_metrics_and_labels() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    targets = dashboard_targets(dashboard)
    assert len(targets) >= 20
    for target in targets:
        check_expression(target["expr"], set(LEGEND_RE.findall(target.get("legendFormat", ""))))


def test_dashboard_covers_every_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    used = {SERIES[name].name for t in dashboard_targets(dashboard) for name in METRIC_RE.findall(t["expr"])}
    missing = sorted({spec.name for spec in METRIC_DEFINITIONS} - used)
    assert not missing, f"metrics without a dashboard panel: {missing}"


def test_dashboard_structure() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["type"] == "query"
    assert "durable_" in variables["job"]["definition"]

    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    for wanted in (
        "Throughput",
        "Failures",
        "Latency",
        "Partitions",
        "Replay cache",
        "Activities",
        "Entities",
    ):
        assert wanted in rows
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert '$job"' in target["expr"], f"panel {panel['title']!r} ignores the job variable"
    exprs = " ".join(t["expr"] for t in dashboard_targets(dashboard))
    assert "histogram_quantile(0.5, sum by (le, kind) (rate(durable_schedule_to_start_seconds_bucket" in exprs
    assert (
        "histogram_quantile(0.99, sum by (le, kind) (rate(durable_schedule_to_start_seconds_bucket" in exprs
    )


def test_generator_rejects_unknown_metric() -> None:
    generator = load_generator()
    with pytest.raises(ValueError, match="unknown metric"):
        generator.metric_for("rate(durable_no_such_metric_total[5m])")
    assert generator.metric_for("durable_activity_duration_seconds_bucket").name == (
        "durable_activity_duration_seconds"
    )


# --- Prometheus alerts ----------------------------------------------------------------


def load_alert_file() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    groups: list[dict[str, Any]] = loaded["groups"]
    return groups


def test_alert_file_metrics_and_labels() -> None:
    rules = alert_rules(load_alert_file())
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]
        check_expression(rule["expr"], annotation_labels(rule))


def test_alert_file_covers_required_alerts() -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules(load_alert_file())}
    assert "durable_partition_backlog_messages" in exprs["DurablePartitionBacklogGrowing"]
    assert "durable_partition_oldest_message_age_seconds" in exprs["DurableOldestMessageAgeHigh"]
    assert "durable_nondeterminism_errors_total" in exprs["DurableNondeterminismErrors"]
    assert 'event="lost"' in exprs["DurableLeaseChurn"]
    assert 'status="failed"' in exprs["DurableActivityFailureRatioHigh"]
    assert "durable_partitions_owned" in exprs["DurableNoPartitionsOwned"]


# --- Helm PrometheusRule and KEDA query ---------------------------------------------------


def test_chart_rules_and_keda_query_use_known_metrics(render: Render) -> None:
    manifests = render(KEDA_VALUES)
    rule_objects = [m for m in manifests if m["kind"] == "PrometheusRule"]
    assert len(rule_objects) == 1
    chart_rules = alert_rules(rule_objects[0]["spec"]["groups"])
    for rule in chart_rules:
        check_expression(rule["expr"], annotation_labels(rule))

    # The chart and the standalone rule file define the same alerts.
    assert sorted(r["alert"] for r in chart_rules) == sorted(
        r["alert"] for r in alert_rules(load_alert_file())
    )

    scaled = [m for m in manifests if m["kind"] == "ScaledObject"]
    assert len(scaled) == 1
    queries = [t["metadata"]["query"] for t in scaled[0]["spec"]["triggers"] if t["type"] == "prometheus"]
    assert queries
    for query in queries:
        check_expression(query)
        assert "durable_partition_backlog_messages" in query


def test_checker_catches_renames() -> None:
    with pytest.raises(AssertionError, match="unknown metric"):
        check_expression("sum(rate(durable_orchestrations_started[5m]))")
    with pytest.raises(AssertionError, match="no label"):
        check_expression('durable_lease_events_total{kind="lost"}')
    with pytest.raises(AssertionError, match="grouping label"):
        check_expression("sum by (entity_key) (durable_entity_operations_total)")
    check_expression("histogram_quantile(0.9, sum by (le) (rate(durable_timer_lateness_seconds_bucket[5m])))")
