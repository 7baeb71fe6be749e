"""A cluster pipeline whose node connection redis-py tore down under it raises AttributeError
("'NoneType' object has no attribute 'writelines'"): the store reports a lost connection, which
every loop retries, instead of letting it crash the worker (seen in the Cluster reshard test)."""

from __future__ import annotations

from typing import Any

import anyio
import fakeredis
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from durable._store.resp import pack_command
from durable._store.store import Store


class _TornDownPipeline:
    def execute_command(self, *args: Any) -> None:
        pass

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        writer: Any = None
        writer.writelines([b"*1\r\n"])  # what redis-py does on a connection it has torn down
        return []


def test_a_torn_down_cluster_connection_is_a_connection_error() -> None:
    store = Store(fakeredis.FakeAsyncRedis(), "h")
    store.cluster = True
    store.redis.pipeline = lambda transaction=False: _TornDownPipeline()

    async def main() -> None:
        await store._pipeline_raw([pack_command(b"PING")])

    with pytest.raises(RedisConnectionError, match="cluster connection lost"):
        anyio.run(main)


def test_the_cluster_client_reports_torn_down_connections_as_lost() -> None:
    """Every pipeline the store's cluster client makes, and its single commands, turn redis-py's
    AttributeError on a torn-down node connection into a ConnectionError."""
    from redis.asyncio.cluster import ClusterPipeline, RedisCluster

    from durable._store.cluster_client import ClusterClient, LostConnectionPipeline

    client = ClusterClient.from_url("redis://127.0.0.1:1")  # never connected
    assert isinstance(client, ClusterClient)
    pipe = client.pipeline(transaction=False)
    assert isinstance(pipe, LostConnectionPipeline)

    async def torn_down(*args: Any, **kwargs: Any) -> Any:
        writer: Any = None
        writer.writelines([b"*1\r\n"])

    async def main() -> None:
        original_execute, original_command = ClusterPipeline.execute, RedisCluster.execute_command
        ClusterPipeline.execute = torn_down  # type: ignore[method-assign]
        RedisCluster.execute_command = torn_down  # type: ignore[method-assign]
        try:
            with pytest.raises(RedisConnectionError, match="cluster connection lost"):
                await pipe.execute()
            with pytest.raises(RedisConnectionError, match="cluster connection lost"):
                await client.execute_command("GET", "k")
        finally:
            ClusterPipeline.execute = original_execute  # type: ignore[method-assign]
            RedisCluster.execute_command = original_command  # type: ignore[method-assign]

    anyio.run(main)
