"""redis-py's asyncio cluster client, with a lost node connection reported as one.

When redis-py tears down a node connection under a command or a pipeline in flight (a node
restarting, slots moving, the client closing), the write can fail with ``AttributeError``
("'NoneType' object has no attribute 'writelines'") instead of a connection error. Every loop of
the engine retries a lost connection but would stop on an AttributeError, so this client turns
that one into :class:`redis.exceptions.ConnectionError` for single commands and for every
pipeline made by :meth:`ClusterClient.pipeline`, wherever the store builds one.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException

__all__ = ["ClusterClient", "LostConnectionPipeline"]


def _lost(exc: AttributeError) -> RedisConnectionError:
    return RedisConnectionError(f"cluster connection lost: {exc}")


class LostConnectionPipeline(ClusterPipeline):
    """A cluster pipeline whose torn-down connections raise ConnectionError."""

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except AttributeError as exc:
            raise _lost(exc) from exc


class ClusterClient(RedisCluster):
    """The cluster client of a :class:`~durable._store.store.Store`."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except AttributeError as exc:
            raise _lost(exc) from exc

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        # redis-py declares _event_dispatcher abstract on the class and sets it in __init__
        return LostConnectionPipeline(self, transaction)  # type: ignore[abstract]
