"""A wait on an instance that is already where the wait wants it costs one round trip.

Counted by the server: each test has its own redis-server, the worker is stopped before the count,
and ``INFO commandstats`` after ``CONFIG RESETSTAT`` lists every command any connection sent.
The waits that cannot return at once keep their semantics: they block until the state changes,
raise TimeoutError naming the timeout, and a server that stops answering makes a wait time out
on time instead of hanging.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import redis
from _redis import RedisServer

from durable import AsyncClient, Client, OrchestrationState, OrchestrationStatus, Worker, WorkerConfig

FAST = dict(balance_interval_ms=100, poll_ms=200)
#: the test's own commands, left out of the count
ADMIN = {"config", "info"}

pytestmark = pytest.mark.standalone_only
T = TypeVar("T")


def _worker(url: str, hub: str) -> Worker:
    worker = Worker(url, hub=hub, config=WorkerConfig(**FAST))  # type: ignore[arg-type]

    @worker.activity
    def echo(ctx: Any, x: Any) -> Any:
        return x

    @worker.orchestrator
    def once(ctx: Any, x: Any) -> Any:
        return (yield ctx.call_activity(echo, input=x))

    @worker.orchestrator
    def parked(ctx: Any, _: Any) -> Any:
        return (yield ctx.wait_for_external_event("go"))

    return worker


@pytest.fixture
def instances(redis_server: RedisServer, hub: str) -> Iterator[dict[str, str]]:
    """A COMPLETED instance (small and large output) and a RUNNING one; no worker runs after."""
    with _worker(redis_server.url, hub) as worker, Client(redis_server.url, hub=hub) as client:
        done = client.schedule_new_orchestration("once", input=[1, "two"])
        big = client.schedule_new_orchestration("once", input="x" * 100_000)  # stored apart
        running = client.schedule_new_orchestration("parked")
        for iid in (done, big):
            assert client.wait_for_orchestration_completion(iid, timeout=30).output is not None
        client.wait_for_orchestration_start(running, timeout=30)
        assert worker is not None
    yield {"done": done, "big": big, "running": running}


class Commands:
    """The commands the server runs between :meth:`reset` and :meth:`count` (name -> calls)."""

    def __init__(self, server: RedisServer) -> None:
        self.admin = redis.Redis.from_url(server.url)

    def reset(self) -> None:
        self.admin.config_resetstat()

    def count(self) -> dict[str, int]:
        stats = self.admin.info("commandstats")
        calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
        return {name: n for name, n in calls.items() if name.split("|")[0] not in ADMIN}

    def during(self, action: Callable[[], T]) -> tuple[T, dict[str, int]]:
        self.reset()
        result = action()
        return result, self.count()


@pytest.fixture
def commands(redis_server: RedisServer) -> Iterator[Commands]:
    counter = Commands(redis_server)
    yield counter
    counter.admin.close()


WAITS = [
    ("wait_for_orchestration_completion", "done", OrchestrationStatus.COMPLETED),
    ("wait_for_orchestration_start", "running", OrchestrationStatus.RUNNING),
    ("wait_for_orchestration_start", "done", OrchestrationStatus.COMPLETED),
]


@pytest.mark.parametrize(("method", "which", "status"), WAITS)
def test_a_sync_wait_that_is_already_satisfied_sends_one_command(
    redis_server: RedisServer,
    hub: str,
    instances: dict[str, str],
    commands: Commands,
    method: str,
    which: str,
    status: OrchestrationStatus,
) -> None:
    iid = instances[which]
    with Client(redis_server.url, hub=hub) as client:
        wait = getattr(client, method)
        wait(iid, timeout=10)  # connected: the count below is the steady state
        state, sent = commands.during(lambda: wait(iid, timeout=10))
    assert (state.instance_id, state.runtime_status) == (iid, status)
    assert sent == {"hgetall": 1}


@pytest.mark.parametrize(("method", "which", "status"), WAITS)
def test_an_async_wait_that_is_already_satisfied_sends_one_command(
    redis_server: RedisServer,
    hub: str,
    instances: dict[str, str],
    commands: Commands,
    method: str,
    which: str,
    status: OrchestrationStatus,
) -> None:
    iid = instances[which]

    async def scenario() -> tuple[OrchestrationState, dict[str, int]]:
        async with AsyncClient(redis_server.url, hub=hub) as client:
            wait = getattr(client, method)
            await wait(iid, timeout=10)
            commands.reset()  # (blocking calls: nothing else runs on this loop meanwhile)
            state = await wait(iid, timeout=10)
            return state, commands.count()

    state, sent = asyncio.run(scenario())
    assert (state.instance_id, state.runtime_status) == (iid, status)
    assert sent == {"hgetall": 1}


def test_the_sync_client_starts_and_reads_in_one_command_each(
    redis_server: RedisServer, hub: str, instances: dict[str, str], commands: Commands
) -> None:
    with Client(redis_server.url, hub=hub) as client:
        client.get_orchestration_state(instances["done"])
        state, sent = commands.during(lambda: client.get_orchestration_state(instances["done"]))
        assert state is not None and state.output == [1, "two"]
        assert sent == {"hgetall": 1}
        iid, sent = commands.during(lambda: client.schedule_new_orchestration("once", input=3))
        # one EVALSHA: the counts include the commands the start script runs inside Redis, the
        # same for every start of a new instance
        assert sent["evalsha"] == 1
        assert sent == _async_start_commands(redis_server.url, hub, commands)
        pending = client.get_orchestration_state(iid)
        assert pending is not None and pending.runtime_status == OrchestrationStatus.PENDING
        assert client.get_orchestration_state("no-such-instance") is None


def _async_start_commands(url: str, hub: str, commands: Commands) -> dict[str, int]:
    async def start() -> dict[str, int]:
        async with AsyncClient(url, hub=hub) as client:
            await client.get_orchestration_state("warm-up")
            commands.reset()
            await client.schedule_new_orchestration("once", input=3)
            return commands.count()

    return asyncio.run(start())


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_large_output_is_read_in_full(
    redis_server: RedisServer, hub: str, instances: dict[str, str], kind: str
) -> None:
    """An output stored apart from the instance costs a second read; the wait still returns it."""
    iid = instances["big"]
    if kind == "sync":
        with Client(redis_server.url, hub=hub) as client:
            state = client.wait_for_orchestration_completion(iid, timeout=10)
    else:

        async def wait() -> OrchestrationState:
            async with AsyncClient(redis_server.url, hub=hub) as client:
                return await client.wait_for_orchestration_completion(iid, timeout=10)

        state = asyncio.run(wait())
    assert state.output == "x" * 100_000


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_wait_that_must_block_returns_on_the_change_or_times_out(
    redis_server: RedisServer, hub: str, instances: dict[str, str], kind: str
) -> None:
    iid = instances["running"]
    if kind == "sync":
        with Client(redis_server.url, hub=hub) as client:
            began = time.monotonic()
            with pytest.raises(TimeoutError, match=r"within 0\.3s"):
                client.wait_for_orchestration_completion(iid, timeout=0.3)
            assert 0.25 <= time.monotonic() - began < 5
            with _worker(redis_server.url, hub):
                client.raise_orchestration_event(iid, "go", data=5)
                state = client.wait_for_orchestration_completion(iid, timeout=30)
    else:

        async def scenario() -> OrchestrationState:
            async with AsyncClient(redis_server.url, hub=hub) as client:
                began = time.monotonic()
                with pytest.raises(TimeoutError, match=r"within 0\.3s"):
                    await client.wait_for_orchestration_completion(iid, timeout=0.3)
                assert 0.25 <= time.monotonic() - began < 5
                await client.raise_orchestration_event(iid, "go", data=5)
                return await client.wait_for_orchestration_completion(iid, timeout=30)

        with _worker(redis_server.url, hub):
            state = asyncio.run(scenario())
    assert (state.runtime_status, state.output) == (OrchestrationStatus.COMPLETED, 5)


def test_a_sync_wait_on_a_server_that_stopped_answering_times_out_on_time(
    redis_server: RedisServer, hub: str, instances: dict[str, str]
) -> None:
    """The direct read is bounded by the wait's timeout: a paused server (SIGSTOP) must not hold
    the caller for the connection's 30 s socket timeout."""
    with Client(redis_server.url, hub=hub) as client:
        client.wait_for_orchestration_start(instances["done"], timeout=10)  # connected
        assert redis_server.pid is not None
        os.kill(redis_server.pid, signal.SIGSTOP)
        try:
            began = time.monotonic()
            with pytest.raises(TimeoutError, match=r"within 0\.5s"):
                client.wait_for_orchestration_completion(instances["running"], timeout=0.5)
            assert time.monotonic() - began < 5
        finally:
            os.kill(redis_server.pid, signal.SIGCONT)
        # and the client works again once the server does
        state = client.wait_for_orchestration_completion(instances["done"], timeout=10)
        assert state.output == [1, "two"]


def test_concurrent_waits_share_their_subscribe_and_unsubscribe_commands(
    redis_server: RedisServer, hub: str, commands: Commands
) -> None:
    """500 waits that must block (no such instances yet) subscribe in a few SUBSCRIBE commands,
    not one each, and their channels are unsubscribed in a few UNSUBSCRIBE commands after."""
    count = 500

    async def scenario() -> dict[str, int]:
        async with AsyncClient(redis_server.url, hub=hub) as client:
            await client.get_orchestration_state("warm-up")
            commands.reset()

            async def wait(n: int) -> None:
                with pytest.raises(TimeoutError):
                    await client.wait_for_orchestration_completion(f"not-yet-{n}", timeout=0.5)

            await asyncio.gather(*(wait(n) for n in range(count)))
            deadline = time.monotonic() + 10
            while commands.admin.pubsub_channels() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)  # the reader unsubscribes channels left idle
            assert commands.admin.pubsub_channels() == []
            return commands.count()

    sent = asyncio.run(scenario())
    assert 1 <= sent["subscribe"] <= 20
    assert 1 <= sent["unsubscribe"] <= 20
    assert sent["hgetall"] >= count  # each wait read the state at least once
