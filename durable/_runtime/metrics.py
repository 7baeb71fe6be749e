"""Prometheus metrics exported by durable workers.

Every metric lives in the module-level :data:`REGISTRY` rather than the
prometheus-client default registry, so importing several workers (or several
test fixtures) into one process never triggers duplicate-registration errors,
and the ops HTTP server exposes exactly these series and nothing else.

:data:`METRIC_DEFINITIONS` is the single source of truth for names, types,
label sets and HELP strings. The collectors below are built *from* it, and the
Grafana dashboard generator, the alert rules checks and the docs read it, so a
renamed metric is caught by CI everywhere it is referenced.

Label values must stay bounded: never use an instance id, an entity key or any
other user-supplied identifier as a label value. Orchestration, activity and
entity *names* (types) are fine; partition numbers are bounded by the
partition count. Schedule ids are the one exception, because the metric's
users asked for runs per schedule: schedules are few and made by operators,
like names (a hub with thousands of schedules would want them aggregated).

This module deliberately imports nothing from Redis or the engine.
"""

from __future__ import annotations

import importlib.metadata
import platform
from dataclasses import dataclass
from typing import Final, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = [
    "ACTIVITY_DURATION",
    "ACTIVITY_EXECUTIONS",
    "ACTIVITY_STATUSES",
    "AGENT_APPROVALS_WAITING",
    "AGENT_MODEL_CALLS",
    "AGENT_TOOL_CALLS",
    "AGENT_TOOL_STATUSES",
    "BUILD_INFO",
    "CONTENT_TYPE",
    "ENTITY_OPERATIONS",
    "LEASE_EVENTS",
    "LEASE_EVENT_NAMES",
    "METRIC_DEFINITIONS",
    "NONDETERMINISM_ERRORS",
    "ORCHESTRATIONS_FINISHED",
    "ORCHESTRATIONS_PURGED",
    "ORCHESTRATIONS_STARTED",
    "ORCHESTRATIONS_WAITING_FOR_VERSION",
    "ORCHESTRATION_DURATION",
    "PARTITIONS_OWNED",
    "PARTITION_BACKLOG",
    "PARTITION_OLDEST_MESSAGE_AGE",
    "PURGE_REASONS",
    "REDELIVERIES",
    "REGISTRY",
    "REPLAY_CACHE_EVENTS",
    "REPLAY_CACHE_EVENT_NAMES",
    "REPLAY_CACHE_SIZE",
    "SCHEDULE_LATENESS",
    "SCHEDULE_RUNS",
    "SCHEDULE_RUN_OUTCOMES",
    "SCHEDULE_TO_START",
    "TIMERS_PENDING",
    "TIMER_LATENESS",
    "WORKER_SLOTS",
    "WORKER_SLOT_STATES",
    "WORK_ITEM_DURATION",
    "WORK_ITEM_KINDS",
    "MetricDefinition",
    "MetricKind",
    "definition",
    "exposition",
    "partition_label",
    "set_worker_slots",
]

MetricKind = Literal["counter", "gauge", "histogram"]

#: Label values of the ``kind`` label (work items, schedule-to-start, redeliveries).
WORK_ITEM_KINDS: Final[tuple[str, ...]] = ("orchestration", "entity", "activity")
#: Label values of ``durable_activity_executions_total{status}``.
ACTIVITY_STATUSES: Final[tuple[str, ...]] = ("completed", "failed")
#: Label values of ``durable_agent_tool_calls_total{status}``.
AGENT_TOOL_STATUSES: Final[tuple[str, ...]] = ("ok", "error", "denied")
#: Label values of ``durable_lease_events_total{event}``.
LEASE_EVENT_NAMES: Final[tuple[str, ...]] = ("acquired", "lost", "released", "renew_failed")
#: Label values of ``durable_replay_cache_events_total{event}``.
REPLAY_CACHE_EVENT_NAMES: Final[tuple[str, ...]] = ("hit", "miss", "evict")
#: Label values of ``durable_schedule_runs_total{outcome}``.
SCHEDULE_RUN_OUTCOMES: Final[tuple[str, ...]] = ("started", "skipped")
#: Label values of ``durable_orchestrations_purged_total{reason}``.
PURGE_REASONS: Final[tuple[str, ...]] = ("retention", "request")
#: Label values of ``durable_worker_slots{state}``.
WORKER_SLOT_STATES: Final[tuple[str, ...]] = ("used", "available")

# Histogram buckets, all in seconds.

#: Single work-item executions (one replay episode, one entity batch, one activity
#: call): sub-millisecond up to tens of seconds.
_WORK_ITEM_BUCKETS: Final[tuple[float, ...]] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
#: Queueing delay between enqueue and pickup, and timer lateness: milliseconds
#: when healthy, minutes when a hub is badly backlogged.
_DELAY_BUCKETS: Final[tuple[float, ...]] = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
)  # fmt: skip
#: Activities may do real I/O: milliseconds up to an hour.
_ACTIVITY_BUCKETS: Final[tuple[float, ...]] = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0,
)  # fmt: skip
#: Whole orchestrations, start to terminal state: durable timers make these
#: span from milliseconds to days.
_ORCHESTRATION_BUCKETS: Final[tuple[float, ...]] = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0,
    86400.0, 604800.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class MetricDefinition:
    """Static description of one exported metric family.

    ``name`` is the name as it appears in PromQL (counters include ``_total``,
    histograms are the base name without ``_bucket``/``_count``/``_sum``).
    """

    name: str
    kind: MetricKind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    @property
    def series_names(self) -> tuple[str, ...]:
        """Sample names this family produces that queries may reference."""
        if self.kind == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_count", f"{self.name}_sum")
        return (self.name,)


METRIC_DEFINITIONS: Final[tuple[MetricDefinition, ...]] = (
    MetricDefinition(
        "durable_orchestrations_started_total",
        "counter",
        "Orchestration instances started, by orchestration name.",
        ("name",),
    ),
    MetricDefinition(
        "durable_orchestrations_finished_total",
        "counter",
        "Orchestration instances that reached a terminal state, by orchestration name and final status.",
        ("name", "status"),
    ),
    MetricDefinition(
        "durable_orchestrations_purged_total",
        "counter",
        "Terminal orchestration instances purged by this worker, by reason (retention, or a "
        "purge_orchestrations request).",
        ("reason",),
    ),
    MetricDefinition(
        "durable_orchestration_duration_seconds",
        "histogram",
        "Wall-clock time from orchestration start to terminal state, in seconds.",
        ("name", "status"),
        _ORCHESTRATION_BUCKETS,
    ),
    MetricDefinition(
        "durable_work_item_duration_seconds",
        "histogram",
        "Time spent executing one work item (orchestration episode, entity batch or activity), in seconds.",
        ("kind",),
        _WORK_ITEM_BUCKETS,
    ),
    MetricDefinition(
        "durable_schedule_to_start_seconds",
        "histogram",
        "Delay between a work item being enqueued and a worker starting it, in seconds.",
        ("kind",),
        _DELAY_BUCKETS,
    ),
    MetricDefinition(
        "durable_activity_executions_total",
        "counter",
        "Activity executions, by activity name and outcome (completed or failed).",
        ("name", "status"),
    ),
    MetricDefinition(
        "durable_activity_duration_seconds",
        "histogram",
        "Execution time of activity functions, in seconds.",
        ("name",),
        _ACTIVITY_BUCKETS,
    ),
    MetricDefinition(
        "durable_entity_operations_total",
        "counter",
        "Entity operations processed, by entity name (type, never key) and outcome.",
        ("entity", "status"),
    ),
    MetricDefinition(
        "durable_partition_backlog_messages",
        "gauge",
        "Messages waiting in a partition inbox stream, as seen by the partition owner.",
        ("partition",),
    ),
    MetricDefinition(
        "durable_partition_oldest_message_age_seconds",
        "gauge",
        "Age of the oldest unprocessed message in a partition inbox stream, in seconds.",
        ("partition",),
    ),
    MetricDefinition(
        "durable_partitions_owned",
        "gauge",
        "Number of partitions whose lease this worker currently holds.",
    ),
    MetricDefinition(
        "durable_lease_events_total",
        "counter",
        "Partition lease events on this worker (acquired, lost, released, renew_failed).",
        ("event",),
    ),
    MetricDefinition(
        "durable_redeliveries_total",
        "counter",
        "Messages delivered again after a worker failed to acknowledge them, by work item kind.",
        ("kind",),
    ),
    MetricDefinition(
        "durable_timers_pending",
        "gauge",
        "Durable timers scheduled but not yet fired, per owned partition.",
        ("partition",),
    ),
    MetricDefinition(
        "durable_timer_lateness_seconds",
        "histogram",
        "How late durable timers fired relative to their due time, in seconds.",
        (),
        _DELAY_BUCKETS,
    ),
    MetricDefinition(
        "durable_schedule_runs_total",
        "counter",
        "Calendar slots of recurring schedules, by schedule id and outcome: started (a run began; "
        "triggered runs included) or skipped (missed beyond the catch-up window, or overlapping).",
        ("schedule", "outcome"),
    ),
    MetricDefinition(
        "durable_schedule_lateness_seconds",
        "histogram",
        "How late schedule runs started relative to their calendar slot, in seconds.",
        (),
        _DELAY_BUCKETS,
    ),
    MetricDefinition(
        "durable_replay_cache_events_total",
        "counter",
        "Orchestration replay cache events (hit, miss, evict).",
        ("event",),
    ),
    MetricDefinition(
        "durable_replay_cache_size",
        "gauge",
        "Orchestration instances currently held in the in-memory replay cache.",
    ),
    MetricDefinition(
        "durable_nondeterminism_errors_total",
        "counter",
        "Replays that diverged from recorded history (non-deterministic orchestration code), "
        "by orchestration name.",
        ("name",),
    ),
    MetricDefinition(
        "durable_orchestrations_waiting_for_version",
        "gauge",
        "Orchestration instances in this worker's partitions whose next step waits for a worker "
        "with their orchestrator version (no live worker has it), by orchestration name and version.",
        ("name", "version"),
    ),
    MetricDefinition(
        "durable_worker_slots",
        "gauge",
        "Activity execution slots on this worker, by state (used or available).",
        ("state",),
    ),
    MetricDefinition(
        "durable_agent_model_calls_total",
        "counter",
        "Model calls made by durable agents (every attempt), by agent name and outcome "
        "(completed or failed).",
        ("agent", "status"),
    ),
    MetricDefinition(
        "durable_agent_tool_calls_total",
        "counter",
        "Tool calls of durable agents, by agent name, tool name and outcome (ok, error or denied).",
        ("agent", "tool", "status"),
    ),
    MetricDefinition(
        "durable_agent_approvals_waiting",
        "gauge",
        "Tool calls waiting for a person's approval, by agent name, in the turns this worker runs.",
        ("agent",),
    ),
    MetricDefinition(
        "durable_build_info",
        "gauge",
        "Build information; always 1, labelled with the durable and Python versions.",
        ("version", "python"),
    ),
)

_BY_NAME: Final[dict[str, MetricDefinition]] = {d.name: d for d in METRIC_DEFINITIONS}


def definition(name: str) -> MetricDefinition:
    """Return the definition of metric ``name`` (raises ``KeyError`` if unknown)."""
    return _BY_NAME[name]


#: Registry holding every durable metric; serve it from the ops HTTP server.
REGISTRY: Final[CollectorRegistry] = CollectorRegistry(auto_describe=True)

#: Content type to send with :func:`exposition` output.
CONTENT_TYPE: Final[str] = CONTENT_TYPE_LATEST


def _require(name: str, kind: MetricKind) -> MetricDefinition:
    spec = _BY_NAME[name]
    if spec.kind != kind:
        raise TypeError(f"metric {name} is defined as a {spec.kind}, not a {kind}")
    return spec


def _counter(name: str) -> Counter:
    spec = _require(name, "counter")
    return Counter(spec.name, spec.help, labelnames=spec.labels, registry=REGISTRY)


def _gauge(name: str) -> Gauge:
    spec = _require(name, "gauge")
    return Gauge(spec.name, spec.help, labelnames=spec.labels, registry=REGISTRY)


def _histogram(name: str) -> Histogram:
    spec = _require(name, "histogram")
    return Histogram(spec.name, spec.help, labelnames=spec.labels, buckets=spec.buckets, registry=REGISTRY)


ORCHESTRATIONS_STARTED: Final[Counter] = _counter("durable_orchestrations_started_total")
ORCHESTRATIONS_FINISHED: Final[Counter] = _counter("durable_orchestrations_finished_total")
ORCHESTRATIONS_PURGED: Final[Counter] = _counter("durable_orchestrations_purged_total")
ORCHESTRATION_DURATION: Final[Histogram] = _histogram("durable_orchestration_duration_seconds")
WORK_ITEM_DURATION: Final[Histogram] = _histogram("durable_work_item_duration_seconds")
SCHEDULE_TO_START: Final[Histogram] = _histogram("durable_schedule_to_start_seconds")
ACTIVITY_EXECUTIONS: Final[Counter] = _counter("durable_activity_executions_total")
ACTIVITY_DURATION: Final[Histogram] = _histogram("durable_activity_duration_seconds")
ENTITY_OPERATIONS: Final[Counter] = _counter("durable_entity_operations_total")
PARTITION_BACKLOG: Final[Gauge] = _gauge("durable_partition_backlog_messages")
PARTITION_OLDEST_MESSAGE_AGE: Final[Gauge] = _gauge("durable_partition_oldest_message_age_seconds")
PARTITIONS_OWNED: Final[Gauge] = _gauge("durable_partitions_owned")
LEASE_EVENTS: Final[Counter] = _counter("durable_lease_events_total")
REDELIVERIES: Final[Counter] = _counter("durable_redeliveries_total")
TIMERS_PENDING: Final[Gauge] = _gauge("durable_timers_pending")
TIMER_LATENESS: Final[Histogram] = _histogram("durable_timer_lateness_seconds")
SCHEDULE_RUNS: Final[Counter] = _counter("durable_schedule_runs_total")
SCHEDULE_LATENESS: Final[Histogram] = _histogram("durable_schedule_lateness_seconds")
REPLAY_CACHE_EVENTS: Final[Counter] = _counter("durable_replay_cache_events_total")
REPLAY_CACHE_SIZE: Final[Gauge] = _gauge("durable_replay_cache_size")
NONDETERMINISM_ERRORS: Final[Counter] = _counter("durable_nondeterminism_errors_total")
ORCHESTRATIONS_WAITING_FOR_VERSION: Final[Gauge] = _gauge("durable_orchestrations_waiting_for_version")
WORKER_SLOTS: Final[Gauge] = _gauge("durable_worker_slots")
AGENT_MODEL_CALLS: Final[Counter] = _counter("durable_agent_model_calls_total")
AGENT_TOOL_CALLS: Final[Counter] = _counter("durable_agent_tool_calls_total")
AGENT_APPROVALS_WAITING: Final[Gauge] = _gauge("durable_agent_approvals_waiting")
BUILD_INFO: Final[Gauge] = _gauge("durable_build_info")


def _package_version() -> str:
    try:
        return importlib.metadata.version("durable")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def partition_label(partition: int) -> str:
    """Label value for a partition number, zero-padded like the inbox stream keys."""
    if partition < 0:
        raise ValueError(f"partition must be non-negative, got {partition}")
    return f"{partition:02d}"


def set_worker_slots(used: int, total: int) -> None:
    """Publish activity slot usage: ``used`` busy out of ``total`` configured."""
    WORKER_SLOTS.labels(state="used").set(used)
    WORKER_SLOTS.labels(state="available").set(max(total - used, 0))


def exposition() -> bytes:
    """Render :data:`REGISTRY` in the Prometheus text format (see :data:`CONTENT_TYPE`)."""
    return generate_latest(REGISTRY)


BUILD_INFO.labels(version=_package_version(), python=platform.python_version()).set(1)

# Pre-create the children of bounded, enum-like label sets so that rate() and
# increase() see a zero sample before the first event instead of a missing
# series (which would hide the first increment from alerts).
for _event in LEASE_EVENT_NAMES:
    LEASE_EVENTS.labels(event=_event)
for _event in REPLAY_CACHE_EVENT_NAMES:
    REPLAY_CACHE_EVENTS.labels(event=_event)
for _kind in WORK_ITEM_KINDS:
    REDELIVERIES.labels(kind=_kind)
for _state in WORKER_SLOT_STATES:
    WORKER_SLOTS.labels(state=_state)
for _reason in PURGE_REASONS:
    ORCHESTRATIONS_PURGED.labels(reason=_reason)
del _event, _kind, _state, _reason
