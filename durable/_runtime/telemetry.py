"""Feeds the Prometheus metrics of :mod:`durable._metrics` from the runtime's events.

Kept apart from the loops so that they call one small method per event and never touch
prometheus-client directly; nothing here does I/O.
"""

from __future__ import annotations

from typing import Any

from . import metrics as m


def _age_seconds(stream_id: str, now_ms: int) -> float:
    try:
        return max(0.0, (now_ms - int(stream_id.split("-", 1)[0])) / 1000)
    except ValueError:
        return 0.0


class Telemetry:
    """One per worker; the metric families themselves are process-wide.

    Labelled children are looked up once and kept: ``labels()`` takes a lock and builds a key on
    every call, which showed up in profiles of the hot path."""

    def __init__(self) -> None:
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *values: str) -> Any:
        key = (id(metric), *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def duplicate_dropped(self, count: int = 1) -> None:
        self._child(m.REDELIVERIES, "message").inc(count)

    def redelivery(self, kind: str) -> None:
        m.REDELIVERIES.labels(kind=kind).inc()

    def dead_lettered(self, kind: str) -> None:
        m.REDELIVERIES.labels(kind=f"dead_letter_{kind}").inc()

    def cache_event(self, event: str) -> None:
        self._child(m.REPLAY_CACHE_EVENTS, event).inc()

    def cache_size(self, size: int) -> None:
        m.REPLAY_CACHE_SIZE.set(size)

    def nondeterminism(self, name: str) -> None:
        m.NONDETERMINISM_ERRORS.labels(name=name).inc()

    def lease_event(self, event: str) -> None:
        m.LEASE_EVENTS.labels(event=event).inc()

    def partitions_owned(self, count: int) -> None:
        m.PARTITIONS_OWNED.set(count)

    def slots(self, used: int, total: int) -> None:
        m.WORKER_SLOTS.labels(state="used").set(used)
        m.WORKER_SLOTS.labels(state="available").set(max(total - used, 0))

    def schedule_to_start(self, kind: str, stream_id: str, now_ms: int) -> None:
        self._child(m.SCHEDULE_TO_START, kind).observe(_age_seconds(stream_id, now_ms))

    def activity_done(self, name: str, status: str, seconds: float) -> None:
        self._child(m.ACTIVITY_EXECUTIONS, name, status).inc()
        self._child(m.ACTIVITY_DURATION, name).observe(seconds)
        self._child(m.WORK_ITEM_DURATION, "activity").observe(seconds)

    def purged(self, reason: str, count: int) -> None:
        self._child(m.ORCHESTRATIONS_PURGED, reason).inc(count)

    def entity_operation(self, entity: str, status: str, count: int = 1) -> None:
        self._child(m.ENTITY_OPERATIONS, entity, status).inc(count)

    def schedule_run(self, schedule: str, outcome: str, value: float | int | None) -> None:
        """A schedule started a run (``value``: its lateness in seconds, None when triggered) or
        skipped ``value`` slots."""
        if outcome == "skipped":
            self._child(m.SCHEDULE_RUNS, schedule, outcome).inc(value or 0)
            return
        self._child(m.SCHEDULE_RUNS, schedule, outcome).inc()
        if value is not None:
            m.SCHEDULE_LATENESS.observe(max(float(value), 0.0))

    def timer_fired(self, lateness_seconds: float) -> None:
        m.TIMER_LATENESS.observe(max(lateness_seconds, 0.0))

    def step_committed(self, index: int, step: Any, entries: list[tuple[str, Any]], now_ms: int) -> None:
        """Account for one committed partition step."""
        to_start = self._child(m.SCHEDULE_TO_START, "orchestration")
        for eid, _ in entries:
            to_start.observe(_age_seconds(eid, now_ms))
        seconds = max(now_ms - step.now, 0) / 1000
        kinds = {"entity" if r.index == "e" else "orchestration" for r in step.plan.records}
        for kind in kinds or ("orchestration",):
            self._child(m.WORK_ITEM_DURATION, kind).observe(seconds)
        for inst in step.started:
            self._child(m.ORCHESTRATIONS_STARTED, inst.name).inc()
        for kind, value in step.notes:
            if kind == "schedule_run":
                self.schedule_run(*value)
        for inst, result in step.finished:
            status = result.status.value
            m.ORCHESTRATIONS_FINISHED.labels(name=inst.name, status=status).inc()
            if inst.created:
                m.ORCHESTRATION_DURATION.labels(name=inst.name, status=status).observe(
                    max(now_ms - inst.created, 0) / 1000
                )
