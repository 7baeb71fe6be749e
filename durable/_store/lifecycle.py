"""Store operations of the instance lifecycle: recursive purge, purge batches of a partition's
owner (retention and filters), the finished-instance index, and small reads the activity runner and
the lifecycle commands need.

Like :mod:`durable._store.store`, only Redis access lives here; what to purge and when is decided
by the callers. Multi-key writes touch one partition's keys (one hash tag) per script call.
"""

from __future__ import annotations

import time
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._core import events as ev
from .._core.lifecycle import children
from .._core.model import OrchestrationStatus
from .._core.serialization import pack_record, unpack_record
from . import scripts as _scripts
from .store import FencedError, Store

_TERMINAL = ("COMPLETED", "FAILED", "TERMINATED")
#: a purge request's replies are kept this long (the client deletes them once it has them all)
_REPLY_TTL_SECONDS = 3600


def _decode(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


async def instance_execs(
    store: Store, instance_ids: Sequence[str]
) -> dict[str, tuple[str | None, str | None]]:
    """(status, execution id) of each instance; (None, None) for one that does not exist."""
    if not instance_ids:
        return {}
    pipe = store.redis.pipeline(transaction=False)
    for iid in instance_ids:
        pipe.hmget(store.keys_for(iid).instance(iid), "status", "exec")
    rows = await pipe.execute()
    return {iid: (_decode(st), _decode(ex)) for iid, (st, ex) in zip(instance_ids, rows, strict=True)}


_registered: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def _script(store: Store, source: str) -> Any:
    """``source`` registered on the store's current client (once per client)."""
    table = _registered.setdefault(store.redis, {})
    script = table.get(source)
    if script is None:
        script = table[source] = store.redis.register_script(source)
    return script


# -- recursive purge (clients) ---------------------------------------------------------------------
async def collect_tree(store: Store, instance_id: str) -> list[tuple[str, str | None]]:
    """``(instance id, status)`` of an instance and of its sub-orchestrations, transitively,
    children before their parent; empty when the instance does not exist. A child counts only if
    its record names this parent (an id reused by an unrelated instance is left alone)."""
    order: list[tuple[str, str | None]] = []
    seen = {instance_id}
    level = [instance_id]
    parents: dict[str, str] = {}
    while level:
        pipe = store.redis.pipeline(transaction=False)
        for iid in level:
            pk = store.keys_for(iid)
            pipe.hmget(pk.instance(iid), "status", "parent")
            pipe.lrange(pk.history(iid), 0, -1)
        raw = await pipe.execute()
        nxt: list[str] = []
        for i, iid in enumerate(level):
            (status, parent), history = raw[2 * i], raw[2 * i + 1]
            if status is None:
                continue  # gone (or never started)
            if iid in parents:
                record = unpack_record(parent) if parent else None
                if not isinstance(record, dict) or record.get("iid") != parents[iid]:
                    continue
            order.append((iid, _decode(status)))
            for child in children([unpack_record(e) for e in history]):
                if child not in seen:
                    seen.add(child)
                    parents[child] = iid
                    nxt.append(child)
        level = nxt
    order.reverse()  # deepest first: a crash midway leaves a tree that can be purged again
    return order


async def purge_tree(store: Store, instance_id: str, *, recursive: bool) -> tuple[bool, str | None]:
    """Purge an instance (and with ``recursive`` its sub-orchestrations, children first):
    (whether the instance was there, None), or (False, the id of one that is not terminal) when
    nothing was purged because of it."""
    tree = await collect_tree(store, instance_id) if recursive else [(instance_id, None)]
    running = [iid for iid, status in tree if status is not None and status not in _TERMINAL]
    if running:
        return False, running[-1]
    purged = False
    for iid, _ in tree:
        res = await store.purge_instance(iid)
        if res < 0:
            return False, iid
        purged = res == 1 if iid == instance_id else purged
    return purged, None


# -- purge batches of a partition's owner ----------------------------------------------------------
@dataclass
class Candidate:
    """An instance a purge batch may remove, as read just before the batch."""

    iid: str
    status: str | None
    name: str
    blobs: list[str]

    @property
    def terminal(self) -> bool:
        return self.status in _TERMINAL


async def finished_before(store: Store, index: int, cutoff_ms: int, limit: int) -> list[str]:
    """Ids from the partition's finished index that finished at or before ``cutoff_ms``, oldest first."""
    rows = await store.redis.zrangebyscore(
        store.partition_keys(index).finished, "-inf", cutoff_ms, start=0, num=limit
    )
    return [r.decode() for r in rows]


async def index_page(
    store: Store, index: int, low: int | None, high: int | None, offset: int, limit: int
) -> list[tuple[str, int]]:
    """(id, created ms) from the partition's instance index in [low, high], oldest first."""
    rows = await store.redis.zrangebyscore(
        store.partition_keys(index).instances,
        "-inf" if low is None else low,
        "+inf" if high is None else high,
        start=offset,
        num=limit,
        withscores=True,
    )
    return [(m.decode(), int(s)) for m, s in rows]


async def read_candidates(store: Store, index: int, instance_ids: Sequence[str]) -> list[Candidate]:
    pk = store.partition_keys(index)
    pipe = store.redis.pipeline(transaction=False)
    for iid in instance_ids:
        pipe.hmget(pk.instance(iid), "status", "name")
        pipe.smembers(pk.blobs(iid))
    raw = await pipe.execute()
    out: list[Candidate] = []
    for i, iid in enumerate(instance_ids):
        (status, name), blobs = raw[2 * i], raw[2 * i + 1]
        out.append(Candidate(iid, _decode(status), _decode(name) or "", sorted(b.decode() for b in blobs)))
    return out


async def purge_batch(
    store: Store,
    index: int,
    lease: str,
    batch: Sequence[tuple[Candidate, str]],
    state_field: str = "",
    state_value: str = "",
) -> list[str]:
    """Purge ``(candidate, required status or '')`` pairs in one fenced script call, and set (or
    with an empty value, delete) one field of the partition state; returns the purged ids."""
    pk = store.partition_keys(index)
    keys = [pk.lease, pk.state, pk.instances, pk.finished]
    args: list[Any] = [lease, state_field, state_value, len(batch)]
    for cand, want in batch:
        keys.extend((pk.instance(cand.iid), pk.history(cand.iid), pk.blobs(cand.iid), *cand.blobs))
        args.extend((cand.iid, want, len(cand.blobs)))
    res = await store._call_script(_script(store, _scripts.PURGE_BATCH), keys, args)
    if int(res[0]) < 0:
        raise FencedError(f"partition {index}: lease lost")
    return [_decode(r) or "" for r in res[1:]]


# -- purge requests (purge_orchestrations) ---------------------------------------------------------
async def request_purge(store: Store, request: dict[str, Any]) -> None:
    """Send a purge request to every partition (its owner runs it in batches and replies)."""
    data = pack_record(request)
    pipe = store.redis.pipeline(transaction=False)
    for index in range(store.partitions):
        pipe.xadd(store.partition_keys(index).inbox, {b"m": data})
    await pipe.execute()


async def purge_matching(
    store: Store,
    status: OrchestrationStatus | str | list[OrchestrationStatus | str] | None,
    name: str | None,
    low: int | None,
    high: int | None,
    timeout: float,
) -> int:
    """Ask every partition's owner to purge its terminal instances that match, and wait for their
    counts (see :func:`await_purge_replies`). Raises ValueError for a status that is not terminal."""
    items = [] if status is None else status if isinstance(status, list) else [status]
    wanted = [OrchestrationStatus(s) for s in items]
    if any(not s.is_terminal for s in wanted):
        raise ValueError("only terminal instances (COMPLETED, FAILED, TERMINATED) can be purged")
    statuses = [s.value for s in wanted] or None
    request_id = uuid.uuid4().hex
    request = {
        "kind": ev.MSG_PURGE,
        "target": "",
        "rid": request_id,
        "status": statuses,
        "name": name,
        "from": low,
        "to": high,
    }
    await request_purge(store, request)
    return sum((await await_purge_replies(store, request_id, timeout)).values())


async def reply_purge(store: Store, request_id: str, index: int, count: int) -> None:
    key = store.keys.purge_reply(request_id)
    pipe = store.redis.pipeline(transaction=False)
    pipe.rpush(key, pack_record({"p": index, "n": count}))
    pipe.expire(key, _REPLY_TTL_SECONDS)
    await pipe.execute()


async def await_purge_replies(store: Store, request_id: str, timeout: float) -> dict[int, int]:
    """Each partition's count of purged instances; raises TimeoutError (with what was counted so
    far) when some partition did not answer in time (it has no live owner, or is far behind)."""
    key = store.keys.purge_reply(request_id)
    counts: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(counts) < store.partitions:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"{store.partitions - len(counts)} of {store.partitions} partitions did not finish "
                    f"purging within {timeout:g}s (are workers running?); {sum(counts.values())} "
                    "instances were purged so far, and the rest goes on"
                )
            got = await store.redis.blpop([key], timeout=max(0.01, min(left, 1.0)))
            if got:
                reply = unpack_record(got[1])
                counts[int(reply["p"])] = int(reply["n"])
    finally:
        await store.redis.delete(key)
    return counts
