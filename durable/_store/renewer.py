"""Lease renewal from a plain thread, on its own blocking connection.

The runtime renews its partition leases from a thread of its own, so that orchestrator code
hogging the event loop cannot make a worker lose its partitions; :class:`SyncLeaseRenewer` is the
Redis side of that thread (one pipelined script call per renewal round on standalone Redis).
"""

from __future__ import annotations

from typing import Any, Protocol

import redis

from . import scripts as _scripts
from .keys import HubKeys

__all__ = ["LeaseRenewer", "SyncLeaseRenewer"]


class LeaseRenewer(Protocol):
    """Renews leases from a plain thread (see :class:`SyncLeaseRenewer`)."""

    def renew(self, leases: dict[int, str], ttl_ms: int) -> dict[int, bool]: ...

    def close(self) -> None: ...


class SyncLeaseRenewer:
    """Renews leases from a plain thread, so orchestrator code on the event loop cannot starve it."""

    def __init__(self, url: str, hub: str, cluster: bool = False) -> None:
        client_type: Any = redis.RedisCluster if cluster else redis.Redis
        self._client = client_type.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._cluster = cluster
        self._keys = HubKeys(hub)
        self._renew = self._client.register_script(_scripts.RENEW)

    def renew(self, leases: dict[int, str], ttl_ms: int) -> dict[int, bool]:
        order = list(leases.items())
        if self._cluster:  # redis-py refuses scripts in cluster pipelines: one call per lease
            return {
                index: bool(self._renew(keys=[self._keys.partition(index).lease], args=[value, ttl_ms]))
                for index, value in order
            }
        pipe = self._client.pipeline(transaction=False)
        for index, value in order:
            self._renew(keys=[self._keys.partition(index).lease], args=[value, ttl_ms], client=pipe)
        res = pipe.execute()
        return {index: bool(ok) for (index, _), ok in zip(order, res, strict=True)}

    def close(self) -> None:
        self._client.close()
