"""Oracles of the chaos harness; none of them trusts the engine's own bookkeeping.

* :func:`validate_history` -- the history validator (dense event ids, dense task ids, at most one
  completion per scheduled task or timer, each after its scheduling event and of the matching kind,
  timestamps non-decreasing, exactly one ExecutionCompleted and nothing after it).
* :class:`Ledger` -- the side-effect ledger written by the activities themselves.
* :class:`Auditor` -- samples partition leases, inbox cursors, worker ownership claims and
  histories while the run goes on, and checks what can be observed from outside the commit script.

Redis keys are spelled out here from the documented layout (``docs`` / ``durable/_keys.py``) rather
than imported, so a layout change that breaks the format shows up as a failure.
"""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import redis
import redis.asyncio as aredis

SCHEDULING = {
    "TaskScheduled",
    "TimerCreated",
    "SubOrchestrationCreated",
    "EventSent",
    "EntitySignaled",
    "EntityCalled",
    "EntityLockRequested",
    "EntityUnlocked",
}
COMPLETES = {  # completion kind -> the scheduling kind it completes
    "TaskCompleted": "TaskScheduled",
    "TaskFailed": "TaskScheduled",
    "TimerFired": "TimerCreated",
    "SubOrchestrationCompleted": "SubOrchestrationCreated",
    "SubOrchestrationFailed": "SubOrchestrationCreated",
}
TERMINAL = {"COMPLETED", "FAILED", "TERMINATED"}


# -- key layout ----------------------------------------------------------------------------------
class Keys:
    def __init__(self, hub: str, partitions: int) -> None:
        self.hub = hub
        self.partitions = partitions

    def tag(self, p: int) -> str:
        return f"durable:{{{self.hub}:{p:02d}}}"

    def partition_of(self, instance_id: str) -> int:
        return zlib.crc32(instance_id.encode()) % self.partitions

    def instance(self, iid: str) -> str:
        return f"{self.tag(self.partition_of(iid))}:i:{iid}"

    def history(self, iid: str) -> str:
        return f"{self.tag(self.partition_of(iid))}:h:{iid}"

    def lease(self, p: int) -> str:
        return f"{self.tag(p)}:lease"

    def state(self, p: int) -> str:
        return f"{self.tag(p)}:state"

    def inbox(self, p: int) -> str:
        return f"{self.tag(p)}:inbox"

    def outbox(self, p: int) -> str:
        return f"{self.tag(p)}:outbox"

    def dlq(self, p: int) -> str:
        return f"{self.tag(p)}:dlq"

    def audit(self, p: int) -> str:
        """The commit audit stream a test build of the commit script would write (see docs)."""
        return f"{self.tag(p)}:audit"

    @property
    def tasks(self) -> str:
        return f"durable:{{{self.hub}}}:tasks"

    @property
    def tasks_dlq(self) -> str:
        return f"durable:{{{self.hub}}}:tasks:dlq"

    @property
    def workers(self) -> str:
        return f"durable:{{{self.hub}}}:workers"

    def worker(self, worker_id: str) -> str:
        return f"durable:{{{self.hub}}}:worker:{worker_id}"


def unpack(data: bytes | None) -> Any:
    if data is None or data == b"":
        return None
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


#: A large payload kept outside the history: this prefix, then the Redis key that holds it
#: (0xc1 never starts valid msgpack).
BLOB_REF = b"\xc1blob:"


def payload(client: redis.Redis, data: bytes | None) -> Any:
    """Decode a payload field, following a large-payload reference; LookupError if it dangles."""
    if isinstance(data, bytes) and data.startswith(BLOB_REF):
        key = data[len(BLOB_REF) :].decode()
        stored = client.get(key)
        if stored is None:
            raise LookupError(f"large payload {key} is missing")
        data = stored
    return unpack(data)


def stream_id(value: str | bytes | None) -> tuple[int, int]:
    if value is None:
        return (0, 0)
    if isinstance(value, bytes):
        value = value.decode()
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


# -- the history validator -----------------------------------------------------------------------
def validate_history(events: list[dict[str, Any]], status: str | None) -> list[str]:
    """Problems with one execution's history (empty list: valid)."""
    problems: list[str] = []
    if not events:
        return ["empty history"]
    eids = [e.get("eid") for e in events]
    if eids != list(range(len(events))):
        problems.append(f"event ids not dense: {eids[:10]}...")
    if (
        events[0].get("k") != "OrchestratorStarted"
        or len(events) < 2
        or events[1].get("k") != "ExecutionStarted"
    ):
        problems.append("history does not begin with OrchestratorStarted, ExecutionStarted")
    last_ts = 0
    scheduled: dict[int, str] = {}
    completed: Counter[int] = Counter()
    ends: list[int] = []
    for i, e in enumerate(events):
        kind = e.get("k")
        ts = int(e.get("ts") or 0)
        if ts < last_ts:
            problems.append(f"event {i} ({kind}) goes back in time")
        last_ts = max(last_ts, ts)
        if ends:
            problems.append(f"event {i} ({kind}) after ExecutionCompleted")
        if kind in SCHEDULING:
            tid = e.get("tid")
            if tid in scheduled:
                problems.append(f"task id {tid} scheduled twice")
            scheduled[tid] = kind
        elif kind in COMPLETES:
            tid = e.get("tid")
            if tid not in scheduled:
                problems.append(f"{kind}({tid}) without an earlier scheduling event")
            elif scheduled[tid] != COMPLETES[kind]:
                problems.append(f"{kind}({tid}) completes a {scheduled[tid]}")
            completed[tid] += 1
            if completed[tid] == 2:
                problems.append(f"task {tid} completed twice")
        elif kind == "ExecutionCompleted":
            ends.append(i)
    if sorted(t for t in scheduled if isinstance(t, int)) != list(range(len(scheduled))):
        problems.append(f"task ids not dense: {sorted(scheduled)[:10]}")
    if status in TERMINAL:
        if len(ends) != 1:
            problems.append(f"status {status} but {len(ends)} ExecutionCompleted events")
        elif events[ends[0]].get("status") != status:
            problems.append(f"status {status} but history ends with {events[ends[0]].get('status')}")
    return problems


def shape(events: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    """(kind, name) of the scheduling events, in order."""
    out = []
    for e in events:
        if e.get("k") in SCHEDULING:
            out.append((e["k"], e.get("name") or e.get("op")))
    return out


# -- the side-effect ledger ----------------------------------------------------------------------
@dataclass
class Ledger:
    """Activity executions recorded by the activities (key, logical id, attempt, pid)."""

    executions: Counter[str] = field(default_factory=Counter)  # idempotency key -> executions
    logical_of: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    keys_of: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    attempts: Counter[int] = field(default_factory=Counter)
    pids: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, client: redis.Redis, key: str) -> Ledger:
        led = cls()
        total = int(client.llen(key))
        for start in range(0, total, 50_000):
            for raw in client.lrange(key, start, start + 49_999):
                idem, logical_id, attempt, pid = raw.decode().split("\t")
                led.executions[idem] += 1
                led.logical_of[idem].add(logical_id)
                led.keys_of[logical_id].add(idem)
                led.attempts[int(attempt)] += 1
                led.pids.add(pid)
        return led

    @property
    def total(self) -> int:
        return sum(self.executions.values())

    @property
    def same_task_reruns(self) -> int:
        """Executions beyond the first of the same task (same idempotency key)."""
        return sum(n - 1 for n in self.executions.values())

    @property
    def extra_schedules(self) -> int:
        """Logical activities scheduled under more than one idempotency key (re-run steps)."""
        return sum(len(keys) - 1 for keys in self.keys_of.values())


# -- the live auditor ----------------------------------------------------------------------------
@dataclass
class Finding:
    kind: str
    detail: str
    at: float = field(default_factory=time.monotonic)


class Auditor:
    """Samples the hub from outside while faults run.

    ``strict`` (appendfsync always, or a Redis the harness never kills): every value a reply
    showed is durable, so a cursor may never go back, a lease epoch never repeat, and a history
    snapshot must stay a prefix of every later read of the same execution. Without ``strict``
    (everysec) Redis may lose its last second on kill -9; regressions across a restart are then
    recorded as rollbacks, not violations.
    """

    def __init__(self, url: str, keys: Keys, *, strict: bool, interval: float = 0.05) -> None:
        self.url = url
        self.keys = keys
        self.strict = strict
        self.interval = interval
        self.generation = 0  # bumped by the harness after each Redis restart
        self.cursor: dict[int, tuple[tuple[int, int], int]] = {}
        self.lease: dict[int, tuple[str, int, int]] = {}  # p -> (value, epoch, generation)
        self.snapshots: dict[str, tuple[str, list[bytes], int]] = {}
        self.samples = 0
        self.history_samples = 0
        self.cursor_moves = 0
        self.lease_changes = 0
        self.overlapping_claims = 0
        self.violations: list[Finding] = []
        self.rollbacks: list[Finding] = []
        self.errors = 0

    def _regression(self, kind: str, detail: str, since_generation: int) -> None:
        if self.strict or since_generation == self.generation:
            self.violations.append(Finding(kind, detail))
        else:
            self.rollbacks.append(Finding(kind, detail))

    async def run(self, stop: asyncio.Event, candidates: Callable[[], list[str]]) -> None:
        client = aredis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
        rng = random.Random(0)
        next_history = 0.0
        try:
            while not stop.is_set():
                try:
                    await self._sample(client)
                    if time.monotonic() >= next_history:
                        next_history = time.monotonic() + 0.5
                        ids = candidates()
                        for iid in rng.sample(ids, min(4, len(ids))):
                            await self._sample_history(client, iid)
                except (redis.RedisError, OSError):
                    self.errors += 1
                    await asyncio.sleep(0.2)
                await asyncio.sleep(self.interval)
        finally:
            await client.aclose()

    async def _sample(self, client: aredis.Redis) -> None:
        gen = self.generation
        pipe = client.pipeline(transaction=False)
        parts = range(self.keys.partitions)
        for p in parts:
            pipe.get(self.keys.lease(p))
            pipe.hget(self.keys.state(p), "cursor")
        raw = await pipe.execute()
        if gen != self.generation:
            return  # Redis restarted while we sampled
        self.samples += 1
        for p in parts:
            lease, cursor = raw[2 * p], raw[2 * p + 1]
            if cursor is not None:
                cur = stream_id(cursor)
                prev = self.cursor.get(p)
                if prev is not None and cur < prev[0]:
                    self._regression(
                        "cursor went back",
                        f"partition {p}: inbox cursor {prev[0]} -> {cur}",
                        prev[1],
                    )
                if prev is not None and cur != prev[0]:
                    self.cursor_moves += 1
                self.cursor[p] = (cur, gen)
            if lease is not None:
                value = lease.decode()
                epoch = int(value.split("|", 1)[0])
                prev_lease = self.lease.get(p)
                if prev_lease is not None and value != prev_lease[0]:
                    self.lease_changes += 1
                    if epoch <= prev_lease[1]:
                        self._regression(
                            "lease epoch reused",
                            f"partition {p}: lease {prev_lease[0]!r} followed by {value!r}",
                            prev_lease[2],
                        )
                self.lease[p] = (value, epoch, gen)
        if self.samples % 20 == 0:
            await self._sample_claims(client)

    async def _sample_claims(self, client: aredis.Redis) -> None:
        """Partitions two live workers both believe they own (normal for a moment after a lease
        moved under a paused or partitioned worker; fencing makes it harmless)."""
        live = await client.zrange(self.keys.workers, 0, -1)
        if not live:
            return
        pipe = client.pipeline(transaction=False)
        for w in live:
            pipe.hget(self.keys.worker(w.decode()), "partitions")
        claims: Counter[str] = Counter()
        for value in await pipe.execute():
            if value:
                claims.update(p for p in value.decode().split(",") if p)
        self.overlapping_claims += sum(1 for n in claims.values() if n > 1)

    async def _sample_history(self, client: aredis.Redis, iid: str) -> None:
        gen = self.generation
        pipe = client.pipeline(transaction=True)  # one slot: exec id and history read atomically
        pipe.hget(self.keys.instance(iid), "exec")
        pipe.lrange(self.keys.history(iid), 0, -1)
        exec_raw, history = await pipe.execute()
        if exec_raw is None or gen != self.generation:
            return
        self.history_samples += 1
        exec_id = exec_raw.decode()
        prev = self.snapshots.get(iid)
        if prev is not None and prev[0] == exec_id and history[: len(prev[1])] != prev[1]:
            self._regression(
                "history rewritten",
                f"{iid}: execution {exec_id} had {len(prev[1])} events, a later read differs in them",
                prev[2],
            )
        if sum(len(h) for h in history) < 200_000:
            self.snapshots[iid] = (exec_id, list(history), gen)


def check_audit_streams(client: redis.Redis, keys: Keys) -> tuple[int, list[Finding]]:
    """Check the commit audit streams, if the engine build writes them (none does by default).

    The proposed test-build hook: once the commit script has validated, it runs
    ``XADD <partition tag>:audit * lease <lease value> prev <prev cursor> new <new cursor>``; the
    timer promotion script may add ``kind promote lease <lease value>``. Per partition, the
    accepted commits must form one chain (each ``prev`` equals the ``new`` of the commit before),
    lease epochs must never go back, and one epoch must always carry the same lease string (no
    interleaved owners). Returns (entries checked, violations).
    """
    checked = 0
    found: list[Finding] = []
    for p in range(keys.partitions):
        last_new: str | None = None
        last_lease = ""
        owner_of: dict[int, str] = {}  # epoch -> the one lease string allowed to use it
        start = "-"
        while True:
            batch = client.xrange(keys.audit(p), start, "+", count=10_000)
            if not batch:
                break
            for eid, f in batch:
                checked += 1
                lease = f[b"lease"].decode()
                epoch = int(lease.split("|", 1)[0])
                if epoch < max(owner_of, default=-1) or owner_of.setdefault(epoch, lease) != lease:
                    detail = f"partition {p}: {lease!r} after {last_lease!r}"
                    found.append(Finding("audit: owners interleave", detail))
                last_lease = lease
                if f.get(b"kind", b"commit") != b"commit":
                    continue
                prev, new = f[b"prev"].decode(), f[b"new"].decode()
                if last_new is not None and prev != last_new:
                    found.append(
                        Finding(
                            "audit: chain broken", f"partition {p}: entry {eid!r} prev {prev} != {last_new}"
                        )
                    )
                last_new = new
            start = "(" + batch[-1][0].decode()
    return checked, found
