"""Paged reads of the query indexes (see :attr:`PartitionKeys.query_prefix`), and the entity storage
clean-up.

Every index is a lex-ordered sorted set per partition, kept current by the scripts that write
instances and entities (COMMIT, START, PURGE), so a page is one pipelined round of range reads --
``ZREVRANGEBYLEX`` / ``ZRANGEBYLEX`` with ``LIMIT`` on each partition, O(log n + page) each --
merged here. The position of a page is the last member it returned; members never move while an
instance keeps its creation time, so paging is stable while instances start and finish.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._core.serialization import pack_record
from . import scripts as _scripts
from .store import Fields, Store

#: the width of the creation time at the head of an orchestration index member
_CREATED_DIGITS = 15

# Remove an entity's leftovers when it has no state, no lock and no queue.
# KEYS: entity hash, control hash, control index, entity lex index, entity time index ; ARGV: entity id
# -> 1 removed, 0 in use
_REMOVE_EMPTY = """
if redis.call('HGET', KEYS[1], 's') then
  local s = redis.call('HGET', KEYS[1], 's')
  if s ~= '' then return 0 end
end
local l = redis.call('HGET', KEYS[2], 'l')
local q = redis.call('HGET', KEYS[2], 'q')
if (l and l ~= '') or (q and q ~= '') then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
return 1
"""


def created_bound(ms: int) -> str:
    """The index member prefix of creation time ``ms``."""
    return f"{max(ms, 0):0{_CREATED_DIGITS}d}"


def member_id(member: str) -> str:
    """The instance id of an orchestration index member ``<created>|<id>``."""
    return member.split("|", 1)[1]


def member_created(member: str) -> int:
    return int(member.split("|", 1)[0])


async def orchestration_members(
    store: Store,
    indexes: Sequence[str],
    created_from_ms: int | None,
    created_to_ms: int | None,
    after: str | None,
    limit: int,
) -> tuple[list[str], bool]:
    """The next ``limit`` members (newest first) of the union of ``indexes`` (names after the query
    prefix: ``all``, ``s:RUNNING``, ...) over every partition, after member ``after``.

    Returns the members and whether there may be more."""
    lo = "-" if created_from_ms is None else "[" + created_bound(created_from_ms)
    hi = "+" if created_to_ms is None else "(" + created_bound(created_to_ms + 1)
    if after is not None:
        hi = "(" + after if hi == "+" or after < hi[1:] else hi
    pipe = store.redis.pipeline(transaction=False)
    for i in range(store.partitions):
        prefix = store.partition_keys(i).query_prefix
        for name in indexes:
            pipe.zrevrangebylex(prefix + name, hi, lo, start=0, num=limit)
    found: set[str] = set()
    full = False
    for rows in await pipe.execute():
        if len(rows) >= limit:
            full = True
        found.update(m.decode() for m in rows)
    members = sorted(found, reverse=True)
    more = full or len(members) > limit
    return members[:limit], more


async def entity_ids(store: Store, prefix: str, after: str | None, limit: int) -> tuple[list[str], bool]:
    """The next ``limit`` entity ids starting with ``prefix``, in id order, after ``after``; and
    whether there may be more."""
    low = prefix.encode()
    start = b"[" + low if after is None or after.encode() < low else b"(" + after.encode()
    stop = b"(" + low + b"\xff"  # UTF-8 never holds 0xff: every id with the prefix sorts below
    pipe = store.redis.pipeline(transaction=False)
    for i in range(store.partitions):
        pipe.zrangebylex(store.partition_keys(i).query_prefix + "e", start, stop, start=0, num=limit)
    found: set[str] = set()
    full = False
    for rows in await pipe.execute():
        full = full or len(rows) >= limit
        found.update(m.decode() for m in rows)
    ids = sorted(found, key=str.encode)
    return ids[:limit], full or len(ids) > limit


async def recent_entity_ids(
    store: Store, modified_from_ms: int | None, modified_to_ms: int | None, limit: int
) -> list[tuple[str, int]]:
    """Up to ``limit`` entity ids modified in the range, most recently modified first."""
    lo = "-inf" if modified_from_ms is None else modified_from_ms
    hi = "+inf" if modified_to_ms is None else modified_to_ms
    pipe = store.redis.pipeline(transaction=False)
    for i in range(store.partitions):
        pipe.zrevrangebyscore(
            store.partition_keys(i).entity_index, hi, lo, start=0, num=limit, withscores=True
        )
    rows = [(m.decode(), int(s)) for part in await pipe.execute() for m, s in part]
    rows.sort(key=lambda r: (r[1], r[0]), reverse=True)
    return rows[:limit]


async def entity_records(
    store: Store, ids: Sequence[str], include_state: bool
) -> list[tuple[Fields, Fields]]:
    """(entity hash, control hash) of each entity; without state only its time and version."""
    pipe = store.redis.pipeline(transaction=False)
    for target in ids:
        pk = store.keys_for(target)
        if include_state:
            pipe.hgetall(pk.entity(target))
        else:
            pipe.hmget(pk.entity(target), "t", "v", "s")
        pipe.hgetall(pk.entity_control(target))
    raw = await pipe.execute() if ids else []
    out: list[tuple[Fields, Fields]] = []
    for i in range(len(ids)):
        main: Any = raw[2 * i]
        if not include_state:
            t, v, s = main
            main = {}
            if s:  # only whether there is a state: a placeholder keeps the record non-empty
                main = {b"t": t or b"0", b"v": v or b"0", b"s": b"\xc0"}
        out.append((main, raw[2 * i + 1]))
    return out


async def control_entities(store: Store, locked_only: bool) -> list[str]:
    """Entities that have a control hash (all, or only the locked ones), from every partition."""
    out: list[str] = []
    for i in range(store.partitions):
        key = store.partition_keys(i).query_prefix + "ctl"
        start = 0
        while True:
            lo = 1 if locked_only else "-inf"
            rows = await store.redis.zrangebyscore(key, lo, "+inf", start=start, num=500)
            out.extend(m.decode() for m in rows)
            if len(rows) < 500:
                break
            start += len(rows)
    return out


async def remove_empty_entity(store: Store, entity_id: str) -> bool:
    """Delete the leftovers (control hash, index entries) of an entity with no state, no lock and
    no waiting requests; False when it is in use."""
    pk = store.keys_for(entity_id)
    script = store.redis.register_script(_REMOVE_EMPTY)
    keys = [pk.entity(entity_id), pk.entity_control(entity_id), pk.query_prefix + "ctl"]
    keys += [pk.query_prefix + "e", pk.entity_index]
    return bool(await script(keys=keys, args=[entity_id]))


async def send_unlock(store: Store, entity_id: str, request_id: str, orchestration_id: str) -> None:
    """Ask an entity to release the lock of critical section ``request_id`` (a no-op if another
    section holds it)."""
    msg = {"kind": "unlock", "target": entity_id, "rid": request_id, "orch": orchestration_id}
    await store.send_message(entity_id, pack_record(msg))


async def reindex(store: Store, chunk: int = 500) -> tuple[int, int, int]:
    """Build the query indexes of a hub written before they existed (idempotent, online): every
    instance of the old per-partition instance index, every entity of the entity index, and every
    entity control hash (found with one SCAN: a one-time maintenance step, not a query).

    Returns (instances, entities, control hashes) looked at."""
    script = store.redis.register_script(_scripts.REINDEX)
    instances = entities = controls = 0
    for i in range(store.partitions):
        pk = store.partition_keys(i)
        start = 0
        while True:
            ids = await store.redis.zrange(pk.instances, start, start + chunk - 1)
            if not ids:
                break
            instances += int(await script(keys=[pk.instances], args=list(ids)))
            start += len(ids)
        start = 0
        while True:
            ids = await store.redis.zrange(pk.entity_index, start, start + chunk - 1)
            if not ids:
                break
            await store.redis.zadd(pk.query_prefix + "e", dict.fromkeys(ids, 0))
            entities += len(ids)
            start += len(ids)
    async for key in store.redis.scan_iter(match=f"durable:{{{store.hub}:*}}:ec:*", count=1000):
        name = key.decode()
        tag, _, entity_id = name.partition("}:ec:")
        index = int(tag.rsplit(":", 1)[1])
        locked = await store.redis.hget(key, "l")
        ctl = store.partition_keys(index).query_prefix + "ctl"
        await store.redis.zadd(ctl, {entity_id: 1 if locked else 0})
        controls += 1
    return instances, entities, controls
