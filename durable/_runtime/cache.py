"""The replay cache: live executors of the instances a worker's partitions ran recently, bounded
by one LRU across all partitions (a cached instance skips loading and replaying its history)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

from .telemetry import Telemetry

V = TypeVar("V")


class InstanceCache(Generic[V]):
    """Per-partition maps of instance id -> cached instance, evicted least recently used first."""

    def __init__(self, capacity: int, metrics: Telemetry) -> None:
        self.capacity = capacity
        self._metrics = metrics
        self._partitions: dict[int, dict[str, V]] = {}
        #: instance id -> its partition, least recently used first (keyed by the id alone, the
        #: string the partition map holds too: no tuple per cached instance)
        self._lru: OrderedDict[str, int] = OrderedDict()

    def partition(self, index: int) -> dict[str, V]:
        """The (live) map of one partition; created on first use."""
        part = self._partitions.get(index)
        if part is None:
            part = self._partitions[index] = {}
        return part

    def touch(self, index: int, instance_ids: list[str]) -> None:
        """Mark instances as just used; evict the least recently used beyond the capacity."""
        lru = self._lru
        for iid in instance_ids:
            known = lru.get(iid)
            if known == index:
                lru.move_to_end(iid)
                self._metrics.cache_event("hit")
            else:
                lru[iid] = index
                if known is not None:  # an id moves partitions only if their count changed
                    self._drop(known, iid)
                    lru.move_to_end(iid)
        while len(lru) > self.capacity:
            iid, p = lru.popitem(last=False)
            part = self._partitions.get(p)
            if part is not None:
                part.pop(iid, None)
            self._metrics.cache_event("evict")
        self._metrics.cache_size(len(lru))

    def _drop(self, index: int, instance_id: str) -> None:
        part = self._partitions.get(index)
        if part is not None:
            part.pop(instance_id, None)

    def forget(self, index: int, instance_id: str) -> None:
        self.partition(index).pop(instance_id, None)
        if self._lru.get(instance_id) == index:
            del self._lru[instance_id]

    def clear_partition(self, index: int, *, drop: bool = False) -> None:
        """Empty one partition's cache (after a failed step, or when the partition is let go)."""
        part = self._partitions.pop(index, None) if drop else self._partitions.get(index)
        if part is not None and not drop:
            part.clear()
        for key in [k for k, p in self._lru.items() if p == index]:
            del self._lru[key]
        self._metrics.cache_size(len(self._lru))
