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
from collections.abc import Callable
from typing import Any

import anyio
from redis.exceptions import RedisError

from .._config import WorkerConfig
from .._core.context import OrchestrationContext
from .._core.registry import Registry, name_of
from .._store.store import LeaseRenewer, Store, SyncLeaseRenewer
from .._store.workitems import WorkItemStore
from .activities import ActivityRunner
from .cache import InstanceCache
from .capabilities import CapabilityView
from .clock import Clock
from .entity_step import EntityHalf
from .instances import Instance
from .leases import LeaseTable
from .orchestration_step import OrchestrationHalf
from .partition import PartitionRunner
from .remote import RemoteOrchestrations
from .telemetry import Telemetry
from .work_runner import WorkRunner

log = logging.getLogger("durable.worker")

#: the worker ids of ``durable sidecar`` processes start with this
SIDECAR_PREFIX = "sidecar-"


def _score(worker: str, partition: int) -> bytes:
    return hashlib.blake2b(f"{worker}/{partition}".encode(), digest_size=8).digest()


def _assignment(partitions: int, workers: list[str]) -> dict[int, str]:
    """Partition -> the worker meant to own it: rendezvous hashing capped at each worker's share.

    Plain rendezvous hashing gives each partition its top-scoring worker; with 32 partitions and
    8 workers that leaves the busiest worker with about twice its share (and often a worker with
    none). The cap gives every worker floor(P / W) partitions or one more, while each partition
    still goes to the best-scoring worker with room, so a worker joining or leaving moves few
    partitions. Every worker computes the same answer from the same list of live workers (the
    order of the list does not matter); leases settle any disagreement while the lists differ.
    """
    share, extra = divmod(partitions, len(workers))  # each gets `share`, `extra` of them one more
    counts = dict.fromkeys(workers, 0)
    out: dict[int, str] = {}
    for p in range(partitions):
        for w in sorted(workers, key=lambda w: _score(w, p), reverse=True):
            if counts[w] < share or (counts[w] == share and extra > 0):
                if counts[w] == share:
                    extra -= 1
                counts[w] += 1
                out[p] = w
                break
    return out


class Runtime:
    """Everything a running worker shares between its loops; it builds each loop with the
    collaborators that loop needs, and no loop refers back to it."""

    def __init__(
        self,
        store: Store,
        url: str,
        registry: Registry,
        config: WorkerConfig,
        *,
        clock: Clock | None = None,
        renewer: Callable[[], LeaseRenewer] | None = None,
        always_replay: bool = False,
    ) -> None:
        """``clock``, ``renewer`` and ``always_replay`` are for a test environment: its own clock,
        lease renewal over its own connection, and every step replayed from the first event with
        strict comparison (no replay cache)."""
        self.store = store
        store.direct = config.direct_delivery and not store.cluster
        self.url = url
        self.registry = registry
        self.config = config
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.metrics = Telemetry()
        self.clock = clock or Clock()
        self._renewer = renewer or self._url_renewer
        self.leases = LeaseTable(config.lease_ttl_ms, self.metrics, self._stop_runner)
        cache_size = 0 if always_replay else config.cache_size
        self.cache: InstanceCache[Instance] = InstanceCache(cache_size, self.metrics)
        self.caps = CapabilityView(
            self.clock.now_ms, config.missing_code_grace_ms, registry.capabilities(), store.capabilities
        )
        self.entities = EntityHalf(store=store, registry=registry, metrics=self.metrics, caps=self.caps)
        #: instances whose code runs in remote executors (Durable Task SDK workers via the sidecar)
        self.remote = RemoteOrchestrations(WorkItemStore(store), registry)
        self.entities.routes = self.remote.routes
        self.orchestrations = OrchestrationHalf(
            store=store,
            registry=registry,
            config=config,
            metrics=self.metrics,
            cache=self.cache,
            entities=self.entities,
            context_factory=OrchestrationContext,
            name_of=name_of,
            caps=self.caps,
            remote=self.remote,
            strict_replay=always_replay,
        )
        #: False: this process runs no activities of its own (``durable sidecar``)
        self.run_activities = True
        self.runners: dict[int, PartitionRunner] = {}
        self.draining = False
        self.stopped = anyio.Event()
        self.activities = ActivityRunner(
            store=store,
            registry=registry,
            config=config,
            metrics=self.metrics,
            clock=self.clock,
            consumer=self.worker_id,
            caps=self.caps,
        )
        self.work = WorkRunner(
            store=store,
            registry=registry,
            config=config,
            caps=self.caps,
            consumer=self.worker_id,
            dedup=(self.entities.dedup_window, self.entities.dedup_seconds),
        )
        self._free_ticks: dict[int, int] = {}
        self.last_balance = time.monotonic()
        self._started_ms = str(int(time.time() * 1000))

    def _url_renewer(self) -> LeaseRenewer:
        return SyncLeaseRenewer(self.url, self.store.hub, cluster=self.store.cluster)

    def now_ms(self) -> int:
        """Redis-clock milliseconds (estimated)."""
        return self.clock.now_ms()

    def owned_partitions(self) -> list[int]:
        return self.leases.owned()

    def lease_valid(self, index: int) -> bool:
        return self.leases.valid(index)

    def _stop_runner(self, index: int) -> None:
        runner = self.runners.get(index)
        if runner is not None:
            runner.stopping = True

    def _is_draining(self) -> bool:
        return self.draining

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
            self.clock.observe(await self.store.redis_time_ms())
        stop_renewing = threading.Event()
        renewer = self._renewer()
        thread = threading.Thread(
            target=self._renew_thread,
            args=(renewer, stop_renewing),
            name="durable-lease-renewal",
            daemon=True,
        )
        thread.start()
        try:
            async with anyio.create_task_group() as tg:
                if self.run_activities:  # a process that runs code of its own
                    await tg.start(self.activities.run)
                    await tg.start(self.work.run)
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
            self.work.stop_reading()
            await self.activities.drain(self.config.drain_timeout)
            while self.runners:
                for runner in list(self.runners.values()):
                    runner.stop()
                await anyio.sleep(0.01)

    def _renew_thread(self, renewer: LeaseRenewer, stop: threading.Event) -> None:
        interval = self.config.renew_interval_ms / 1000
        while not stop.wait(interval):
            self.leases.renew_all(renewer)

    async def _balance_loop(self, tg: anyio.abc.TaskGroup) -> None:
        try:
            while not self.draining:
                try:
                    await self._balance_once(tg)
                except (RedisError, OSError) as exc:
                    log.warning("balancing failed: %s", exc)
                except Exception as exc:
                    # the next pass retries; one bad pass must never take the worker down (redis-py
                    # can raise AttributeError on a connection torn down under it)
                    log.warning("balancing failed: %r", exc)
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
            "caps": "\n".join(sorted(self.caps.own)),
        }
        beat = await self.store.heartbeat(
            self.worker_id, info, self.config.heartbeat_ttl_ms, sorted(self.caps.own)
        )
        self.caps.update(beat.caps)
        live = beat.live
        if self.worker_id not in live:
            live.append(self.worker_id)
        holders = await self.store.lease_holders()
        # a sidecar runs no code of its own: where workers that do are live, they own the partitions
        owners = [w for w in live if not w.startswith(SIDECAR_PREFIX)] or live
        mine = {p for p, w in _assignment(self.store.partitions, owners).items() if w == self.worker_id}
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
                self.leases.grant(p, lease)
                runner = PartitionRunner(
                    p,
                    lease,
                    store=self.store,
                    config=self.config,
                    clock=self.clock,
                    leases=self.leases,
                    cache=self.cache,
                    metrics=self.metrics,
                    halves=(self.orchestrations, self.entities),
                    draining=self._is_draining,
                )
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
            self.cache.clear_partition(runner.index, drop=True)
            lease = self.leases.take(runner.index)
            if lease is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(3):
                    try:
                        if await self.store.release_lease(runner.index, lease):
                            self.metrics.lease_event("released")
                    except Exception as exc:  # best effort: an unreleased lease expires on its own
                        log.debug("partition %d: releasing the lease failed: %r", runner.index, exc)
