"""Read-only Redis queries of the ops HTTP API and the operator CLI.

The hub's state (partitions, workers, scaling, entities, metadata) is read through a
:class:`~durable._store.Store`; nothing here changes a key. Multi-key reads are pipelined (never
transactions), so they also work on Redis Cluster, where the keys of different partitions live in
different slots.

Facts about the Redis server(s) themselves (for ``durable doctor``) are read over a plain
connection to one server (never a cluster client, which cannot route keyless commands such as
INFO), with short timeouts and no retries.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import redis.asyncio as aredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

from .._core.registry import ANY_VERSION, capability
from .._core.serialization import unpack_record
from .keys import ACTIVITY_GROUP
from .store import Store

#: Timers due within this many seconds count as imminent work when recommending a worker count.
TIMER_HORIZON_SECONDS = 30
#: Default number of waiting work items one worker is expected to keep up with.
DEFAULT_TARGET_PER_WORKER = 100
#: When a partition's inbox was not trimmed, at most this many consumed entries are counted.
_CONSUMED_SCAN_LIMIT = 1000
#: Seconds allowed to connect to a server, and for each reply (plain connections of the CLI).
CONNECT_TIMEOUT_SECONDS = 5.0


def text(value: Any) -> str:
    """A Redis reply value as text (bytes decoded, None as "")."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _stream_ms(stream_id: str) -> int | None:
    try:
        return int(stream_id.split("-", 1)[0])
    except ValueError:
        return None


def parse_lease(value: str | None) -> tuple[int | None, str | None]:
    """Split a lease value ``epoch|worker|nonce`` into (epoch, worker id)."""
    if not value:
        return None, None
    parts = value.split("|")
    if len(parts) < 3:
        return None, value
    try:
        epoch: int | None = int(parts[0])
    except ValueError:
        epoch = None
    # worker ids never contain '|', but be lenient: everything between epoch and nonce
    return epoch, "|".join(parts[1:-1])


@dataclass
class PartitionInfo:
    """What the ops API reports about one partition."""

    partition: int
    owner: str | None
    epoch: int | None
    lease_ttl_ms: int | None
    cursor: str
    inbox_length: int
    backlog: int
    oldest_message_id: str | None
    oldest_age_seconds: float
    timers: int
    timers_due_soon: int
    instances: int
    entities: int
    #: instances whose next step waits for a worker with their orchestrator version
    waiting_for_version: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WaitingInstance:
    """An orchestration instance whose step waits for a worker with its version."""

    partition: int
    instance_id: str
    name: str
    #: the pinned version ("*": a start for any version of a name no live worker has)
    version: str
    since_ms: int


@dataclass
class ActivityQueueInfo:
    """The hub's activity task stream as seen by the consumer group."""

    length: int
    pending: int
    lag: int
    consumers: int
    group_exists: bool

    @property
    def backlog(self) -> int:
        """Tasks not finished yet: waiting for a worker (lag) plus running or unacked (pending)."""
        return self.lag + self.pending


@dataclass
class ScaleRecommendation:
    """Inputs and result of the worker-count recommendation of ``GET /v1/scale``."""

    partitions: int
    live_workers: int
    inbox_backlog: int
    activity_lag: int
    activity_pending: int
    timers_due_soon: int
    timer_horizon_seconds: int
    total_backlog: int
    target_per_worker: int
    recommended_workers: int
    per_partition_backlog: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


async def partition_count(store: Store) -> int:
    """The hub's partition count, read from its metadata (0 when the hub does not exist yet)."""
    if store.partitions:
        return store.partitions
    value = await store.redis.hget(store.keys.meta, "partitions")
    return int(value) if value else 0


async def hub_meta(store: Store) -> dict[str, str]:
    """The hub's metadata hash (partitions, format, created); empty when the hub does not exist."""
    raw = await store.redis.hgetall(store.keys.meta)
    return {text(k): text(v) for k, v in raw.items()}


async def redis_now_ms(store: Store) -> int:
    """The Redis server clock in milliseconds (timers are scored by it)."""
    return await store.redis_time_ms()


async def ping(store: Store) -> bool:
    """True when Redis answers PING."""
    return bool(await store.redis.ping())


async def partitions_info(
    store: Store,
    horizon_seconds: int = TIMER_HORIZON_SECONDS,
    only: Iterable[int] | None = None,
) -> list[PartitionInfo]:
    """Owner, lease TTL, inbox backlog, oldest waiting message and timers of every partition
    (or of the partitions in ``only``).

    ``inbox_length`` is the stream's XLEN; ``backlog`` counts only the entries after the
    partition's committed cursor: a step trims the inbox up to (and keeping) the last consumed
    entry, so that entry is not counted.
    """
    total = await partition_count(store)
    indices = list(range(total)) if only is None else sorted(i for i in set(only) if 0 <= i < total)
    count = len(indices)
    now = await store.redis_time_ms()
    due_until = now + horizon_seconds * 1000
    pipe = store.redis.pipeline(transaction=False)
    for i in indices:
        pk = store.partition_keys(i)
        pipe.get(pk.lease)
        pipe.pttl(pk.lease)
        pipe.hget(pk.state, "cursor")
        pipe.xlen(pk.inbox)
        pipe.zcard(pk.timers)
        pipe.zcount(pk.timers, "-inf", due_until)
        pipe.zcard(pk.instances)
        pipe.zcard(pk.entity_index)
    raw = await pipe.execute() if count else []
    per = 8
    cursors = [text(raw[i * per + 2]) or "0-0" for i in range(count)]
    pipe = store.redis.pipeline(transaction=False)
    for n, i in enumerate(indices):
        pk = store.partition_keys(i)
        # consumed entries still in the stream, and the oldest unconsumed one
        pipe.xrange(pk.inbox, "-", cursors[n], count=_CONSUMED_SCAN_LIMIT + 1)
        pipe.xrange(pk.inbox, f"({cursors[n]}", "+", count=1)
    ranges = await pipe.execute() if count else []
    waiting: dict[int, int] = {}
    for w in await waiting_for_version(store, indices, now):
        waiting[w.partition] = waiting.get(w.partition, 0) + 1
    out: list[PartitionInfo] = []
    for n, i in enumerate(indices):
        lease, ttl, _, xlen, timers, due, instances, entities = raw[n * per : (n + 1) * per]
        epoch, owner = parse_lease(text(lease) or None)
        consumed = 0 if cursors[n] == "0-0" else len(ranges[2 * n])
        backlog = max(int(xlen) - consumed, 0)
        first = ranges[2 * n + 1]
        oldest_id = text(first[0][0]) if first else None
        oldest_ms = _stream_ms(oldest_id) if oldest_id else None
        age = max((now - oldest_ms) / 1000, 0.0) if oldest_ms is not None else 0.0
        out.append(
            PartitionInfo(
                partition=i,
                owner=owner,
                epoch=epoch,
                lease_ttl_ms=int(ttl) if owner is not None and int(ttl) >= 0 else None,
                cursor=cursors[n],
                inbox_length=int(xlen),
                backlog=backlog,
                oldest_message_id=oldest_id,
                oldest_age_seconds=round(age, 3),
                timers=int(timers),
                timers_due_soon=int(due),
                instances=int(instances),
                entities=int(entities),
                waiting_for_version=waiting.get(i, 0),
            )
        )
    return out


async def waiting_for_version(
    store: Store, only: Iterable[int] | None = None, now_ms: int | None = None
) -> list[WaitingInstance]:
    """Instances (of every partition, or those in ``only``) whose step was sent to the workers of
    their version and that no live worker runs: no live heartbeat carries the capability."""
    total = await partition_count(store)
    indices = list(range(total)) if only is None else sorted(i for i in set(only) if 0 <= i < total)
    if not indices:
        return []
    now = await store.redis_time_ms() if now_ms is None else now_ms
    pipe = store.redis.pipeline(transaction=False)
    pipe.hgetall(store.keys.caps)
    for i in indices:
        pipe.hgetall(store.partition_keys(i).delegated)
    caps_raw, *rows = await pipe.execute()
    live = {text(k) for k, v in caps_raw.items() if int(v) > now}
    out: list[WaitingInstance] = []
    for i, row in zip(indices, rows, strict=True):
        for member, raw in row.items():
            try:
                name, version, since, _ = unpack_record(raw)
            except (ValueError, TypeError):
                continue
            if capability("o", str(name), None if version == ANY_VERSION else str(version)) in live:
                continue  # a live worker has it: the step runs (or has just run)
            out.append(WaitingInstance(i, text(member), str(name), str(version), int(since)))
    out.sort(key=lambda w: (w.partition, w.since_ms))
    return out


async def activity_queue(store: Store) -> ActivityQueueInfo:
    """Length, pending count and lag of the activity task stream's consumer group.

    Redis reports ``lag`` only from 7.0 on, and not at all once entries were deleted in a way
    it cannot account for; finished tasks are deleted from the stream, so the stream length
    minus the pending entries is then the number of tasks no worker has received yet.
    """
    key = store.keys.tasks
    pipe = store.redis.pipeline(transaction=False)
    pipe.xlen(key)
    pipe.xinfo_groups(key)
    try:
        length, groups = await pipe.execute()
    except ResponseError:
        # no such key: the stream does not exist yet (no worker ever started)
        return ActivityQueueInfo(length=0, pending=0, lag=0, consumers=0, group_exists=False)
    for raw_group in groups:
        group = {text(k): v for k, v in raw_group.items()}
        name = text(group.get("name"))
        if name != ACTIVITY_GROUP:
            continue
        pending = int(group.get("pending") or 0)
        lag_raw = group.get("lag")
        lag = int(lag_raw) if lag_raw is not None else max(int(length) - pending, 0)
        return ActivityQueueInfo(
            length=int(length),
            pending=pending,
            lag=lag,
            consumers=int(group.get("consumers") or 0),
            group_exists=True,
        )
    return ActivityQueueInfo(length=int(length), pending=0, lag=int(length), consumers=0, group_exists=False)


async def live_workers(store: Store) -> list[dict[str, Any]]:
    """Workers whose heartbeat has not expired, with the facts they published (newest first)."""
    now = await store.redis_time_ms()
    rows = await store.redis.zrangebyscore(store.keys.workers, f"({now}", "+inf", withscores=True)
    ids = [(text(member), int(score)) for member, score in rows]
    pipe = store.redis.pipeline(transaction=False)
    for worker_id, _ in ids:
        pipe.hgetall(store.keys.worker(worker_id))
    hashes = await pipe.execute() if ids else []
    out: list[dict[str, Any]] = []
    for (worker_id, expires), fields in zip(ids, hashes, strict=True):
        facts = {text(k): text(v) for k, v in fields.items()}
        partitions = [int(p) for p in facts.get("partitions", "").split(",") if p.strip().isdigit()]
        out.append(
            {
                "worker_id": worker_id,
                "expires_at_ms": expires,
                "expires_in_ms": max(expires - now, 0),
                "host": facts.get("host"),
                "pid": _int_or_none(facts.get("pid")),
                "slots": _int_or_none(facts.get("slots")),
                "slots_used": _int_or_none(facts.get("slots_used")),
                "partitions": sorted(partitions),
                "heartbeat_at_ms": _int_or_none(facts.get("started")),
                "capabilities": [c for c in facts.get("caps", "").split("\n") if c],
                "facts": facts,
            }
        )
    return out


async def is_worker_registered(store: Store, worker_id: str) -> bool:
    """True when ``worker_id`` has a live heartbeat entry (it has balanced at least once)."""
    score = await store.redis.zscore(store.keys.workers, worker_id)
    if score is None:
        return False
    return int(score) > await store.redis_time_ms()


def _int_or_none(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        return None


def recommend_workers(total_backlog: int, target_per_worker: int, partitions: int) -> int:
    """clamp(ceil(total_backlog / target_per_worker), 1, partitions)."""
    if target_per_worker < 1:
        raise ValueError("target_per_worker must be at least 1")
    wanted = math.ceil(total_backlog / target_per_worker)
    return max(1, min(wanted, max(partitions, 1)))


async def scale_recommendation(
    store: Store,
    target_per_worker: int = DEFAULT_TARGET_PER_WORKER,
    horizon_seconds: int = TIMER_HORIZON_SECONDS,
) -> ScaleRecommendation:
    """Recommend a worker count from inbox backlog, activity lag and imminent timers."""
    parts = await partitions_info(store, horizon_seconds)
    queue = await activity_queue(store)
    workers = await live_workers(store)
    inbox = sum(p.backlog for p in parts)
    due = sum(p.timers_due_soon for p in parts)
    total = inbox + queue.lag + queue.pending + due
    return ScaleRecommendation(
        partitions=len(parts),
        live_workers=len(workers),
        inbox_backlog=inbox,
        activity_lag=queue.lag,
        activity_pending=queue.pending,
        timers_due_soon=due,
        timer_horizon_seconds=horizon_seconds,
        total_backlog=total,
        target_per_worker=target_per_worker,
        recommended_workers=recommend_workers(total, target_per_worker, len(parts)),
        per_partition_backlog=[p.backlog for p in parts],
    )


def split_entity_id(entity_id: str) -> tuple[str, str]:
    """``@name@key`` -> (name, key); raises ValueError for anything else."""
    if not entity_id.startswith("@") or "@" not in entity_id[1:]:
        raise ValueError(f"not an entity id: {entity_id!r}")
    name, key = entity_id[1:].split("@", 1)
    return name, key


async def list_entities(store: Store, name: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Entity ids from every partition's entity index, most recently modified first."""
    count = await partition_count(store)
    pipe = store.redis.pipeline(transaction=False)
    for i in range(count):
        # an entity name filter needs more candidates, the index is scored by time only
        scan = limit if name is None else max(limit * 4, 1000)
        pipe.zrevrangebyscore(
            store.partition_keys(i).entity_index, "+inf", "-inf", start=0, num=scan, withscores=True
        )
    rows: list[tuple[str, int]] = []
    for result in await pipe.execute():
        rows.extend((text(member), int(score)) for member, score in result)
    rows.sort(key=lambda r: r[1], reverse=True)
    out: list[dict[str, Any]] = []
    for entity_id, modified in rows:
        try:
            ent_name, key = split_entity_id(entity_id)
        except ValueError:
            continue
        if name is not None and ent_name != name.lower():
            continue
        out.append({"entity_id": entity_id, "name": ent_name, "key": key, "last_modified_at_ms": modified})
        if len(out) >= limit:
            break
    return out


# -- the Redis servers themselves (durable doctor) ----------------------------------------------
def plain_client(url: str) -> Any:
    """A client of the one server at ``url`` (never a cluster client): short timeouts, no retries."""
    return aredis.Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        socket_timeout=CONNECT_TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 0),
    )


async def cluster_overview(url: str) -> tuple[str, list[str]]:
    """``CLUSTER INFO`` text and the healthy primaries (``host:port``) seen by the node at ``url``."""
    probe = plain_client(url)
    try:
        info = text(await probe.execute_command("CLUSTER", "INFO"))
        primaries = cluster_primaries(text(await probe.execute_command("CLUSTER", "NODES")))
    finally:
        with anyio.CancelScope(shield=True):
            await probe.aclose()
    return info, primaries


@dataclass
class NodeFacts:
    """What doctor reads from one Redis server (a cluster primary, or the standalone server)."""

    address: str
    info: dict[str, Any] = field(default_factory=dict)
    appendfsync: str | None = None
    error: str | None = None

    @property
    def version(self) -> tuple[int, ...]:
        return version_tuple(text(self.info.get("redis_version")))


def version_tuple(value: str) -> tuple[int, ...]:
    """``"7.2.4"`` -> ``(7, 2, 4)``; stops at the first part without digits."""
    out: list[int] = []
    for part in value.split("."):
        digits = "".join(c for c in part if c.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def node_url(url: str, address: str) -> str:
    """``url`` pointed at ``host:port`` (credentials, scheme and database kept)."""
    parts = urlsplit(url)
    host, _, port = address.rpartition(":")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@{host}:{port}" if auth else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def cluster_primaries(nodes_text: str) -> list[str]:
    """``host:port`` of the healthy primaries in ``CLUSTER NODES`` output."""
    out: list[str] = []
    for line in nodes_text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        flags = fields[2].split(",")
        if "master" not in flags or "fail" in flags or "noaddr" in flags:
            continue
        address = fields[1].split("@", 1)[0]
        if address.rpartition(":")[0]:
            out.append(address)
    return sorted(out)


async def read_node(url: str, address: str) -> NodeFacts:
    """INFO and ``appendfsync`` of the server at ``url``; a failure is recorded, not raised."""
    facts = NodeFacts(address)
    client = plain_client(url)
    try:
        facts.info = dict(await client.info())
        try:
            config: Any = await client.config_get("appendfsync")
            value = config.get("appendfsync", config.get(b"appendfsync"))
            facts.appendfsync = text(value) or None
        except RedisError:
            facts.appendfsync = None  # CONFIG renamed or not permitted (managed Redis)
    except (RedisError, OSError) as exc:
        facts.error = str(exc) or type(exc).__name__
    finally:
        with anyio.CancelScope(shield=True):
            await client.aclose()
    return facts


def _id_pair(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms or 0), int(seq or 0)


async def next_timers(store: Store) -> list[tuple[int, int | None]]:
    """(partition, due time of its next timer or None) for every partition."""
    total = await partition_count(store)
    pipe = store.redis.pipeline(transaction=False)
    for i in range(total):
        pipe.zrange(store.partition_keys(i).timers, 0, 0, withscores=True)
    rows = await pipe.execute() if total else []
    return [(i, int(row[0][1]) if row else None) for i, row in enumerate(rows)]


async def pending_work(store: Store, caps: Iterable[str] = ()) -> tuple[bool, int | None]:
    """Whether anything is runnable now (an unconsumed inbox message, an outbox entry, an activity
    task, a work item for one of ``caps``), and when the next timer is due (None: no timer)."""
    total = await partition_count(store)
    work = list(caps)
    pipe = store.redis.pipeline(transaction=False)
    for i in range(total):
        pk = store.partition_keys(i)
        pipe.hget(pk.state, "cursor")
        pipe.xrevrange(pk.inbox, "+", "-", count=1)
        pipe.xlen(pk.outbox)
    pipe.xlen(store.keys.tasks)
    for cap in work:
        pipe.xlen(store.keys.work(cap))
    raw = await pipe.execute()
    busy = any(int(n) for n in raw[3 * total :])
    for i in range(total):
        cursor, last, outbox = raw[3 * i : 3 * i + 3]
        if int(outbox) or (last and _id_pair(text(last[0][0])) > _id_pair(text(cursor) or "0-0")):
            busy = True
    dues = [due for _, due in await next_timers(store) if due is not None]
    return busy, (min(dues) if dues else None)
