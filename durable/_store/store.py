"""The store of one hub: the typed Redis operations of the worker and the client. With the rest of
the ``_store`` package (scripts, keys, queries, notifications) it is the only code that talks to
Redis; the layers above reach Redis only through it.

Typed async methods over redis.asyncio; no business logic. Multi-key operations only ever touch
keys of one partition (one hash tag), so the same code runs on Redis Cluster.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import redis.asyncio as aredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from .._config import ENV_AUDIT
from . import scripts as _scripts
from .autopipe import AutoPipeline
from .client_ops import ClientOps
from .client_ops import StartOutcome as StartOutcome
from .cluster_client import ClusterClient
from .cluster_keys import StreamReadKeysParser
from .errors import TypedScripts, typed_error
from .exchange import RawExchanges, read_replies
from .keys import DEFAULT_PARTITIONS, FORMAT_VERSION, HubKeys, PartitionKeys, partition_of
from .notify import StatusNotifier
from .renewer import LeaseRenewer as LeaseRenewer
from .renewer import SyncLeaseRenewer as SyncLeaseRenewer
from .resp import field_map, pack_command, stream_entries, stream_replies
from .tasks import Fields as Fields
from .tasks import StreamEntry as StreamEntry
from .tasks import TaskStreams
from .work import WorkStreams

#: a worker holds one blocking read per owned partition plus its pipelines and activities; redis-py
#: would otherwise cap a pool at 100 connections and fail the next command
_MAX_CONNECTIONS = 4096
#: longer than any blocking read the engine issues (those block for at most poll_ms, 1 s by
#: default), short enough to notice a server that stopped answering
_SOCKET_TIMEOUT = 30.0


class Heartbeat(NamedTuple):
    """What a heartbeat learns: the live workers, when each capability expires, the Redis time."""

    live: list[str]
    caps: dict[str, int]
    now: int


class FencedError(Exception):
    """The commit was refused: this worker no longer holds the partition's lease."""


class ReplicationTimeoutError(RedisError):
    """Strict profile: the replicas did not confirm a write in time (it may still arrive)."""


class ConflictError(Exception):
    """The commit was refused: the cursor or an instance version moved (stale cache)."""


@dataclass
class RecordWrite:
    """One instance's (or entity's) part of a commit."""

    hash_key: str
    list_key: str  # history list; equal to hash_key for entities
    expected_version: int
    mode: str = "a"  # 'a' append history, 'r' replace history, 'd' delete the record
    fields: dict[str, bytes | str | int] = field(default_factory=dict)
    events: list[bytes] = field(default_factory=list)
    index: str = ""  # 'i' orchestration index, 'e' entity index, '' none
    index_member: str = ""
    index_score: int | None = None
    #: an orchestration's instance id: the commit moves its query index entries (status, name,
    #: creation time, tags) to follow the record's fields
    query_id: str = ""
    channel: str = ""
    message: str = ""
    #: large payloads to store beside the record: blob key -> data, and the record's blob set
    blobs: dict[str, bytes] = field(default_factory=dict)
    blob_set: str = ""


@dataclass
class CommitPlan:
    """Everything one partition step writes, validated and applied by one script call."""

    prev_cursor: str
    new_cursor: str
    records: list[RecordWrite] = field(default_factory=list)
    self_messages: list[dict[str, bytes | str]] = field(default_factory=list)
    outbox: list[dict[str, bytes | str]] = field(default_factory=list)
    timers: list[tuple[int, str, bytes]] = field(default_factory=list)
    delete_timers: list[str] = field(default_factory=list)
    state: dict[str, str] = field(default_factory=dict)
    #: entries for the partition's dead-letter stream, written by the same script as the rest
    dead_letters: list[dict[str, bytes | str]] = field(default_factory=list)
    #: instances whose step runs on another worker: id -> entry of the delegated hash; and those
    #: whose delegated step came back
    delegated: dict[str, bytes] = field(default_factory=dict)
    undelegated: list[str] = field(default_factory=list)
    #: the finished-instance index: instance id -> when it finished (ms), or None to remove it
    finished: dict[str, int | None] = field(default_factory=dict)
    trim: bool = True


#: a partition's dead-letter stream keeps about this many entries (the oldest are trimmed)
DEAD_LETTER_MAXLEN = 10_000


def _flat(mapping: dict[str, Any]) -> list[Any]:
    out: list[Any] = [len(mapping)]
    for k, v in mapping.items():
        out.append(k)
        out.append(v)
    return out


class Store(RawExchanges, ClientOps, TaskStreams, WorkStreams):
    """Async access to one hub's keys."""

    def __init__(self, client: aredis.Redis, hub: str, partitions: int | None = None) -> None:
        # redis-py's annotations cover every decode mode at once; the store decodes itself.
        self.redis: Any = client
        self.hub = hub
        self.keys = HubKeys(hub)
        self.partitions = partitions or 0
        #: standalone Redis: cross-partition messages are written by the commit itself
        self.direct = True
        self.cluster = False
        self._url: str | None = None
        self._detected = False
        #: durability 'strict': (replicas, timeout ms) to wait for after every write that others
        #: may act on; None for 'fast'
        self.strict_wait: tuple[int, int] | None = None
        self._waitaof = False
        #: the Redis clock, unless a test environment substitutes its own (ms); timers are due by it
        self.time_source: Callable[[], int] | None = None
        #: test builds: every accepted commit is recorded in the partition's audit stream
        self.audit = os.environ.get(ENV_AUDIT) == "1"
        self._auto = AutoPipeline(self._send_batch)
        #: reads of the client (a state, a wait's check): concurrent ones share a round trip, and
        #: one connection instead of one each
        self._auto_read = AutoPipeline(self._read_batch)
        self._claim_cursors: dict[str, str] = {}
        #: standalone: connections between raw exchanges (see :meth:`_conn`)
        self._idle: list[Any] = []
        self._register(client)

    def _register(self, client: Any) -> None:
        client = TypedScripts(client)  # error replies typed on Redis 6.2 too
        self._acquire = client.register_script(_scripts.ACQUIRE)
        self._renew = client.register_script(_scripts.RENEW)
        self._release = client.register_script(_scripts.RELEASE)
        self._promote = client.register_script(_scripts.PROMOTE_TIMERS)
        self._commit = client.register_script(_scripts.COMMIT)
        self._start = client.register_script(_scripts.START)
        self._send = client.register_script(_scripts.SEND_TO_INSTANCE)
        self._purge = client.register_script(_scripts.PURGE)
        self._note_recovery = client.register_script(_scripts.NOTE_RECOVERY)

    @classmethod
    def from_url(cls, url: str, hub: str) -> Store:
        """A store for ``url``; a Redis Cluster node's URL is detected on first use."""
        client = aredis.Redis.from_url(
            url,
            decode_responses=False,
            health_check_interval=30,
            max_connections=_MAX_CONNECTIONS,
            socket_timeout=_SOCKET_TIMEOUT,
        )
        store = cls(client, hub)
        store._url = url
        return store

    async def _detect_cluster(self) -> None:
        if self._detected or self._url is None:
            return
        info = await self.redis.info("cluster")
        self._detected = True
        if int(info.get("cluster_enabled", 0)) != 1:
            return
        standalone = self.redis
        self.redis = ClusterClient.from_url(
            self._url,
            decode_responses=False,
            max_connections=_MAX_CONNECTIONS,
            socket_timeout=_SOCKET_TIMEOUT,
        )
        self.redis.commands_parser = StreamReadKeysParser()  # no COMMAND GETKEYS before stream reads
        await standalone.aclose()
        self._idle.clear()
        self._register(self.redis)
        self.cluster = True
        self.direct = False  # partitions live on different nodes: the outbox carries messages

    async def close(self) -> None:
        await self.redis.aclose()

    # -- hub -------------------------------------------------------------------------------------
    async def ensure_hub(self, partitions: int | None = None) -> int:
        """Create the hub's metadata if absent (atomically) and return its partition count."""
        await self._detect_cluster()
        if self.partitions:
            return self.partitions
        want = partitions or DEFAULT_PARTITIONS
        pipe = self.redis.pipeline(transaction=False)
        pipe.hsetnx(self.keys.meta, "partitions", want)
        pipe.hsetnx(self.keys.meta, "format", FORMAT_VERSION)
        pipe.hsetnx(self.keys.meta, "created", int(time.time() * 1000))
        pipe.hget(self.keys.meta, "partitions")
        *_, value = await pipe.execute()
        self.partitions = int(value)
        return self.partitions

    async def restore_meta(self) -> bool:
        """Write the hub's metadata again if it is missing (with the partition count in use, once
        :meth:`ensure_hub` ran); True if it was missing."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hsetnx(self.keys.meta, "partitions", self.partitions or DEFAULT_PARTITIONS)
        pipe.hsetnx(self.keys.meta, "format", FORMAT_VERSION)
        pipe.hsetnx(self.keys.meta, "created", int(time.time() * 1000))
        created, *_ = await pipe.execute()
        return bool(created)

    def partition_keys(self, index: int) -> PartitionKeys:
        return self.keys.partition(index)

    def keys_for(self, instance_id: str) -> PartitionKeys:
        return self.keys.partition(partition_of(instance_id, self.partitions))

    async def redis_time_ms(self) -> int:
        if self.time_source is not None:
            return self.time_source()
        sec, usec = await self.redis.time()
        return int(sec) * 1000 + int(usec) // 1000

    def status_notifier(self) -> StatusNotifier:
        """A subscriber to instance status channels on this store's connection pool."""
        return StatusNotifier(self.redis)

    async def recent_entities(self, per_partition: int) -> tuple[list[tuple[str, float]], bool]:
        """Entity ids with their last-modified time (ms), newest first: at most ``per_partition``
        from each partition's entity index (one pipelined round trip); and whether that was all of
        them (no partition had more)."""
        pipe = self.redis.pipeline(transaction=False)
        for i in range(self.partitions):
            pipe.zrevrangebyscore(
                self.partition_keys(i).entity_index,
                "+inf",
                "-inf",
                start=0,
                num=per_partition,
                withscores=True,
            )
        rows = await pipe.execute()
        ids = sorted(((m.decode(), s) for part in rows for m, s in part), key=lambda r: r[1], reverse=True)
        return ids, all(len(part) < per_partition for part in rows)

    # -- leases ----------------------------------------------------------------------------------
    async def acquire_lease(self, index: int, worker_id: str, nonce: str, ttl_ms: int) -> str | None:
        pk = self.partition_keys(index)
        value = await self._acquire(keys=[pk.lease, pk.epoch], args=[worker_id, nonce, ttl_ms])
        return value.decode() if value else None

    async def renew_lease(self, index: int, lease: str, ttl_ms: int) -> bool:
        pk = self.partition_keys(index)
        return bool(await self._renew(keys=[pk.lease], args=[lease, ttl_ms]))

    async def release_lease(self, index: int, lease: str) -> bool:
        pk = self.partition_keys(index)
        return bool(await self._release(keys=[pk.lease], args=[lease]))

    async def lease_holders(self) -> list[tuple[str | None, int]]:
        """(lease value or None, remaining ms or -2) for every partition."""
        pipe = self.redis.pipeline(transaction=False)
        for i in range(self.partitions):
            pk = self.partition_keys(i)
            pipe.get(pk.lease)
            pipe.pttl(pk.lease)
        raw = await pipe.execute()
        return [
            (raw[2 * i].decode() if raw[2 * i] else None, int(raw[2 * i + 1])) for i in range(self.partitions)
        ]

    # -- partition reads -------------------------------------------------------------------------
    async def read_partition_state(self, index: int) -> dict[str, str]:
        raw = await self.redis.hgetall(self.partition_keys(index).state)
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def read_inbox(
        self, index: int, cursor: str, count: int, block_ms: int | None
    ) -> list[StreamEntry]:
        key = self.partition_keys(index).inbox
        if self.cluster:
            resp = await self.redis.xread({key: cursor}, count=count, block=block_ms)
            if not resp:
                return []
            return [(eid.decode(), fields) for eid, fields in resp[0][1]]
        if block_ms is None:
            payload = pack_command(b"XREAD", b"COUNT", count, b"STREAMS", key, cursor)
        else:
            payload = pack_command(b"XREAD", b"COUNT", count, b"BLOCK", block_ms, b"STREAMS", key, cursor)
        streams = await self._command_raw(payload)
        if not streams:
            return []
        return stream_entries(next(iter(stream_replies(streams)))[1])

    async def next_timer_due(self, index: int) -> int | None:
        got = await self.redis.zrange(self.partition_keys(index).timers, 0, 0, withscores=True)
        return int(got[0][1]) if got else None

    async def load_instances(
        self, index: int, instance_ids: Sequence[str]
    ) -> list[tuple[Fields, list[bytes]]]:
        pk = self.partition_keys(index)
        if self.cluster:
            pipe = self.redis.pipeline(transaction=False)
            for iid in instance_ids:
                pipe.hgetall(pk.instance(iid))
                pipe.lrange(pk.history(iid), 0, -1)
            raw = await pipe.execute()
            return [(raw[2 * i], raw[2 * i + 1]) for i in range(len(instance_ids))]
        commands: list[bytes] = []
        for iid in instance_ids:
            commands.append(pack_command(b"HGETALL", pk.instance(iid)))
            commands.append(pack_command(b"LRANGE", pk.history(iid), 0, -1))
        raw = await self._pipeline_raw(commands)
        return [(field_map(raw[2 * i]), raw[2 * i + 1]) for i in range(len(instance_ids))]

    async def load_records(self, index: int, keys: Sequence[str]) -> list[Fields]:
        """HGETALL of each key, in one round trip (pre-encoded: entity steps load many)."""
        replies = await self._pipeline_raw([pack_command(b"HGETALL", key) for key in keys])
        # a flat [field, value, ...] list (RESP2), or a dict (RESP3, or Cluster's redis-py path)
        return [r if isinstance(r, dict) else dict(zip(r[::2], r[1::2], strict=True)) for r in replies]

    # -- partition writes ------------------------------------------------------------------------
    async def commit(self, index: int, lease: str, plan: CommitPlan) -> list[tuple[str, str, bytes]]:
        """Apply a step atomically. Returns what to forward: (outbox id, destination, message)."""
        pk = self.partition_keys(index)
        keys: list[str] = [
            pk.lease,
            pk.state,
            pk.inbox,
            pk.outbox,
            pk.timers,
            pk.timer_data,
            pk.instances,
            pk.entity_index,
        ]
        args: list[Any] = [lease, plan.prev_cursor, plan.new_cursor, len(plan.records)]
        for rec in plan.records:
            keys.append(rec.hash_key)
            keys.append(rec.list_key)
            args.append(rec.expected_version)
        publish: list[tuple[str, str]] = []
        for rec in plan.records:
            args.append(rec.mode)
            args.extend(_flat(rec.fields))
            args.append(len(rec.events))
            args.extend(rec.events)
            args.append(rec.index)
            args.append(rec.index_member)
            args.append("" if rec.index_score is None else rec.index_score)
            args.append(rec.query_id)
            if self.strict_wait is not None and rec.channel:
                publish.append((rec.channel, rec.message))  # announced only once replicated
                args.extend(("", ""))
            else:
                args.append(rec.channel)
                args.append(rec.message)
            args.append(len(rec.blobs))
            if rec.blobs:
                keys.append(rec.blob_set)
                args.append(len(keys))
                for bkey, data in rec.blobs.items():
                    keys.append(bkey)
                    args.append(len(keys))
                    args.append(data)
        args.append(len(plan.self_messages))
        for msg in plan.self_messages:
            args.extend(_flat(msg))
        args.append(len(plan.outbox))
        via_outbox: list[tuple[str, bytes]] = []
        direct_keys: dict[str, int] = {}
        for msg in plan.outbox:
            dst = str(msg["dst"])
            if self.direct:
                # standalone Redis: deliver inside the commit itself (atomic, nothing to forward)
                slot = direct_keys.get(dst)
                if slot is None:
                    keys.append(dst)
                    slot = direct_keys[dst] = len(keys)
                args.append(slot)
                args.extend((1, "m", msg["m"]))
            else:
                args.append("")
                args.extend((2, "dst", dst, "m", msg["m"]))
                via_outbox.append((dst, msg["m"]))  # type: ignore[arg-type]
        args.append(len(plan.timers))
        for score, member, data in plan.timers:
            args.extend((score, member, data))
        args.append(len(plan.delete_timers))
        args.extend(plan.delete_timers)
        args.extend(_flat(plan.state))
        args.append(len(plan.delegated))
        if plan.delegated:
            keys.append(pk.delegated)
            args.append(len(keys))
            for member, value in plan.delegated.items():
                args.extend((member, value))
        undelegated = [m for m in dict.fromkeys(plan.undelegated) if m not in plan.delegated]
        args.append(len(undelegated))
        if undelegated:
            keys.append(pk.delegated)
            args.append(len(keys))
            args.extend(undelegated)
        args.append(len(plan.dead_letters))
        if plan.dead_letters:
            keys.append(pk.dlq)
            args.append(len(keys))
            args.append(DEAD_LETTER_MAXLEN)
            for entry in plan.dead_letters:
                args.extend(_flat(entry))
        args.append(len(plan.finished))
        if plan.finished:
            keys.append(pk.finished)
            args.append(len(keys))
            for member, finished_ms in plan.finished.items():
                args.extend((member, "" if finished_ms is None else finished_ms))
        args.append("1" if plan.trim else "0")
        args.append("1" if self.audit else "0")
        if self.audit:
            keys.append(f"{pk.tag}:audit")
        res = await self._call_script(self._commit, keys, args, publish)
        code = int(res[0])
        if code == -1:
            raise FencedError(f"partition {index}: lease lost")
        if code in (-2, -3):
            raise ConflictError(f"partition {index}: {'cursor' if code == -2 else 'version'} conflict")
        return [(eid.decode(), dst, m) for eid, (dst, m) in zip(res[1:], via_outbox, strict=True)]

    async def enable_strict(self, replicas: int | None, timeout_ms: int) -> int:
        """Switch to the 'strict' profile; returns the number of replicas waited for."""
        if self.cluster:
            raise ValueError("the strict durability profile needs a standalone primary (with replicas)")
        info = await self.redis.info("replication")
        server = await self.redis.info("server")
        if replicas is None:
            replicas = int(info.get("connected_slaves", 0))
        major, minor, *_ = (int(x) for x in [*str(server.get("redis_version", "0.0")).split(".")[:2], "0"])
        self._waitaof = (major, minor) >= (7, 2)
        self.strict_wait = (replicas, timeout_ms)
        self.direct = False  # nothing leaves a partition before the wait: messages use the outbox
        return replicas

    def _wait_command(self) -> bytes:
        assert self.strict_wait is not None
        replicas, timeout = self.strict_wait
        if self._waitaof:  # Redis 7.2+: local fsync and replicas' AOF
            return pack_command(b"WAITAOF", 1, replicas, timeout)
        return pack_command(b"WAIT", replicas, timeout)

    def _check_wait(self, reply: Any) -> None:
        assert self.strict_wait is not None
        replicas = self.strict_wait[0]
        acked = int(reply[1]) if isinstance(reply, list) else int(reply)
        if acked < replicas:
            raise ReplicationTimeoutError(
                f"only {acked} of {replicas} replicas confirmed the write within {self.strict_wait[1]} ms"
            )

    async def _call_script(
        self, script: Any, keys: list[str], args: list[Any], publish: Sequence[tuple[str, str]] = ()
    ) -> Any:
        """EVALSHA with our own protocol encoding (the commit carries many arguments, and redis-py's
        generic encoder costs more than the script itself). In the strict profile a WAIT (or
        WAITAOF) follows on the same connection in the same round trip, then the publishes."""
        if self.cluster:
            res = await script(keys=keys, args=args)
            for channel, message in publish:
                await self.redis.publish(channel, message)
            return res
        tail = b"".join(pack_command(b"PUBLISH", ch, msg) for ch, msg in publish)
        strict = self.strict_wait is not None
        if strict:
            tail = self._wait_command() + tail
        count = 1 + len(publish) + (1 if strict else 0)
        conn = await self._conn()
        ok = False
        try:
            payload = pack_command(b"EVALSHA", script.sha, len(keys), *keys, *args)
            await conn.send_packed_command(payload + tail, check_health=False)
            replies = await read_replies(conn, count)
            if isinstance(replies[0], NoScriptError):
                payload = pack_command(b"EVAL", script.script, len(keys), *keys, *args)
                await conn.send_packed_command(payload + tail, check_health=False)
                replies = await read_replies(conn, count)
            ok = True  # every reply read: the connection is in step again, whatever they say
        finally:
            await self._conn_done(conn, ok)
        for reply in replies:
            if isinstance(reply, ResponseError):
                if (typed := typed_error(reply)) is not reply:
                    raise typed from reply
                raise reply
        if strict:
            self._check_wait(replies[1])
        return replies[0]

    async def _send_batch(self, commands: list[bytes]) -> list[Any]:
        """Send an automatic-pipelining batch; in 'strict' one WAIT after it covers all of it."""
        if self.strict_wait is None:
            return await self._pipeline_raw(commands, raise_errors=False)
        replies = await self._pipeline_raw([*commands, pack_command(*self._wait_args())], raise_errors=False)
        self._check_wait(replies[-1])
        return replies[:-1]

    async def _read_batch(self, commands: list[bytes]) -> list[Any]:
        return await self._pipeline_raw(commands, raise_errors=False)

    async def _client_script(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """A client's script call, pipelined with its concurrent siblings."""
        try:
            return await self._auto.call(pack_command(b"EVALSHA", script.sha, len(keys), *keys, *args))
        except NoScriptError:  # first use on this server: EVAL loads it
            return await self._call_script(script, keys, args)

    async def sync_barrier(self, index: int) -> None:
        """Strict profile: wait until everything written so far reached the replicas (a marker
        write plus WAIT on one connection: replication is one ordered stream)."""
        if self.strict_wait is None:
            return
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(f"{self.partition_keys(index).tag}:sync", int(time.time() * 1000))
        pipe.execute_command(*self._wait_args())
        _, reply = await pipe.execute()
        self._check_wait(reply)

    def _wait_args(self) -> list[Any]:
        assert self.strict_wait is not None
        replicas, timeout = self.strict_wait
        return ["WAITAOF", 1, replicas, timeout] if self._waitaof else ["WAIT", replicas, timeout]

    async def note_recovery(
        self, index: int, lease: str, cursor: str, max_recoveries: int, window: int
    ) -> tuple[int, int]:
        """Count one more attempt at ``cursor``; returns (attempts, messages still to isolate)."""
        pk = self.partition_keys(index)
        attempts, left = await self._note_recovery(
            keys=[pk.lease, pk.state], args=[lease, cursor, max_recoveries, window]
        )
        if int(attempts) < 0:
            raise FencedError(f"partition {index}: lease lost")
        return int(attempts), int(left)

    async def instance_brief(
        self, index: int, instance_id: str
    ) -> tuple[int, str | None, int, bytes | None, bytes | None]:
        """(version, status, history length, parent, notify) without loading the history."""
        pk = self.partition_keys(index)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(pk.instance(instance_id), "v", "status", "parent", "notify")
        pipe.llen(pk.history(instance_id))
        (v, status, parent, notify), length = await pipe.execute()
        return int(v or 0), status.decode() if status else None, int(length), parent or None, notify or None

    async def promote_timers(self, index: int, lease: str, limit: int = 500) -> tuple[int, int | None, int]:
        pk = self.partition_keys(index)
        now_arg = "" if self.time_source is None else self.time_source()
        promoted, next_due, now = await self._promote(
            keys=[pk.lease, pk.timers, pk.timer_data, pk.inbox], args=[lease, limit, now_arg]
        )
        if int(promoted) < 0:
            raise FencedError(f"partition {index}: lease lost")
        return int(promoted), (int(next_due) if int(next_due) >= 0 else None), int(now)

    async def read_outbox(self, index: int, count: int = 1000) -> list[StreamEntry]:
        entries = await self.redis.xrange(self.partition_keys(index).outbox, "-", "+", count=count)
        return [(eid.decode(), fields) for eid, fields in entries]

    async def forward(self, index: int, entries: Sequence[tuple[str, str, bytes]]) -> None:
        """Deliver outbox entries (id, destination stream, message) in order, then drop them."""
        if not entries:
            return
        pipe = self.redis.pipeline(transaction=False)
        src = str(index)
        for eid, dst, message in entries:
            pipe.xadd(dst, {b"m": message, b"src": src, b"seq": eid})
        if self.cluster:
            # A cluster pipeline groups commands by node and does not keep their order across
            # nodes: the deliveries must be acknowledged before the outbox entries go.
            await pipe.execute()
            pipe = self.redis.pipeline(transaction=False)
        pipe.xdel(self.partition_keys(index).outbox, *[eid for eid, _, _ in entries])
        await pipe.execute()

    async def dead_letter(
        self, index: int, fields: dict[str, bytes | str], maxlen: int = DEAD_LETTER_MAXLEN
    ) -> None:
        await self.redis.xadd(self.partition_keys(index).dlq, fields, maxlen=maxlen, approximate=True)

    # -- workers ---------------------------------------------------------------------------------
    async def heartbeat(
        self, worker_id: str, info: dict[str, str], ttl_ms: int, caps: Sequence[str] = ()
    ) -> Heartbeat:
        """Record this worker as alive, and that it has capabilities ``caps`` until its heartbeat
        expires; returns the ids of all live workers (sorted) and every capability's expiry."""
        now = await self.redis_time_ms()
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(self.keys.workers, {worker_id: now + ttl_ms})
        pipe.zremrangebyscore(self.keys.workers, "-inf", now)
        if info:
            pipe.hset(self.keys.worker(worker_id), mapping=info)
            pipe.pexpire(self.keys.worker(worker_id), ttl_ms)
        if caps:
            pipe.hset(self.keys.caps, mapping=dict.fromkeys(caps, now + ttl_ms))
        pipe.hgetall(self.keys.caps)
        pipe.zrange(self.keys.workers, 0, -1)
        res = await pipe.execute()
        expiry = {k.decode(): int(v) for k, v in res[-2].items()}
        return Heartbeat(sorted(w.decode() for w in res[-1]), expiry, now)

    async def remove_worker(self, worker_id: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(self.keys.workers, worker_id)
        pipe.delete(self.keys.worker(worker_id))
        await pipe.execute()
