"""Purging finished instances from a partition's owner: retention, and purge requests.

Both run in bounded batches between the partition's steps (one batch per loop iteration), so a
step never waits for more than one batch. A batch reads at most :data:`BATCH` candidates and
removes the terminal ones with one fenced script (``PURGE_BATCH``).

* **Retention** (``WorkerConfig.retention``): instances whose finish time, in the partition's
  finished index, is older than the retention are purged, oldest first.
* **Requests** (``purge_orchestrations``): a request message reaches every partition; its owner
  stores it in the partition state (inside the step that consumes it, so it survives a crash or a
  change of owner), walks the creation-time index in the requested range batch by batch with a
  cursor kept in that state, then answers with its count and forgets the request.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from .._store import lifecycle as store_lifecycle

if TYPE_CHECKING:
    from .._config import WorkerConfig
    from .._store.store import Store
    from .cache import InstanceCache
    from .clock import Clock
    from .instances import Instance
    from .step import Message, StepState
    from .telemetry import Telemetry

log = logging.getLogger("durable.purge")

#: instances examined per batch
BATCH = 100
#: partition state fields holding purge requests: "purge:<request id>"
JOB_PREFIX = "purge:"
_TERMINAL = ("COMPLETED", "FAILED", "TERMINATED")


@dataclass
class PurgeJob:
    """A purge request being worked through by one partition (kept in its state as JSON)."""

    rid: str
    statuses: list[str] | None = None
    name: str | None = None
    low: int | None = None
    high: int | None = None
    #: cursor: the creation time reached, and how many kept instances at that time were seen
    score: int | None = None
    skip: int = 0
    count: int = 0
    done: bool = False

    @property
    def field(self) -> str:
        return JOB_PREFIX + self.rid

    def encode(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if k != "rid"}, separators=(",", ":"))

    @classmethod
    def decode(cls, rid: str, text: str) -> PurgeJob:
        data = json.loads(text)
        return cls(rid=rid, **{k: data[k] for k in data if k in cls.__dataclass_fields__ and k != "rid"})

    @classmethod
    def from_message(cls, msg: Message) -> PurgeJob | None:
        rid = msg.get("rid")
        if not isinstance(rid, str) or not rid:
            return None
        statuses = msg.get("status")
        return cls(
            rid=rid,
            statuses=[str(s) for s in statuses] if isinstance(statuses, list) else None,
            name=msg.get("name") if isinstance(msg.get("name"), str) else None,
            low=msg.get("from") if isinstance(msg.get("from"), int) else None,
            high=msg.get("to") if isinstance(msg.get("to"), int) else None,
        )

    def matches(self, cand: store_lifecycle.Candidate) -> bool:
        return (
            cand.terminal
            and (self.statuses is None or cand.status in self.statuses)
            and (self.name is None or cand.name == self.name)
        )


def retention_interval(retention_ms: int) -> float:
    """Seconds between retention passes: a quarter of the retention, within [0.2 s, 60 s]."""
    return min(max(retention_ms / 4000, 0.2), 60.0)


class PartitionPurger:
    """The purge work of one owned partition."""

    def __init__(
        self,
        index: int,
        *,
        store: Store,
        config: WorkerConfig,
        clock: Clock,
        metrics: Telemetry,
        cache: InstanceCache[Instance],
    ) -> None:
        self.index = index
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.cache = cache
        self.retention_ms = int(config.retention.total_seconds() * 1000) if config.retention else None
        self.jobs: dict[str, PurgeJob] = {}
        self._next_retention = time.monotonic()
        self._backoff_until = 0.0
        self._failures = 0

    # -- requests ------------------------------------------------------------------------------
    def load(self, state: dict[str, str]) -> None:
        """The requests recorded in the partition state (after taking the partition over)."""
        self.jobs = {}
        for key, value in state.items():
            if key.startswith(JOB_PREFIX):
                rid = key[len(JOB_PREFIX) :]
                try:
                    self.jobs[rid] = PurgeJob.decode(rid, value)
                except (ValueError, TypeError) as exc:
                    log.warning(
                        "partition %d: dropping unreadable purge request %s: %s", self.index, rid, exc
                    )

    def accept(self, msg: Message, step: StepState) -> PurgeJob | None:
        """Record a request in ``step``'s commit; :meth:`add` it once the commit succeeded."""
        job = PurgeJob.from_message(msg)
        if job is None or job.rid in self.jobs:
            return None
        step.plan.state[job.field] = job.encode()
        return job

    def add(self, jobs: list[PurgeJob]) -> None:
        for job in jobs:
            self.jobs.setdefault(job.rid, job)

    # -- scheduling ----------------------------------------------------------------------------
    def due_in_ms(self) -> int | None:
        """Milliseconds until there is purge work (0: now), None for none."""
        now = time.monotonic()
        if now < self._backoff_until:
            return int((self._backoff_until - now) * 1000) + 1
        if self.jobs:
            return 0
        if self.retention_ms is None:
            return None
        return max(int((self._next_retention - now) * 1000), 0)

    async def run_once(self, lease: str) -> None:
        """One batch of purge work (FencedError propagates; Redis errors back off)."""
        try:
            if self.jobs:
                await self._job_batch(lease, next(iter(self.jobs.values())))
            elif self.retention_ms is not None and time.monotonic() >= self._next_retention:
                await self._retention_batch(lease, self.retention_ms)
            self._failures = 0
        except (RedisError, OSError) as exc:
            self._failures += 1
            self._backoff_until = time.monotonic() + min(0.1 * 2**self._failures, 10.0)
            log.warning("partition %d: purging failed (%s); retrying later", self.index, exc)

    # -- batches -------------------------------------------------------------------------------
    async def _retention_batch(self, lease: str, retention_ms: int) -> None:
        cutoff = self.clock.now_ms() - retention_ms
        ids = await store_lifecycle.finished_before(self.store, self.index, cutoff, BATCH)
        if ids:
            cands = await store_lifecycle.read_candidates(self.store, self.index, ids)
            purged = await store_lifecycle.purge_batch(
                self.store, self.index, lease, [(c, c.status or "") for c in cands]
            )
            self._purged(purged, "retention")
        if len(ids) < BATCH:
            self._next_retention = time.monotonic() + retention_interval(retention_ms)

    async def _job_batch(self, lease: str, job: PurgeJob) -> None:
        store, index = self.store, self.index
        if job.done:
            await store_lifecycle.reply_purge(store, job.rid, index, job.count)
            await store_lifecycle.purge_batch(store, index, lease, [], job.field, "")
            self.jobs.pop(job.rid, None)
            log.info("partition %d: purge request %s done: %d purged", index, job.rid, job.count)
            return
        low = job.low if job.score is None else job.score
        page = await store_lifecycle.index_page(store, index, low, job.high, job.skip, BATCH)
        cands = await store_lifecycle.read_candidates(store, index, [iid for iid, _ in page])
        chosen = [(c, c.status or "") for c in cands if job.matches(c)]
        assumed = {c.iid for c, _ in chosen}
        before = (job.score, job.skip, job.count)
        self._advance(job, page, assumed)
        job.count += len(assumed)
        purged = await store_lifecycle.purge_batch(store, index, lease, chosen, job.field, job.encode())
        if len(purged) != len(assumed):  # some changed meanwhile: count and step what happened
            job.score, job.skip, job.count = before
            self._advance(job, page, set(purged))
            job.count += len(purged)
        self._purged(purged, "request")

    @staticmethod
    def _advance(job: PurgeJob, page: list[tuple[str, int]], purged: set[str]) -> None:
        if len(page) < BATCH:
            job.done = True
        if not page:
            return
        kept = [score for iid, score in page if iid not in purged]
        last = page[-1][1]
        at_last = sum(1 for score in kept if score == last)
        if job.score == last:
            job.skip += at_last
        else:
            job.score, job.skip = last, at_last

    def _purged(self, ids: list[str], reason: str) -> None:
        for iid in ids:
            self.cache.forget(self.index, iid)
        if ids:
            self.metrics.purged(reason, len(ids))
