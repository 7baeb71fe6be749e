#!/usr/bin/env python3
"""Generate the Grafana dashboard ``ops/grafana/durable-overview.json``.

The dashboard is built from code so that every PromQL expression is checked
against :data:`durable._runtime.metrics.METRIC_DEFINITIONS` at generation time, and
panel descriptions reuse the metrics' HELP strings. CI regenerates it and
fails when the committed JSON differs, so a renamed metric cannot silently
leave a dashboard panel empty.

Usage (from the repository root)::

    python ops/grafana/generate.py           # (re)write the JSON file
    python ops/grafana/generate.py --check   # exit 1 if the file is stale
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # allow running the script without installing durable
    sys.path.insert(0, str(REPO_ROOT))

from durable._runtime.metrics import METRIC_DEFINITIONS, MetricDefinition  # noqa: E402

OUTPUT = Path(__file__).resolve().with_name("durable-overview.json")

DASHBOARD_UID = "durable-overview"
DATASOURCE: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}
#: Label matchers applied to every query; `job` selects one deployment (hub).
SEL = 'job=~"$job"'
RATE = "$__rate_interval"
#: Orchestration statuses come from the runtime's status enum; match "failed" in any case.
FAILED = '"(?i)failed"'

_METRIC_RE = re.compile(r"\bdurable_[a-z0-9_]+\b")
_SERIES: dict[str, MetricDefinition] = {
    series: spec for spec in METRIC_DEFINITIONS for series in spec.series_names
}


def metric_names(expr: str) -> list[str]:
    """Every ``durable_*`` sample name referenced by a PromQL expression."""
    return _METRIC_RE.findall(expr)


def metric_for(expr: str) -> MetricDefinition:
    """The definition of the first metric in ``expr``; raises if any is unknown."""
    names = metric_names(expr)
    if not names:
        raise ValueError(f"expression references no durable metric: {expr}")
    unknown = [name for name in names if name not in _SERIES]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown} in expression: {expr}")
    return _SERIES[names[0]]


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str


@dataclass
class Panel:
    title: str
    targets: list[Target]
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    description: str = ""
    stack: bool = False
    extra_defaults: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    title: str
    panels: list[Panel]


def quantile(q: float, metric: str, by: str, matchers: str = SEL) -> str:
    """histogram_quantile over a durable histogram, grouped by ``by``."""
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{matchers}}}[{RATE}])))"


def rows() -> list[Row]:
    started = "durable_orchestrations_started_total"
    finished = "durable_orchestrations_finished_total"
    activity = "durable_activity_executions_total"
    cache = "durable_replay_cache_events_total"
    entity_ops = "durable_entity_operations_total"
    schedule_runs = "durable_schedule_runs_total"
    return [
        Row(
            "Overview",
            [
                Panel(
                    "Workers",
                    [Target(f"count(durable_build_info{{{SEL}}})", "workers")],
                    kind="stat",
                    width=4,
                    height=4,
                    description="Worker processes reporting metrics.",
                ),
                Panel(
                    "Partitions owned",
                    [Target(f"sum(durable_partitions_owned{{{SEL}}})", "owned")],
                    kind="stat",
                    width=4,
                    height=4,
                ),
                Panel(
                    "Orchestrations started / s",
                    [Target(f"sum(rate({started}{{{SEL}}}[{RATE}]))", "started")],
                    unit="ops",
                    kind="stat",
                    width=4,
                    height=4,
                ),
                Panel(
                    "Orchestrations failed / s",
                    [Target(f"sum(rate({finished}{{{SEL}, status=~{FAILED}}}[{RATE}]))", "failed")],
                    unit="ops",
                    kind="stat",
                    width=4,
                    height=4,
                ),
                Panel(
                    "Inbox backlog",
                    [
                        Target(
                            f"sum(max by (partition) (durable_partition_backlog_messages{{{SEL}}}))",
                            "messages",
                        )
                    ],
                    kind="stat",
                    width=4,
                    height=4,
                ),
                Panel(
                    "Oldest inbox message",
                    [Target(f"max(durable_partition_oldest_message_age_seconds{{{SEL}}})", "age")],
                    unit="s",
                    kind="stat",
                    width=4,
                    height=4,
                ),
            ],
        ),
        Row(
            "Throughput",
            [
                Panel(
                    "Orchestrations started",
                    [Target(f"sum by (name) (rate({started}{{{SEL}}}[{RATE}]))", "{{name}}")],
                    unit="ops",
                ),
                Panel(
                    "Orchestrations finished by status",
                    [Target(f"sum by (status) (rate({finished}{{{SEL}}}[{RATE}]))", "{{status}}")],
                    unit="ops",
                    stack=True,
                ),
                Panel(
                    "Orchestrations purged",
                    [
                        Target(
                            f"sum by (reason) (rate(durable_orchestrations_purged_total{{{SEL}}}[{RATE}]))",
                            "{{reason}}",
                        )
                    ],
                    unit="ops",
                    description="Terminal instances purged by workers: retention, or purge_orchestrations.",
                ),
            ],
        ),
        Row(
            "Failures",
            [
                Panel(
                    "Failed orchestrations",
                    [
                        Target(
                            f"sum by (name) (rate({finished}{{{SEL}, status=~{FAILED}}}[{RATE}]))",
                            "{{name}}",
                        )
                    ],
                    unit="ops",
                    width=8,
                    description="Orchestrations that finished with status FAILED.",
                ),
                Panel(
                    "Failed activities",
                    [
                        Target(
                            f'sum by (name) (rate({activity}{{{SEL}, status="failed"}}[{RATE}]))',
                            "{{name}}",
                        )
                    ],
                    unit="ops",
                    width=8,
                    description="Activity executions that raised.",
                ),
                Panel(
                    "Nondeterminism errors",
                    [
                        Target(
                            f"sum by (name) (increase(durable_nondeterminism_errors_total{{{SEL}}}[{RATE}]))",
                            "{{name}}",
                        )
                    ],
                    width=8,
                ),
                Panel(
                    "Waiting for a version",
                    [
                        Target(
                            f"sum by (name, version) (durable_orchestrations_waiting_for_version{{{SEL}}})",
                            "{{name}} v{{version}}",
                        )
                    ],
                    width=8,
                    description="Instances whose version no live worker has (a rolling deploy in "
                    "progress, or a version that was removed while instances still use it).",
                ),
            ],
        ),
        Row(
            "Latency",
            [
                Panel(
                    "Schedule-to-start p50 / p99",
                    [
                        Target(quantile(0.5, "durable_schedule_to_start_seconds", "kind"), "p50 {{kind}}"),
                        Target(quantile(0.99, "durable_schedule_to_start_seconds", "kind"), "p99 {{kind}}"),
                    ],
                    unit="s",
                ),
                Panel(
                    "Work item duration p50 / p99",
                    [
                        Target(quantile(0.5, "durable_work_item_duration_seconds", "kind"), "p50 {{kind}}"),
                        Target(quantile(0.99, "durable_work_item_duration_seconds", "kind"), "p99 {{kind}}"),
                    ],
                    unit="s",
                ),
                Panel(
                    "Orchestration duration p50 / p99",
                    [
                        Target(
                            quantile(0.5, "durable_orchestration_duration_seconds", "name"), "p50 {{name}}"
                        ),
                        Target(
                            quantile(0.99, "durable_orchestration_duration_seconds", "name"), "p99 {{name}}"
                        ),
                    ],
                    unit="s",
                ),
                Panel(
                    "Timer lateness p50 / p99",
                    [
                        Target(quantile(0.5, "durable_timer_lateness_seconds", ""), "p50"),
                        Target(quantile(0.99, "durable_timer_lateness_seconds", ""), "p99"),
                    ],
                    unit="s",
                ),
            ],
        ),
        Row(
            "Partitions",
            [
                Panel(
                    "Inbox backlog by partition",
                    [
                        Target(
                            f"max by (partition) (durable_partition_backlog_messages{{{SEL}}})",
                            "{{partition}}",
                        )
                    ],
                ),
                Panel(
                    "Oldest inbox message age by partition",
                    [
                        Target(
                            f"max by (partition) (durable_partition_oldest_message_age_seconds{{{SEL}}})",
                            "{{partition}}",
                        )
                    ],
                    unit="s",
                ),
                Panel(
                    "Partitions owned by worker",
                    [Target(f"sum by (instance) (durable_partitions_owned{{{SEL}}})", "{{instance}}")],
                    stack=True,
                ),
                Panel(
                    "Lease events",
                    [
                        Target(
                            f"sum by (event) (rate(durable_lease_events_total{{{SEL}}}[{RATE}]))",
                            "{{event}}",
                        )
                    ],
                    unit="ops",
                ),
                Panel(
                    "Timers pending",
                    [Target(f"sum(max by (partition) (durable_timers_pending{{{SEL}}}))", "pending")],
                ),
                Panel(
                    "Redeliveries",
                    [
                        Target(
                            f"sum by (kind) (rate(durable_redeliveries_total{{{SEL}}}[{RATE}]))",
                            "{{kind}}",
                        )
                    ],
                    unit="ops",
                ),
            ],
        ),
        Row(
            "Replay cache",
            [
                Panel(
                    "Replay cache events",
                    [
                        Target(
                            f"sum by (event) (rate({cache}{{{SEL}}}[{RATE}]))",
                            "{{event}}",
                        )
                    ],
                    unit="ops",
                    width=8,
                ),
                Panel(
                    "Replay cache hit ratio",
                    [
                        Target(
                            f'sum(rate({cache}{{{SEL}, event="hit"}}[{RATE}])) / '
                            f'sum(rate({cache}{{{SEL}, event=~"hit|miss"}}[{RATE}]))',
                            "hit ratio",
                        )
                    ],
                    unit="percentunit",
                    width=8,
                    description="Share of orchestration episodes served from the replay cache "
                    "instead of loading and replaying full history.",
                    extra_defaults={"min": 0, "max": 1},
                ),
                Panel(
                    "Replay cache size",
                    [Target(f"sum by (instance) (durable_replay_cache_size{{{SEL}}})", "{{instance}}")],
                    width=8,
                ),
            ],
        ),
        Row(
            "Activities",
            [
                Panel(
                    "Activity executions",
                    [
                        Target(
                            f"sum by (name, status) (rate({activity}{{{SEL}}}[{RATE}]))",
                            "{{name}} {{status}}",
                        )
                    ],
                    unit="ops",
                ),
                Panel(
                    "Activity duration p50 / p99",
                    [
                        Target(quantile(0.5, "durable_activity_duration_seconds", "name"), "p50 {{name}}"),
                        Target(quantile(0.99, "durable_activity_duration_seconds", "name"), "p99 {{name}}"),
                    ],
                    unit="s",
                ),
            ],
        ),
        Row(
            "Entities",
            [
                Panel(
                    "Entity operations",
                    [
                        Target(
                            f"sum by (entity, status) (rate({entity_ops}{{{SEL}}}[{RATE}]))",
                            "{{entity}} {{status}}",
                        )
                    ],
                    unit="ops",
                    width=24,
                ),
            ],
        ),
        Row(
            "Schedules",
            [
                Panel(
                    "Schedule runs",
                    [
                        Target(
                            f"sum by (schedule, outcome) (rate({schedule_runs}{{{SEL}}}[{RATE}]))",
                            "{{schedule}} {{outcome}}",
                        )
                    ],
                    unit="ops",
                    description="Calendar slots of recurring schedules: runs started, and slots "
                    "skipped (missed beyond the catch-up window, or overlapping a running run).",
                ),
                Panel(
                    "Schedule lateness p50 / p99",
                    [
                        Target(quantile(0.5, "durable_schedule_lateness_seconds", ""), "p50"),
                        Target(quantile(0.99, "durable_schedule_lateness_seconds", ""), "p99"),
                    ],
                    unit="s",
                ),
            ],
        ),
        Row(
            "Workers",
            [
                Panel(
                    "Activity slots",
                    [Target(f"sum by (state) (durable_worker_slots{{{SEL}}})", "{{state}}")],
                    stack=True,
                ),
                Panel(
                    "Slot utilisation by worker",
                    [
                        Target(
                            f'sum by (instance) (durable_worker_slots{{{SEL}, state="used"}}) / '
                            f"sum by (instance) (durable_worker_slots{{{SEL}}})",
                            "{{instance}}",
                        )
                    ],
                    unit="percentunit",
                    description="Used activity slots over configured slots (DURABLE_CONCURRENCY).",
                    extra_defaults={"min": 0, "max": 1},
                ),
            ],
        ),
        Row(
            "Agents",
            [
                Panel(
                    "Model calls",
                    [
                        Target(
                            f"sum by (agent, status) "
                            f"(rate(durable_agent_model_calls_total{{{SEL}}}[{RATE}]))",
                            "{{agent}} {{status}}",
                        )
                    ],
                    unit="ops",
                    width=8,
                ),
                Panel(
                    "Tool calls by outcome",
                    [
                        Target(
                            f"sum by (agent, tool, status) "
                            f"(rate(durable_agent_tool_calls_total{{{SEL}}}[{RATE}]))",
                            "{{agent}} {{tool}} {{status}}",
                        )
                    ],
                    unit="ops",
                    width=8,
                ),
                Panel(
                    "Approvals waiting",
                    [Target(f"sum by (agent) (durable_agent_approvals_waiting{{{SEL}}})", "{{agent}}")],
                    width=8,
                ),
            ],
        ),
    ]


class _Ids:
    def __init__(self) -> None:
        self.value = 0

    def next(self) -> int:
        self.value += 1
        return self.value


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    for target in panel.targets:
        metric_for(target.expr)  # validate every expression
    description = panel.description or metric_for(panel.targets[0].expr).help
    defaults: dict[str, Any] = {"unit": panel.unit, **panel.extra_defaults}
    options: dict[str, Any]
    if panel.kind == "stat":
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
        }
    else:
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 20 if panel.stack else 10,
            "showPoints": "never",
            "stacking": {"mode": "normal" if panel.stack else "none", "group": "A"},
        }
        options = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": description,
        "datasource": dict(DATASOURCE),
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": [
            {
                "refId": chr(ord("A") + index),
                "datasource": dict(DATASOURCE),
                "expr": target.expr,
                "legendFormat": target.legend,
                "range": True,
            }
            for index, target in enumerate(panel.targets)
        ],
    }


def _layout() -> list[dict[str, Any]]:
    ids = _Ids()
    out: list[dict[str, Any]] = []
    y = 0
    for row in rows():
        out.append(
            {
                "id": ids.next(),
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        y += 1
        x = 0
        line_height = 0
        for panel in row.panels:
            if x + panel.width > 24:
                y += line_height
                x = 0
                line_height = 0
            out.append(_panel_json(panel, ids.next(), x, y))
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    return out


def build_dashboard() -> dict[str, Any]:
    """The dashboard as a JSON-serialisable dict."""
    return {
        "uid": DASHBOARD_UID,
        "title": "Durable / Overview",
        "description": "Durable orchestrations and entities on Redis: throughput, failures, latency, "
        "partitions, replay cache, activities, entities and worker slots. Generated by "
        "ops/grafana/generate.py; do not edit by hand.",
        "tags": ["durable", "redis"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                    "includeAll": False,
                    "multi": False,
                    "options": [],
                },
                {
                    "name": "job",
                    "label": "Hub (job)",
                    "description": "Prometheus job of the workers; one worker deployment serves one hub.",
                    "type": "query",
                    "datasource": dict(DATASOURCE),
                    "definition": "label_values(durable_build_info, job)",
                    "query": {
                        "qryType": 1,
                        "query": "label_values(durable_build_info, job)",
                        "refId": "PrometheusVariableQueryEditor-VariableQuery",
                    },
                    "current": {},
                    "hide": 0,
                    "refresh": 2,
                    "regex": "",
                    "sort": 1,
                    "includeAll": True,
                    "allValue": ".+",
                    "multi": True,
                    "options": [],
                },
            ]
        },
        "panels": _layout(),
    }


def render() -> str:
    """The dashboard JSON exactly as committed."""
    return json.dumps(build_dashboard(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if the committed file is stale")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="where to write the dashboard JSON")
    args = parser.parse_args(argv)
    text = render()
    output: Path = args.output
    if args.check:
        current = output.read_text(encoding="utf-8") if output.exists() else ""
        if current != text:
            print(f"{output} is stale: run python ops/grafana/generate.py", file=sys.stderr)
            return 1
        return 0
    output.write_text(text, encoding="utf-8")
    print(output.relative_to(REPO_ROOT) if output.is_relative_to(REPO_ROOT) else output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
