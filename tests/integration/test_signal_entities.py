"""Client.signal_entities / AsyncClient.signal_entities: many signals in one round trip, each one
independent and de-duplicated exactly like a signal_entity call."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from _cluster import RedisClusterServers
from _poll import wait_until

from durable import (
    AsyncClient,
    Client,
    EntityContext,
    EntityId,
    EntitySignal,
    SerializationError,
    Worker,
    WorkerConfig,
)


def log(ctx: EntityContext, value: Any) -> None:
    """Keeps the inputs of its ``append`` operations, in the order it applied them."""
    if ctx.operation == "append":
        ctx.set_state([*ctx.get_state([]), value])
    elif ctx.operation == "fail":
        ctx.set_state(["never kept"])
        raise ValueError("refused")


@pytest.fixture
def worker(redis_url: str, hub: str) -> Worker:
    w = Worker(redis_url, hub=hub, config=WorkerConfig(balance_interval_ms=100, poll_ms=200))
    w.add_entity(log)
    return w


@pytest.fixture
def client(redis_url: str, hub: str) -> Iterator[Client]:
    c = Client(redis_url, hub=hub)
    yield c
    c.close()


def _state(client: Client, entity_id: str) -> Any:
    state = client.get_entity(entity_id)
    return None if state is None else state.state


def test_a_batch_applies_each_signal_once_in_order_per_entity(worker: Worker, client: Client) -> None:
    keys = ["a", "b", "c"]
    items = [EntitySignal(EntityId("log", keys[i % 3]), "append", i, signal_id=f"s{i}") for i in range(300)]
    with worker:
        ids = client.signal_entities(items)
        assert ids == [f"s{i}" for i in range(300)]
        client.signal_entities(items[::7])  # a retry of part of the batch: dropped as duplicates
        for n, key in enumerate(keys):
            expected = list(range(n, 300, 3))
            wait_until(lambda k=key, e=expected: _state(client, f"@log@{k}") == e, 30, f"signals to {key}")
        # the retried ones came after the batch, and still nothing was applied twice
        client.signal_entity("@log@a", "append", input="end")
        wait_until(lambda: (_state(client, "@log@a") or [None])[-1] == "end", 30, "the last signal")
        assert _state(client, "@log@a") == [*range(0, 300, 3), "end"]


def test_plain_tuples_get_new_ids_and_a_failing_one_leaves_the_others(worker: Worker, client: Client) -> None:
    with worker:
        ids = client.signal_entities(
            [("@log@t", "append", 1), ("@log@t", "fail", None), ("@LOG@t", "append", {"x": 2})]
        )
        assert len(ids) == 3 and len(set(ids)) == 3 and all(len(i) == 32 for i in ids)
        wait_until(lambda: _state(client, "@log@t") == [1, {"x": 2}], 30, "the two good signals")


def test_signal_at_in_a_batch_delays_only_that_signal(worker: Worker, client: Client) -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)
    with worker:
        client.signal_entities(
            [EntitySignal("@log@d", "append", "late", signal_at=later), ("@log@d", "append", "now")]
        )
        wait_until(lambda: _state(client, "@log@d") == ["now"], 30, "the undelayed signal")
        wait_until(lambda: _state(client, "@log@d") == ["now", "late"], 30, "the delayed signal")
        assert dt.datetime.now(dt.UTC) >= later - dt.timedelta(milliseconds=50)  # not applied early


def test_async_batch_and_bad_ids(worker: Worker, redis_url: str, hub: str, client: Client) -> None:
    async def main() -> list[str]:
        async with AsyncClient(redis_url, hub=hub) as c:
            assert await c.signal_entities([]) == []
            with pytest.raises(ValueError, match="not an entity id"):
                await c.signal_entities([("@log@ok", "append", 1), ("no-entity", "append", 2)])
            return await c.signal_entities(("@log@async", "append", i) for i in range(50))

    with worker:
        ids = anyio.run(main)
        assert len(set(ids)) == 50
        wait_until(lambda: _state(client, "@log@async") == list(range(50)), 30, "the async batch")
        assert client.get_entity("@log@ok") is None  # the bad item stopped the call before any send
        with pytest.raises(SerializationError):  # an input that cannot be encoded: nothing is sent
            client.signal_entities([("@log@enc", "append", 1), ("@log@enc", "append", object())])
        client.signal_entity("@log@enc", "append", input="after")
        wait_until(lambda: _state(client, "@log@enc") == ["after"], 30, "a signal after the refused batch")


def test_signal_entities_on_redis_cluster(tmp_path: Path, hub: str) -> None:
    """The batch send and the entity loads go through redis-py's cluster pipeline there."""
    servers = RedisClusterServers(tmp_path / "cluster").start()
    try:
        worker = Worker(servers.url, hub=hub, config=WorkerConfig(balance_interval_ms=100, poll_ms=200))
        worker.add_entity(log)
        with worker, Client(servers.url, hub=hub) as c:
            c.signal_entities([(f"@log@k{i % 10}", "append", i) for i in range(100)])
            c.signal_entity("@log@k0", "append", input="single")
            for k in range(10):
                expected = [*range(k, 100, 10), *(["single"] if k == 0 else [])]
                wait_until(lambda k=k, e=expected: _state(c, f"@log@k{k}") == e, 60, f"the signals to k{k}")
    finally:
        servers.kill()
