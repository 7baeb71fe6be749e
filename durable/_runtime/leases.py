"""The partition leases a worker holds, with the local deadline before which each is trusted.

Renewal runs on its own thread (a blocked event loop must not let a lease lapse unnoticed), so
the table is guarded by a lock. Fencing itself happens in Redis: every commit checks the lease.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .._store.store import LeaseRenewer
from .telemetry import Telemetry

log = logging.getLogger("durable.worker")


class LeaseTable:
    """Leases held by one worker: partition -> lease value, and a local validity deadline."""

    def __init__(self, ttl_ms: int, metrics: Telemetry, on_lost: Callable[[int], None]) -> None:
        self.ttl_ms = ttl_ms
        self._metrics = metrics
        self._on_lost = on_lost  # called (from the renewal thread) when a renewal is refused
        self._lock = threading.Lock()
        self._leases: dict[int, str] = {}
        self._deadlines: dict[int, float] = {}

    def _trusted_for(self) -> float:
        safety = min(self.ttl_ms / 3, 5000)
        return (self.ttl_ms - safety) / 1000

    def valid(self, index: int) -> bool:
        with self._lock:
            return index in self._leases and time.monotonic() < self._deadlines.get(index, 0)

    def grant(self, index: int, lease: str) -> None:
        with self._lock:
            self._leases[index] = lease
            self._deadlines[index] = time.monotonic() + self._trusted_for()
        self._metrics.lease_event("acquired")

    def lost(self, index: int) -> None:
        with self._lock:
            self._leases.pop(index, None)
            self._deadlines.pop(index, None)
        self._metrics.lease_event("lost")

    def take(self, index: int) -> str | None:
        """Forget the lease of ``index`` and return it (to release it in Redis)."""
        with self._lock:
            self._deadlines.pop(index, None)
            return self._leases.pop(index, None)

    def owned(self) -> list[int]:
        with self._lock:
            return sorted(self._leases)

    def renew_all(self, renewer: LeaseRenewer) -> None:
        """Renew every lease (called from the renewal thread)."""
        with self._lock:
            leases = dict(self._leases)
        if not leases:
            return
        started = time.monotonic()
        try:
            results = renewer.renew(leases, self.ttl_ms)
        except Exception as exc:
            log.warning("lease renewal failed: %s", exc)
            self._metrics.lease_event("renew_failed")
            return
        refused: list[int] = []
        with self._lock:
            for index, ok in results.items():
                if self._leases.get(index) != leases[index]:
                    continue
                if ok:
                    self._deadlines[index] = started + self._trusted_for()
                else:
                    self._deadlines[index] = 0.0
                    refused.append(index)
        for index in refused:
            self._metrics.lease_event("lost")
            self._on_lost(index)
