"""The worker's own routes of the ops server: ``/metrics``, ``/healthz`` and ``/readyz``.

``/healthz`` is liveness (the worker's balance loop has run recently; a draining worker is alive),
``/readyz`` readiness (Redis answers, partitions are balanced, not draining). Both answer without a
token and never wait for a request slot (see :mod:`durable._ops.transport`). ``/metrics`` first
refreshes the gauges only this process can see: its activity slots and, for the partitions it
owns, their backlog, oldest message age, pending timers and the instances waiting for a worker
with their version.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import anyio
from prometheus_client.exposition import generate_latest
from redis.exceptions import RedisError

from .._client import AsyncClient
from .._runtime import metrics as _metrics
from .._runtime.runtime import Runtime
from .._store import queries as q
from .._store.store import Store
from .http import Request, Response, Route, json_response

__all__ = ["LIVENESS_MARGIN_SECONDS", "PROBE_PATHS", "PROBE_TIMEOUT_SECONDS", "Probes"]

log = logging.getLogger("durable.ops")

#: Time allowed for the Redis reads of a probe.
PROBE_TIMEOUT_SECONDS = 2.0
#: Extra seconds on top of three balance intervals before /healthz calls the worker stuck.
LIVENESS_MARGIN_SECONDS = 5.0
#: The paths of the probes: no token, never queued behind other requests.
PROBE_PATHS = frozenset({"/healthz", "/readyz"})


class Probes:
    """The metrics and health routes of one worker (``runtime`` None: an API-only server)."""

    def __init__(self, runtime: Runtime | None, client: AsyncClient) -> None:
        self.runtime = runtime
        self.client = client
        self._published_partitions: set[str] = set()
        self._published_waiting: set[tuple[str, str]] = set()

    def routes(self) -> list[Route]:
        return [
            Route(("metrics",), {"GET": self.metrics}),
            Route(("healthz",), {"GET": self.healthz}),
            Route(("readyz",), {"GET": self.readyz}),
        ]

    async def metrics(self, request: Request, params: list[str]) -> Response:
        rt = self.runtime
        if rt is not None:
            _metrics.set_worker_slots(rt.activities.slots_used, rt.config.concurrency)
            owned = rt.owned_partitions()
            _metrics.PARTITIONS_OWNED.set(len(owned))
            await self._publish_partition_gauges(owned)
        return Response(200, generate_latest(_metrics.REGISTRY), _metrics.CONTENT_TYPE)

    async def _publish_partition_gauges(self, owned: list[int]) -> None:
        """Backlog, oldest message age and pending timers of the partitions this worker owns, and
        the instances in them that wait for a worker with their version."""
        labels: set[str] = set()
        if not owned and not self._published_partitions:
            return
        try:
            with anyio.fail_after(PROBE_TIMEOUT_SECONDS):
                store = await self.client._get_store()
                infos = await q.partitions_info(store, only=owned)
                waiting = await q.waiting_for_version(store, owned)
        except (RedisError, OSError, TimeoutError) as exc:
            log.debug("partition gauges not refreshed: %s", exc)
            return
        self._publish_waiting(waiting)
        for info in infos:
            label = _metrics.partition_label(info.partition)
            labels.add(label)
            _metrics.PARTITION_BACKLOG.labels(partition=label).set(info.backlog)
            _metrics.PARTITION_OLDEST_MESSAGE_AGE.labels(partition=label).set(info.oldest_age_seconds)
            _metrics.TIMERS_PENDING.labels(partition=label).set(info.timers)
        for label in self._published_partitions - labels:
            for gauge in (
                _metrics.PARTITION_BACKLOG,
                _metrics.PARTITION_OLDEST_MESSAGE_AGE,
                _metrics.TIMERS_PENDING,
            ):
                with contextlib.suppress(KeyError):
                    gauge.remove(label)
        self._published_partitions = labels

    def _publish_waiting(self, waiting: list[q.WaitingInstance]) -> None:
        counts: dict[tuple[str, str], int] = {}
        for w in waiting:
            counts[(w.name, w.version)] = counts.get((w.name, w.version), 0) + 1
        gauge = _metrics.ORCHESTRATIONS_WAITING_FOR_VERSION
        for name, version in self._published_waiting - set(counts):
            with contextlib.suppress(KeyError):
                gauge.remove(name, version)
        for (name, version), count in counts.items():
            gauge.labels(name=name, version=version).set(count)
        self._published_waiting = set(counts)

    async def healthz(self, request: Request, params: list[str]) -> Response:
        rt = self.runtime
        if rt is None:
            return json_response(200, {"status": "ok", "worker": False})
        if rt.stopped.is_set():
            return json_response(503, {"status": "failing", "reasons": ["the worker has stopped"]})
        if rt.draining:
            # shutting down on purpose: the loops wind down, that is not a reason to restart it
            return json_response(200, {"status": "ok", "worker": True, "draining": True})
        interval = rt.config.balance_interval_ms / 1000
        limit = 3 * interval + LIVENESS_MARGIN_SECONDS
        age = time.monotonic() - rt.last_balance
        body: dict[str, Any] = {
            "status": "ok",
            "worker": True,
            "worker_id": rt.worker_id,
            "last_balance_seconds_ago": round(age, 3),
            "limit_seconds": limit,
        }
        if age > limit:
            body["status"] = "failing"
            body["reasons"] = [f"the balance loop last ran {age:.1f}s ago (limit {limit:.1f}s)"]
            return json_response(503, body)
        return json_response(200, body)

    async def readyz(self, request: Request, params: list[str]) -> Response:
        rt = self.runtime
        reasons: list[str] = []
        checks: dict[str, Any] = {}
        store: Store | None = None
        try:
            with anyio.fail_after(PROBE_TIMEOUT_SECONDS):
                store = await self.client._get_store()
                await q.ping(store)
            checks["redis"] = "ok"
        except (RedisError, OSError, TimeoutError) as exc:
            checks["redis"] = f"unreachable: {exc or type(exc).__name__}"
            reasons.append(f"Redis is unreachable: {exc or type(exc).__name__}")
        if rt is not None:
            owned = rt.owned_partitions()
            checks["draining"] = rt.draining
            checks["partitions_owned"] = len(owned)
            if rt.draining:
                reasons.append("the worker is draining")
            registered = False
            if store is not None and checks["redis"] == "ok":
                try:
                    with anyio.fail_after(PROBE_TIMEOUT_SECONDS):
                        registered = await q.is_worker_registered(store, rt.worker_id)
                except (RedisError, OSError, TimeoutError):
                    registered = False
            checks["registered"] = registered
            if not owned and not registered:
                reasons.append("partition balancing has not run yet")
        status = 503 if reasons else 200
        body: dict[str, Any] = {"status": "ready" if not reasons else "not_ready", "checks": checks}
        if reasons:
            body["reasons"] = reasons
        return json_response(status, body)
