"""The records of schedule entities, as clients read and change them.

A schedule is an entity; its record is the entity's hash (``s`` state, ``t`` modified, ``v``
version), the same hash the partition step reads and writes. A client changes it with
:data:`WRITE`: a compare-and-set on ``v`` that also appends a message for the entity to the
partition's inbox (a ``tick``, so the entity re-arms its timer) and keeps the partition's schedule
index. All these keys share the partition's hash tag, so it is one atomic script on Redis Cluster
too. A step that read the record before the client's write fails its own version check and
runs again; so the entity and the clients are serialised by the version, as two steps are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import TypedScripts
from .keys import PartitionKeys
from .store import Store

# KEYS: 1 entity hash, 2 schedule index, 3 inbox, 4 entity index
# ARGV: 1 mode ('c' create | 'w' write | 'd' delete), 2 expected version ('c': ignored),
#       3 state, 4 now (ms), 5 schedule id, 6 entity id, 7 message for the inbox ('' none)
# Returns 1 done | -1 exists (create) | -2 not found | -3 version moved
WRITE = """
local state = redis.call('HGET', KEYS[1], 's')
local exists = state and state ~= ''
local mode = ARGV[1]
if mode == 'c' then
  if exists then return -1 end
else
  if not exists then return -2 end
  if (redis.call('HGET', KEYS[1], 'v') or '0') ~= ARGV[2] then return -3 end
end
if mode == 'd' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[5])
  redis.call('ZREM', KEYS[4], ARGV[6])
  return 1
end
redis.call('HSET', KEYS[1], 's', ARGV[3], 't', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'v', 1)
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[6])
if mode == 'c' then redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5]) end
if ARGV[7] ~= '' then redis.call('XADD', KEYS[3], '*', 'm', ARGV[7]) end
return 1
"""

CREATED, EXISTS, NOT_FOUND, CONFLICT = 1, -1, -2, -3


@dataclass(frozen=True)
class ScheduleRecord:
    """A schedule entity's stored state (``state`` None: no such schedule) and its version."""

    version: int
    state: bytes | None


class ScheduleRecords:
    """Reads and compare-and-set writes of schedule entity records, for clients."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _keys(self, entity_id: str) -> tuple[PartitionKeys, str]:
        pk = self.store.keys_for(entity_id)
        return pk, pk.entity(entity_id)

    async def read(self, entity_id: str) -> ScheduleRecord:
        return (await self.read_many([entity_id]))[0]

    async def read_many(self, entity_ids: Sequence[str]) -> list[ScheduleRecord]:
        if not entity_ids:
            return []
        pipe = self.store.redis.pipeline(transaction=False)
        for eid in entity_ids:
            pipe.hmget(self._keys(eid)[1], "v", "s")
        out = []
        for version, state in await pipe.execute():
            out.append(ScheduleRecord(int(version or 0), state or None))
        return out

    async def write(
        self,
        mode: str,
        schedule_id: str,
        entity_id: str,
        expected_version: int,
        state: bytes,
        now_ms: int,
        message: bytes | None,
    ) -> int:
        """Create (``c``), replace (``w``) or delete (``d``) a schedule's record; see :data:`WRITE`."""
        pk, key = self._keys(entity_id)
        script = TypedScripts(self.store.redis).register_script(WRITE)  # error replies typed
        keys = [key, pk.schedules, pk.inbox, pk.entity_index]
        args = [mode, expected_version, state, now_ms, schedule_id, entity_id, message or b""]
        return int(await self.store._client_script(script, keys, args))

    async def schedule_ids(self) -> list[str]:
        """Every schedule id of the hub (one pipelined round trip over the partitions), sorted."""
        store = self.store
        pipe = store.redis.pipeline(transaction=False)
        for i in range(store.partitions):
            pipe.zrange(store.partition_keys(i).schedules, 0, -1)
        rows = await pipe.execute()
        return sorted(m.decode() for part in rows for m in part)
