"""Unit-test orchestrations in milliseconds: an in-process hub with a controllable clock, and a
replay check for recorded histories.

:class:`TestEnvironment` runs one worker of your code against an in-process Redis (``fakeredis``
with its Lua support) behind the engine's own store, partition, activity and timer code, so what
runs is the real engine; nothing outside the process is touched and no ``redis-server`` is
needed. The worker's own ``redis_url`` and hub are ignored::

    from durable.testing import TestEnvironment

    with TestEnvironment(worker, time_skipping=True) as env:
        iid = env.client.schedule_new_orchestration(flow, input=1)
        state = env.client.wait_for_orchestration_completion(iid, timeout=10)

* ``time_skipping=True``: while ``env.client`` waits for an orchestration
  (``wait_for_orchestration_start``/``_completion``) and nothing is runnable (no inbox message,
  activity or step waiting to run) but a timer is pending, the clock jumps to that timer, so an
  orchestration that sleeps for 30 days finishes at once. The clock does not jump while the test
  is not waiting, so an event it raises next is never overtaken by a skipped timeout.
* ``env.advance(delta)`` moves the clock forward; timers due in that span fire now.
* ``always_replay=True``: every step replays the instance from its first event instead of using
  the replay cache, and compares the inputs of what the code schedules with the history, so
  non-determinism (a random number, the wall clock) fails the test run at once.

:func:`replay_check` replays histories (as ``Client.get_orchestration_history`` returns them, or
exported with ``durable orchestration history ID --output json``) against a worker's code.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import datetime as _dt
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import anyio

from ._client import AsyncClient
from ._core.model import OrchestrationState, ms_to_datetime
from ._core.registry import name_of
from ._core.replay import ReplayResult, replay_many
from ._core.serialization import pack_record
from ._loop import LoopThread
from ._runtime.clock import Clock
from ._runtime.runtime import Runtime
from ._store import queries as q
from ._store.store import Store, SyncLeaseRenewer
from ._sync_client import Client
from ._worker import Worker

__all__ = ["ReplayResult", "TestEnvironment", "replay_check"]

#: partitions of the environment's hub (few: one worker owns them all)
_PARTITIONS = 4
#: how often the clock-skipping loop looks for an idle hub while the test waits
_SKIP_POLL_SECONDS = 0.002


def replay_check(
    worker: Worker,
    histories: Mapping[str, Sequence[Mapping[str, Any]]] | Iterable[Sequence[Mapping[str, Any]]],
) -> list[ReplayResult]:
    """Replay recorded histories against the orchestrators ``worker`` registers, writing nothing.

    ``histories`` maps instance ids to histories, or is a sequence of histories (named
    ``history-0``, ...). A history is a list of events as :meth:`Client.get_orchestration_history`
    returns them, or as ``durable orchestration history ID --output json`` prints them. Returns
    one :class:`ReplayResult` per history; ``ok`` is False, with the reason and the first
    mismatching event, for each that the code would not replay::

        failures = [r for r in replay_check(worker, histories) if not r.ok]
        assert not failures, failures
    """
    if isinstance(histories, Mapping):
        pairs = [(str(k), [dict(e) for e in v]) for k, v in histories.items()]
    else:
        pairs = [(f"history-{n}", [dict(e) for e in h]) for n, h in enumerate(histories)]
    return replay_many(pairs, worker.registry.resolve_orchestrator, name_of, payloads_encoded=False)


async def _cancel_leftovers() -> None:
    """End what the in-process Redis still has pending (blocked reads) before its loop closes."""
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class _EnvClock(Clock):
    """The environment's clock: the wall clock plus the time skipped so far."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped_ms = 0

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.skipped_ms

    def observe(self, redis_now_ms: int) -> None:
        """This clock is the hub's clock: nothing to learn from Redis."""


class _FakeRenewer(SyncLeaseRenewer):
    """Lease renewal on the environment's in-process Redis (a thread of its own, like the real one)."""

    def __init__(self, client: Any, hub: str) -> None:
        from ._store.keys import HubKeys
        from ._store.scripts import RENEW

        self._client = client
        self._cluster = False
        self._keys = HubKeys(hub)
        self._renew = client.register_script(RENEW)


class _EnvClient(Client):
    """``env.client``: a :class:`Client` on the environment's hub and loop."""

    def __init__(self, env: TestEnvironment, store: Store) -> None:  # no super().__init__: no own loop
        self._env = env
        self._async = AsyncClient("redis://in-process", store.hub)
        self._async._store = store
        self._async._now_ms = env._clock.now_ms
        self.hub = store.hub
        self._thread = env._thread

    def close(self) -> None:
        """The environment closes its client when it exits."""

    def wait_for_orchestration_start(self, instance_id: str, *, timeout: float = 60) -> OrchestrationState:
        with self._env._waiting():
            return super().wait_for_orchestration_start(instance_id, timeout=timeout)

    def wait_for_orchestration_completion(
        self, instance_id: str, *, timeout: float = 60
    ) -> OrchestrationState:
        with self._env._waiting():
            return super().wait_for_orchestration_completion(instance_id, timeout=timeout)


class TestEnvironment:
    """One worker of your code on an in-process hub, with a clock the test controls."""

    __test__ = False  # not a pytest test class

    def __init__(self, worker: Worker, *, time_skipping: bool = False, always_replay: bool = False) -> None:
        self.worker = worker
        self.time_skipping = time_skipping
        self.always_replay = always_replay
        self.hub = f"test-{uuid.uuid4().hex[:8]}"
        self._clock = _EnvClock()
        self._thread: LoopThread | None = None
        self._client: _EnvClient | None = None
        self._runtime: Runtime | None = None
        self._store: Store | None = None
        self._waiters = 0
        self._main: concurrent.futures.Future[None] | None = None
        self._stop: anyio.Event | None = None

    # -- the test's view ---------------------------------------------------------------------
    @property
    def client(self) -> Client:
        """A :class:`~durable.Client` of the environment's hub."""
        if self._client is None:
            raise RuntimeError("the test environment is not running: use it in a 'with' block")
        return self._client

    def now(self) -> _dt.datetime:
        """The environment's clock (aware UTC): the time orchestrations and timers see."""
        return ms_to_datetime(self._clock.now_ms())

    def advance(self, delta: _dt.timedelta) -> None:
        """Move the clock forward by ``delta``; timers due in that span fire now."""
        if delta < _dt.timedelta(0):
            raise ValueError("the clock only moves forward")
        self._clock.skipped_ms += int(delta.total_seconds() * 1000)
        self._call(self._wake_due())

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> TestEnvironment:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the test environment is already running")
        try:
            import fakeredis
            import fakeredis.aioredis
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise RuntimeError(
                "durable.testing needs fakeredis with Lua support: pip install 'fakeredis[lua]'"
            ) from exc
        self._thread = LoopThread("durable-test-env")
        server = fakeredis.FakeServer()

        def store() -> Store:
            made = Store(fakeredis.aioredis.FakeRedis(server=server), self.hub)
            made.time_source = self._clock.now_ms
            return made

        config = dataclasses.replace(
            self.worker.config,
            partitions=_PARTITIONS,
            lease_ttl_ms=60_000,
            renew_interval_ms=5_000,
            balance_interval_ms=100,
            heartbeat_ttl_ms=60_000,
            poll_ms=100,
            drain_timeout=5.0,
            direct_delivery=True,
            durability="fast",
            replicas=None,
        )
        engine, client_store = store(), store()
        renewer = fakeredis.FakeRedis(server=server)
        runtime = Runtime(
            engine,
            "redis://in-process",
            self.worker.registry,
            config,
            clock=self._clock,
            renewer=lambda: _FakeRenewer(renewer, self.hub),
            always_replay=self.always_replay,
        )
        self._runtime, self._store = runtime, engine
        started: concurrent.futures.Future[bool] = concurrent.futures.Future()
        self._main = self._thread.submit(self._run(runtime, client_store, started))
        done, _ = concurrent.futures.wait([started, self._main], return_when="FIRST_COMPLETED")
        if self._main in done and not started.done():
            self._teardown()
            self._main.result()  # raises the startup error
        self._client = _EnvClient(self, client_store)

    async def _run(
        self, runtime: Runtime, client_store: Store, started: concurrent.futures.Future[bool]
    ) -> None:
        await client_store.ensure_hub(_PARTITIONS)
        runtime.prepare()
        self._stop = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(runtime.run)
                tg.start_soon(self._skip_loop)
                started.set_result(True)
                await self._stop.wait()
                runtime.request_stop()
                await runtime.stopped.wait()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await client_store.close()
                await runtime.store.close()

    def stop(self) -> None:
        """Drain the worker and close the environment (``with`` does it on exit)."""
        if self._thread is None:
            return
        stop, main = self._stop, self._main
        if stop is not None:
            self._thread.call_soon(stop.set)
        try:
            if main is not None:
                main.result(timeout=30)
        finally:
            self._teardown()

    def _teardown(self) -> None:
        if self._thread is not None:
            with contextlib.suppress(Exception):
                self._thread.run(_cancel_leftovers(), timeout=5)
            self._thread.close()
        self._thread = None
        self._client = None

    def _call(self, coro: Any) -> Any:
        if self._thread is None:
            raise RuntimeError("the test environment is not running: use it in a 'with' block")
        return self._thread.run(coro)

    # -- time skipping -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _waiting(self) -> Iterator[None]:
        self._waiters += 1
        try:
            yield
        finally:
            self._waiters -= 1

    async def _skip_loop(self) -> None:
        while True:
            await anyio.sleep(_SKIP_POLL_SECONDS)
            if self.time_skipping and self._waiters > 0:
                await self._skip_if_idle()

    async def _skip_if_idle(self) -> None:
        """Nothing runnable and a timer pending: jump to the timer."""
        store, runtime = self._store, self._runtime
        if store is None or runtime is None or runtime.activities.in_flight:
            return
        busy, due = await q.pending_work(store, sorted(runtime.caps.own))
        now = self._clock.now_ms()
        if busy or due is None or due <= now:
            return
        self._clock.skipped_ms += due - now
        await self._wake_due()

    async def _wake_due(self) -> None:
        """Tell the owners of partitions with due timers (they sleep until the timers they know of)."""
        store = self._store
        if store is None:
            return
        now = self._clock.now_ms()
        for index, due in await q.next_timers(store):
            if due is not None and due <= now:
                await store.xadd_raw(index, {"m": pack_record({"kind": "wake", "target": "", "due": due})})
