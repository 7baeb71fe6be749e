"""The Redis key layout, in one place.

Hub-wide keys carry the hash tag ``{<hub>}``; every key of partition NN carries ``{<hub>:NN}``,
so that one partition lives in one Redis Cluster slot and a single script can commit a step.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cache, cached_property

PREFIX = "durable"
FORMAT_VERSION = 1
DEFAULT_PARTITIONS = 32
ACTIVITY_GROUP = "activity-workers"
#: the consumer group of the work streams of orchestration and entity steps run for a partition owner
EXECUTOR_GROUP = "executors"


def partition_of(instance_id: str, partitions: int) -> int:
    """The partition that owns an orchestration or entity instance: crc32(id) mod P."""
    return zlib.crc32(instance_id.encode()) % partitions


@dataclass(frozen=True)
class HubKeys:
    """Keys shared by the whole hub."""

    hub: str

    @cached_property
    def tag(self) -> str:
        return f"{PREFIX}:{{{self.hub}}}"

    @property
    def meta(self) -> str:
        """Hash: partitions, format version, created time."""
        return f"{self.tag}:meta"

    @property
    def tasks(self) -> str:
        """Stream of activity work items, read by the consumer group ``activity-workers``."""
        return f"{self.tag}:tasks"

    @property
    def tasks_dlq(self) -> str:
        """Stream of activity work items that were delivered too often (poison)."""
        return f"{self.tag}:tasks:dlq"

    @property
    def workers(self) -> str:
        """Sorted set: worker id scored by heartbeat expiry (ms)."""
        return f"{self.tag}:workers"

    def worker(self, worker_id: str) -> str:
        """Hash: one worker's facts (host, pid, slots, owned partitions); expires with its heartbeat."""
        return f"{self.tag}:worker:{worker_id}"

    @property
    def caps(self) -> str:
        """Hash: capability (``o|name|version``, ``a|name``, ``e|name``) -> until when (ms) a live
        worker is known to have it; refreshed by every heartbeat."""
        return f"{self.tag}:caps"

    def work(self, cap: str) -> str:
        """Stream of work for workers with capability ``cap``: orchestration and entity steps a
        partition owner cannot run itself, and activity tasks left for a worker that has them."""
        return f"{self.tag}:work:{cap}"

    def status_channel(self, instance_id: str) -> str:
        """Pub/sub channel announcing status changes of one instance (a hint for waiting clients)."""
        return f"{self.tag}:status:{instance_id}"

    def purge_reply(self, request_id: str) -> str:
        """List: each partition's count of instances purged for one ``purge_orchestrations``."""
        return f"{self.tag}:purged:{request_id}"

    def partition(self, index: int) -> PartitionKeys:
        return _partition_keys(self.hub, index)


@dataclass(frozen=True)
class PartitionKeys:
    """Keys of one partition; all share one hash tag."""

    hub: str
    index: int

    @cached_property
    def tag(self) -> str:
        return f"{PREFIX}:{{{self.hub}:{self.index:02d}}}"

    @property
    def lease(self) -> str:
        """String ``epoch|worker|uuid`` with a TTL: the current owner."""
        return f"{self.tag}:lease"

    @property
    def epoch(self) -> str:
        """Counter incremented on every acquisition."""
        return f"{self.tag}:epoch"

    @property
    def state(self) -> str:
        """Hash: ``cursor`` (last consumed inbox id), ``src:<NN>`` (last applied outbox id per source)."""
        return f"{self.tag}:state"

    @property
    def inbox(self) -> str:
        """Stream: the partition's mailbox."""
        return f"{self.tag}:inbox"

    @property
    def outbox(self) -> str:
        """Stream: messages to other partitions and activity dispatch, forwarded after commit."""
        return f"{self.tag}:outbox"

    @property
    def timers(self) -> str:
        """Sorted set: timer id scored by due time (ms, Redis clock)."""
        return f"{self.tag}:timers"

    @property
    def timer_data(self) -> str:
        """Hash: timer id -> message to deliver when due."""
        return f"{self.tag}:timerdata"

    @property
    def instances(self) -> str:
        """Sorted set: orchestration instance ids scored by creation time (ms)."""
        return f"{self.tag}:index"

    @property
    def finished(self) -> str:
        """Sorted set: terminal orchestration instance ids scored by when they finished (ms), the
        order in which retention purges them."""
        return f"{self.tag}:done"

    @property
    def entity_index(self) -> str:
        """Sorted set: entity ids scored by last modification time (ms)."""
        return f"{self.tag}:entities"

    @property
    def query_prefix(self) -> str:
        """Prefix of the query indexes, maintained by the scripts that write instances and entities:
        lex-ordered sorted sets (every score 0) whose members sort by creation time, then id
        (``<created ms, 15 digits>|<instance id>``): ``q:all``, ``q:s:<STATUS>``, ``q:n:<name>``,
        ``q:ns:<STATUS>:<name>``, ``q:t:<tag>``, ``q:ts:<STATUS>:<tag>`` (a tag is
        ``<len>:<key><len>:<value>``); ``q:e`` (entity ids, lex order) and ``q:ctl`` (entities with
        a control hash, scored 1 while locked). Derived from :attr:`instances` by the scripts."""
        return f"{self.tag}:q:"

    @property
    def schedules(self) -> str:
        """Sorted set: the ids of the partition's schedules (their entities live here), scored by
        creation time (ms)."""
        return f"{self.tag}:schedules"

    @property
    def dlq(self) -> str:
        """Stream: inbox messages rejected as malformed or poison, with the reason."""
        return f"{self.tag}:dlq"

    @property
    def delegated(self) -> str:
        """Hash: orchestration instance id -> [name, version, since ms, work item id] of each
        instance whose next step runs on a worker that has its version (or waits for one)."""
        return f"{self.tag}:delegated"

    def instance(self, instance_id: str) -> str:
        """Hash: one orchestration instance's metadata."""
        return f"{self.tag}:i:{instance_id}"

    def history(self, instance_id: str) -> str:
        """List: the history events of the instance's current execution."""
        return f"{self.tag}:h:{instance_id}"

    def blob(self, instance_id: str, digest: str) -> str:
        """String: one large payload of an instance, stored once under its content hash."""
        return f"{self.tag}:b:{instance_id}:{digest}"

    def blobs(self, instance_id: str) -> str:
        """Set: the blob keys of an instance (so purge removes them all)."""
        return f"{self.tag}:bs:{instance_id}"

    def entity_control(self, entity_id: str) -> str:
        """Hash: an entity's lock holder, waiting queue and recent request ids; exists only while
        the entity is locked or has seen request ids recently."""
        return f"{self.tag}:ec:{entity_id}"

    def entity(self, entity_id: str) -> str:
        """Hash: one entity's state snapshot, lock owner and queue."""
        return f"{self.tag}:e:{entity_id}"


@cache
def _partition_keys(hub: str, index: int) -> PartitionKeys:
    return PartitionKeys(hub, index)
