"""The client against a real redis-server when things go wrong: Redis restarts, a subscription
layer that fails, events for instances that are gone or finished."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
import redis.asyncio as aredis
from _redis import RedisServer
from redis.asyncio.client import PubSub

from durable import AsyncClient, Client, OrchestrationNotFoundError, OrchestrationStatus, Worker, WorkerConfig
from durable._store.keys import DEFAULT_PARTITIONS, partition_of

FAST = dict(balance_interval_ms=100, poll_ms=200)

# --------------------------------------------------------------------------- waits and restarts

#: restarts of Redis, and waits that finish between two of them
RESTARTS = 20
WAITS_PER_RESTART = 40
WAITERS = 40


def test_waits_return_their_result_while_redis_restarts(tmp_path: Path, hub: str) -> None:
    """Waits that finish at any moment of a series of Redis restarts all return their state.

    The instances' part is played by direct writes of the instance hash and its status channel,
    so that waits finish continuously, also while Redis goes down and comes back. Nothing from
    the subscription layer may escape a wait: it used to, about once per restart in ten, with
    ``AttributeError: 'NoneType' object has no attribute 'writelines'`` (redis-py unsubscribing
    on a connection its reader had just torn down), or with a ``RuntimeError`` of a connection
    that two coroutines read at once (a dropped pub/sub connection went back to the pool while
    the reader still used it).
    """
    # fsync always: a write Redis acknowledged survives the kill -9 restarts
    server = RedisServer(tmp_path / "redis", appendfsync="always").start()

    async def scenario() -> None:
        client = AsyncClient(server.url, hub=hub)
        writer = aredis.Redis.from_url(server.url, socket_timeout=5)
        store = await client._get_store()
        failures: list[BaseException] = []
        finished = 0
        target = WAITS_PER_RESTART
        enough = anyio.Event()
        stop = False

        async def write(iid: str, **fields: Any) -> None:
            """Set fields of the instance hash (and announce a status), retried through restarts."""
            key = store.keys_for(iid).instance(iid)
            while True:
                try:
                    await writer.hset(key, mapping=fields)
                    await writer.publish(store.keys.status_channel(iid), str(fields["status"]))
                    return
                except (redis.RedisError, OSError):
                    await anyio.sleep(0.01)  # Redis is restarting: try again

        async def wait(iid: str, result: list[Any]) -> None:
            try:
                result.append(await client.wait_for_orchestration_completion(iid, timeout=60))
            except Exception as exc:
                failures.append(exc)

        async def waiter(n: int) -> None:
            nonlocal finished
            iid = f"w{n}"
            while not stop:
                await write(iid, status="RUNNING", name="o", created=1, updated=1)
                result: list[Any] = []
                async with anyio.create_task_group() as tg:
                    tg.start_soon(wait, iid, result)
                    await write(iid, status="COMPLETED")
                if result:
                    assert result[0].runtime_status == OrchestrationStatus.COMPLETED
                    finished += 1
                    if finished >= target:
                        enough.set()

        try:
            async with anyio.create_task_group() as tg:
                for n in range(WAITERS):
                    tg.start_soon(waiter, n)
                for restart in range(RESTARTS):
                    await enough.wait()
                    if failures:
                        break
                    enough = anyio.Event()
                    target = finished + WAITS_PER_RESTART
                    # graceful and kill -9 in turn; the waits go on meanwhile
                    await anyio.to_thread.run_sync(lambda r=restart: server.restart(kill=r % 2 == 1))
                stop = True
        finally:
            await writer.aclose()
            await client.close()
        assert not failures, f"{len(failures)} waits failed, the first with {failures[0]!r}"
        assert finished >= RESTARTS * WAITS_PER_RESTART

    try:
        anyio.run(scenario)
    finally:
        server.kill()


# --------------------------------------------------------------------------- a failing pub/sub


def _raising(error: Exception, calls: list[str], name: str) -> Any:
    async def fail(self: PubSub, *args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        raise error

    return fail


@pytest.mark.parametrize(
    ("method", "error"),
    [
        ("unsubscribe", AttributeError("'NoneType' object has no attribute 'writelines'")),
        ("subscribe", AttributeError("'NoneType' object has no attribute 'writelines'")),
        ("subscribe", RuntimeError("read() called while another coroutine is already waiting")),
        ("get_message", RuntimeError("pubsub connection not set")),
    ],
    ids=["unsubscribe-AttributeError", "subscribe-AttributeError", "subscribe-RuntimeError", "get_message"],
)
def test_a_failing_subscription_layer_never_escapes_a_wait(
    redis_url: str, hub: str, monkeypatch: pytest.MonkeyPatch, method: str, error: Exception
) -> None:
    """Notifications are hints: whatever the pub/sub layer raises, a wait falls back to polling
    the state and returns it."""
    calls: list[str] = []
    monkeypatch.setattr(PubSub, method, _raising(error, calls, method))
    worker = Worker(redis_url, hub=hub, config=WorkerConfig(**FAST))  # type: ignore[arg-type]

    @worker.orchestrator
    def waits(ctx: Any, _: Any) -> Any:
        return (yield ctx.wait_for_external_event("go"))

    with worker, Client(redis_url, hub=hub) as client:
        iid = client.schedule_new_orchestration(waits)
        assert (
            client.wait_for_orchestration_start(iid, timeout=30).runtime_status == OrchestrationStatus.RUNNING
        )
        client.raise_orchestration_event(iid, "go", data=7)
        state = client.wait_for_orchestration_completion(iid, timeout=30)
        assert state.runtime_status == OrchestrationStatus.COMPLETED
        assert state.output == 7
        # a channel whose waiters left is unsubscribed later, with others (the reader does it
        # within about a second once no wait is left)
        deadline = time.monotonic() + 10
        while not calls and time.monotonic() < deadline:
            time.sleep(0.02)
        # and once more, on the same (by now failed) subscription layer
        again = client.schedule_new_orchestration(waits)
        client.raise_orchestration_event(again, "go", data=8)
        assert client.wait_for_orchestration_completion(again, timeout=30).output == 8
    assert calls, f"the fault in PubSub.{method} was never hit"


# --------------------------------------------------------------------------- events


def test_event_for_a_missing_instance_raises_and_for_a_finished_one_is_discarded(
    redis_url: str, hub: str
) -> None:
    """Durable Functions' semantics: no instance with that id -> OrchestrationNotFoundError; an
    instance that has finished -> the event is accepted and discarded (README, wire-format.md)."""
    worker = Worker(redis_url, hub=hub, config=WorkerConfig(**FAST))  # type: ignore[arg-type]

    @worker.orchestrator
    def waits(ctx: Any, _: Any) -> Any:
        return (yield ctx.wait_for_external_event("go"))

    with worker, Client(redis_url, hub=hub) as client:
        with pytest.raises(OrchestrationNotFoundError):
            client.raise_orchestration_event("never-was", "go", data=0)
        iid = client.schedule_new_orchestration(waits, instance_id="finishes")
        client.raise_orchestration_event(iid, "go", data=1)
        assert client.wait_for_orchestration_completion(iid, timeout=30).output == 1
        history = client.get_orchestration_history(iid)

        client.raise_orchestration_event(iid, "go", data=2)  # finished: no error

        # a later instance of the same partition runs only once that event has been handled
        partition = partition_of(iid, DEFAULT_PARTITIONS)
        probe = next(
            f"probe-{n}" for n in range(10_000) if partition_of(f"probe-{n}", DEFAULT_PARTITIONS) == partition
        )
        client.schedule_new_orchestration(waits, instance_id=probe)
        client.raise_orchestration_event(probe, "go", data=3)
        assert client.wait_for_orchestration_completion(probe, timeout=30).output == 3
        state = client.get_orchestration_state(iid)
        assert state is not None
        assert (state.runtime_status, state.output) == (OrchestrationStatus.COMPLETED, 1)
        assert client.get_orchestration_history(iid) == history

        assert client.purge_orchestration(iid)
        with pytest.raises(OrchestrationNotFoundError):
            client.raise_orchestration_event(iid, "go", data=4)
