"""The public Worker: registers code and runs partitions and activities."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar, overload

import anyio

from ._config import WorkerConfig, resolve_hub, resolve_url
from ._core.registry import Registry
from ._core.schedules import SCHEDULE_ENTITY, schedule_entity
from ._loop import LoopThread
from ._runtime.runtime import Runtime
from ._store.store import Store

F = TypeVar("F", bound=Callable[..., Any])


class Worker:
    """Runs orchestrators, activities and entities for one hub.

    ``with worker:`` runs it on a background thread; ``async with worker:`` or ``await
    worker.run()`` runs it inside an anyio/asyncio program. On exit it drains: it stops taking
    work, finishes (or hands back) what is in flight and releases its partition leases so that
    another worker takes over at once.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        hub: str | None = None,
        *,
        concurrency: int | None = None,
        config: WorkerConfig | None = None,
    ) -> None:
        self._redis_url = redis_url
        self.hub = resolve_hub(hub)
        self.config = config or WorkerConfig()
        if concurrency is not None:
            self.config.concurrency = concurrency
        self.registry = Registry()
        # Schedules are entities that any worker may own (their partition is where their id
        # hashes), so every worker runs them; the name is reserved.
        self.registry.add_entity(schedule_entity, SCHEDULE_ENTITY)
        self._runtime: Runtime | None = None
        self._thread: LoopThread | None = None
        self._future: Any = None
        self._tg: Any = None

    # -- registration ----------------------------------------------------------------------------
    def add_orchestrator(
        self, fn: Callable[..., Any], *, name: str | None = None, version: str | None = None
    ) -> str:
        """Register an orchestrator (generator or ``async def``); returns its name.

        Several versions of one name may be registered (``version="2"``). An instance is pinned to
        one version for its whole life: the one it was started with, else the newest version the
        worker running its first step has. Versions compare as dotted integers ("1.10" > "1.9"),
        otherwise as strings; an orchestrator registered without a version has version ""."""
        return self.registry.add_orchestrator(fn, name, version)

    def add_activity(self, fn: Callable[..., Any], name: str | None = None) -> str:
        """Register an activity (``def`` or ``async def``); returns its name."""
        return self.registry.add_activity(fn, name)

    def add_entity(self, fn: Any, name: str | None = None) -> str:
        """Register an entity (a function or an :class:`Entity` subclass); returns its name."""
        return self.registry.add_entity(fn, name)

    @overload
    def orchestrator(self, fn: F) -> F: ...
    @overload
    def orchestrator(
        self, fn: None = None, *, name: str | None = None, version: str | None = None
    ) -> Callable[[F], F]: ...
    def orchestrator(self, fn: Any = None, *, name: str | None = None, version: str | None = None) -> Any:
        """Decorator form of :meth:`add_orchestrator`: ``@worker.orchestrator``, or
        ``@worker.orchestrator(name="flow", version="2")``."""

        def add(f: Any, n: str | None) -> str:
            return self.add_orchestrator(f, name=n, version=version)

        return self._decorate(add, fn, name)

    @overload
    def activity(self, fn: F) -> F: ...
    @overload
    def activity(self, fn: None = None, *, name: str | None = None) -> Callable[[F], F]: ...
    def activity(self, fn: Any = None, *, name: str | None = None) -> Any:
        """Decorator form of :meth:`add_activity`."""
        return self._decorate(self.add_activity, fn, name)

    def entity(self, fn: Any = None, *, name: str | None = None) -> Any:
        """Decorator form of :meth:`add_entity`."""
        return self._decorate(self.add_entity, fn, name)

    @staticmethod
    def _decorate(add: Callable[[Any, str | None], str], fn: Any, name: str | None) -> Any:
        if fn is not None:
            add(fn, name)
            return fn

        def wrap(f: Any) -> Any:
            add(f, name)
            return f

        return wrap

    # -- facts -----------------------------------------------------------------------------------
    @property
    def worker_id(self) -> str | None:
        """This worker's id while it runs."""
        return self._runtime.worker_id if self._runtime else None

    @property
    def redis_url(self) -> str | None:
        """The Redis this worker uses: the URL it was given (None: ``$DURABLE_REDIS_URL``, else an
        embedded Redis), and once it runs, the URL that was resolved. Set it before the worker
        starts to point it elsewhere."""
        return self._redis_url

    @redis_url.setter
    def redis_url(self, url: str | None) -> None:
        if self._runtime is not None:
            raise RuntimeError("the worker is running: set redis_url before it starts")
        self._redis_url = url

    @property
    def owned_partitions(self) -> list[int]:
        """Partitions whose lease this worker holds right now."""
        return self._runtime.owned_partitions() if self._runtime else []

    # -- async lifecycle -------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask a running worker to drain and stop, as SIGTERM does under ``durable worker``: it stops
        taking work, finishes (or hands back) what is in flight and releases its leases. Returns at
        once; :meth:`run` returns (or the ``with`` block's exit completes) when the drain is done.
        Call it from the worker's event loop, or from any thread when it runs in the background
        (:meth:`start`). Does nothing when the worker is not running."""
        rt = self._runtime
        if rt is None:
            return
        if self._thread is not None:
            self._thread.call_soon(rt.request_stop)
        else:
            rt.request_stop()

    def _make_runtime(self) -> Runtime:
        url = resolve_url(self._redis_url)
        self._redis_url = url
        store = Store.from_url(url, self.hub)
        rt = Runtime(store, url, self.registry, self.config)
        self._runtime = rt
        return rt

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled (or until :meth:`stop`), then drain."""
        rt = self._make_runtime()
        rt.prepare()
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                await rt.run(task_status=task_status)
        finally:
            with anyio.CancelScope(shield=True):
                await rt.store.close()

    async def __aenter__(self) -> Worker:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        await self._tg.start(self._run_started)
        return self

    async def _run_started(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        await self.run(task_status=task_status)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.request_stop()
        await self._tg.__aexit__(exc_type, exc, tb)

    # -- sync lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Start on a background thread; returns once the worker is running."""
        if self._thread is not None:
            raise RuntimeError("worker already started")
        self._thread = LoopThread("durable-worker")
        started: Any = None

        async def main() -> None:
            nonlocal started
            async with anyio.create_task_group() as tg:
                await tg.start(self._run_started)
                started.set_result(True)

        import concurrent.futures

        started = concurrent.futures.Future()
        self._future = self._thread.submit(main())
        done, _ = concurrent.futures.wait([started, self._future], return_when="FIRST_COMPLETED")
        if self._future in done and not started.done():
            self._future.result()  # raises the startup error

    def stop(self, timeout: float | None = None) -> None:
        """Drain and stop the background worker started by :meth:`start`."""
        if self._thread is None:
            return
        self.request_stop()
        try:
            self._future.result(timeout if timeout is not None else self.config.drain_timeout + 30)
        finally:
            self._thread.close()
            self._thread = None

    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
