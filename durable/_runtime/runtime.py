"""The worker runtime: partition ownership (leases, balancing), the instance cache, the clock."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import anyio
from redis.exceptions import RedisError

from .._config import WorkerConfig
from .._core.context import OrchestrationContext
from .._core.registry import Registry, name_of
from .._store.store import Store, SyncLeaseRenewer
from .activities import ActivityRunner
from .entity_step import EntityProcessor
from .partition import PartitionRunner
from .telemetry import Telemetry

log = logging.getLogger("durable.worker")


def _rendezvous(partition: int, workers: list[str]) -> str:
    best, best_score = workers[0], b""
    for w in workers:
        score = hashlib.blake2b(f"{w}/{partition}".encode(), digest_size=8).digest()
        if score > best_score:
            best, best_score = w, score
    return best


class Runtime:
    """Everything a running worker shares between its loops."""

    def __init__(self, store: Store, url: str, registry: Registry, config: WorkerConfig) -> None:
        self.store = store
        store.direct = config.direct_delivery and not store.cluster
        self.url = url
        self.registry = registry
        self.config = config
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.metrics = Telemetry()
        self.name_of = name_of
        self.context_factory: Callable[[str, Any], OrchestrationContext] = OrchestrationContext
        self.entities = EntityProcessor(self)
        self.runners: dict[int, PartitionRunner] = {}
        self._leases: dict[int, str] = {}
        self._deadlines: dict[int, float] = {}
        self._lock = threading.Lock()
        self._clock_offset_ms = 0.0
        self._lru: OrderedDict[tuple[int, str], None] = OrderedDict()
        self.draining = False
        self.stopped = anyio.Event()
        self.activities = ActivityRunner(self)
        self._free_ticks: dict[int, int] = {}
        self.last_balance = time.monotonic()
        self._started_ms = str(int(time.time() * 1000))

    # -- clock -----------------------------------------------------------------------------------
    def now_ms(self) -> int:
        """Redis-clock milliseconds, estimated from the local clock plus the measured offset."""
        return int(time.time() * 1000 + self._clock_offset_ms)

    def observe_clock(self, redis_now_ms: int) -> None:
        if redis_now_ms > 0:
            self._clock_offset_ms = redis_now_ms - time.time() * 1000

    # -- leases ----------------------------------------------------------------------------------
    def lease_valid(self, index: int) -> bool:
        with self._lock:
            return index in self._leases and time.monotonic() < self._deadlines.get(index, 0)

    def on_lease_lost(self, index: int) -> None:
        with self._lock:
            self._leases.pop(index, None)
            self._deadlines.pop(index, None)
        self.metrics.lease_event("lost")

    def _grant(self, index: int, lease: str) -> None:
        safety = min(self.config.lease_ttl_ms / 3, 5000)
        with self._lock:
            self._leases[index] = lease
            self._deadlines[index] = time.monotonic() + (self.config.lease_ttl_ms - safety) / 1000

    def owned_partitions(self) -> list[int]:
        with self._lock:
            return sorted(self._leases)

    def renew_all(self, renewer: SyncLeaseRenewer) -> None:
        """Called from the renewal thread."""
        with self._lock:
            leases = dict(self._leases)
        if not leases:
            return
        started = time.monotonic()
        try:
            results = renewer.renew(leases, self.config.lease_ttl_ms)
        except Exception as exc:
            log.warning("lease renewal failed: %s", exc)
            self.metrics.lease_event("renew_failed")
            return
        safety = min(self.config.lease_ttl_ms / 3, 5000)
        with self._lock:
            for index, ok in results.items():
                if self._leases.get(index) != leases[index]:
                    continue
                if ok:
                    self._deadlines[index] = started + (self.config.lease_ttl_ms - safety) / 1000
                else:
                    self._deadlines[index] = 0.0
                    self.metrics.lease_event("lost")
                    runner = self.runners.get(index)
                    if runner is not None:
                        runner.stopping = True

    # -- cache -----------------------------------------------------------------------------------
    def cache_touch(self, index: int, instance_ids: list[str]) -> None:
        lru = self._lru
        for iid in instance_ids:
            key = (index, iid)
            if key in lru:
                lru.move_to_end(key)
                self.metrics.cache_event("hit")
            else:
                lru[key] = None
        while len(lru) > self.config.cache_size:
            (p, iid), _ = lru.popitem(last=False)
            runner = self.runners.get(p)
            if runner is not None:
                runner.cache.pop(iid, None)
            self.metrics.cache_event("evict")
        self.metrics.cache_size(len(lru))

    def cache_evict_partition(self, index: int) -> None:
        for key in [k for k in self._lru if k[0] == index]:
            del self._lru[key]
        self.metrics.cache_size(len(self._lru))

    def after_commit(self, runner: PartitionRunner, step: Any, entries: list[Any]) -> None:
        self.metrics.step_committed(runner.index, step, entries, self.now_ms())

    # -- loops -----------------------------------------------------------------------------------
    async def run(self, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`request_stop`; then drain and release."""
        failures = 0
        while True:  # Redis may be down or still loading its data when a worker starts
            try:
                await self.store.ensure_hub(self.config.partitions)
                break
            except (RedisError, OSError) as exc:
                failures += 1
                if failures >= self.config.startup_retries:
                    raise
                log.warning("cannot reach Redis yet (%s); retrying", exc)
                await anyio.sleep(min(0.1 * 2**failures, 2.0))
        self.store.direct = self.config.direct_delivery and not self.store.cluster
        if self.config.durability == "strict":
            waited = await self.store.enable_strict(self.config.replicas, self.config.replication_timeout_ms)
            log.info("durability 'strict': every commit waits for %d replica(s)", waited)
        elif self.config.durability != "fast":
            raise ValueError(f"durability must be 'fast' or 'strict', not {self.config.durability!r}")
        await self.store.ensure_task_group()
        with contextlib.suppress(RedisError):
            self.observe_clock(await self.store.redis_time_ms())
        stop_renewing = threading.Event()
        renewer = SyncLeaseRenewer(self.url, self.store.hub, cluster=self.store.cluster)
        thread = threading.Thread(
            target=self._renew_thread,
            args=(renewer, stop_renewing),
            name="durable-lease-renewal",
            daemon=True,
        )
        thread.start()
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self.activities.run)
                self._tg = tg
                tg.start_soon(self._balance_loop, tg)
                task_status.started()
                await self._stop_requested.wait()
                await self._drain()
                tg.cancel_scope.cancel()
        finally:
            stop_renewing.set()
            thread.join(timeout=5)
            renewer.close()
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(3),
                contextlib.suppress(RedisError, OSError),
            ):
                await self.store.remove_worker(self.worker_id)
            self.stopped.set()

    _stop_requested: anyio.Event

    def prepare(self) -> None:
        """Create loop-bound primitives (call inside the event loop that will run the worker)."""
        self._stop_requested = anyio.Event()
        self._balance_done = anyio.Event()

    def request_stop(self) -> None:
        self.draining = True
        self._stop_requested.set()

    async def _drain(self) -> None:
        self.draining = True
        # Let the balancer finish its pass rather than cancel it: a lease acquisition cancelled
        # after Redis ran it would leave a lease nobody releases until it expires.
        with anyio.move_on_after(10):
            await self._balance_done.wait()
        for runner in list(self.runners.values()):
            runner.stop()
        with anyio.move_on_after(self.config.drain_timeout):
            await self.activities.drain(self.config.drain_timeout)
            while self.runners:
                for runner in list(self.runners.values()):
                    runner.stop()
                await anyio.sleep(0.01)

    def _renew_thread(self, renewer: SyncLeaseRenewer, stop: threading.Event) -> None:
        interval = self.config.renew_interval_ms / 1000
        while not stop.wait(interval):
            self.renew_all(renewer)

    async def _balance_loop(self, tg: anyio.abc.TaskGroup) -> None:
        try:
            while not self.draining:
                try:
                    await self._balance_once(tg)
                except (RedisError, OSError) as exc:
                    log.warning("balancing failed: %s", exc)
                self.last_balance = time.monotonic()
                with anyio.move_on_after(self.config.balance_interval_ms / 1000):
                    await self._stop_requested.wait()
        finally:
            self._balance_done.set()

    async def _balance_once(self, tg: anyio.abc.TaskGroup) -> None:
        info = {
            "host": socket.gethostname(),
            "pid": str(os.getpid()),
            "slots": str(self.config.concurrency),
            "slots_used": str(self.activities.slots_used),
            "partitions": ",".join(str(p) for p in self.owned_partitions()),
            "started": self._started_ms,
            "heartbeat": str(int(time.time() * 1000)),
        }
        live = await self.store.heartbeat(self.worker_id, info, self.config.heartbeat_ttl_ms)
        if self.worker_id not in live:
            live.append(self.worker_id)
        holders = await self.store.lease_holders()
        mine = {p for p in range(self.store.partitions) if _rendezvous(p, live) == self.worker_id}
        owned = set(self.owned_partitions())
        for p in owned - mine:
            runner = self.runners.get(p)
            if runner is not None:
                runner.stop()  # hand over to the worker it now belongs to
        for p, (holder, _) in enumerate(holders):
            if self.draining:
                break
            if holder is not None or p in owned or p in self.runners:
                self._free_ticks.pop(p, None)
                continue
            self._free_ticks[p] = self._free_ticks.get(p, 0) + 1
            # our own partitions at once; others only if their assignee leaves them free for long
            if p in mine or self._free_ticks[p] > 5:
                lease = await self.store.acquire_lease(
                    p, self.worker_id, uuid.uuid4().hex, self.config.lease_ttl_ms
                )
                if lease is None:
                    continue
                self._free_ticks.pop(p, None)
                self._grant(p, lease)
                self.metrics.lease_event("acquired")
                runner = PartitionRunner(self, p, lease)
                self.runners[p] = runner
                tg.start_soon(self._run_partition, runner)
        self.metrics.partitions_owned(len(self.owned_partitions()))

    async def _run_partition(self, runner: PartitionRunner) -> None:
        try:
            await runner.run()
        except Exception:
            log.exception("partition %d loop crashed", runner.index)
        finally:
            self.runners.pop(runner.index, None)
            self.cache_evict_partition(runner.index)
            with self._lock:
                lease = self._leases.pop(runner.index, None)
                self._deadlines.pop(runner.index, None)
            if lease is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(3):
                    try:
                        if await self.store.release_lease(runner.index, lease):
                            self.metrics.lease_event("released")
                    except (RedisError, OSError):
                        pass
