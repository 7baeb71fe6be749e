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
