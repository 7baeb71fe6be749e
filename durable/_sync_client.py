"""The synchronous client: :class:`Client`, a blocking facade over :class:`AsyncClient`.

Calls run on the async client's code on an event loop owned by a daemon thread, except the ones
that are a single command -- read an instance's state, a wait whose instance is already there:
those go from the calling thread on a blocking connection (:class:`DirectRedis`), which costs a
fraction of the hop to the loop thread (standalone Redis; on a Redis Cluster every call takes the
loop).
"""

from __future__ import annotations

import datetime as _dt
import functools
import threading
import time
from collections.abc import Callable, Collection, Coroutine, Iterable
from types import TracebackType
from typing import Any, TypeVar

from redis.exceptions import RedisError

from ._client import NOT_FINISHED, NOT_STARTED, AsyncClient, is_finished, is_started
from ._config import resolve_url
from ._core.entities import EntityId, EntitySignal, EntityState
from ._core.model import OrchestrationState, OrchestrationStatus
from ._core.serialization import is_blob_ref
from ._loop import LoopThread
from ._query import SyncQueries, state_from
from ._runtime import tracing
from ._runtime.schedule_client import ScheduleMethods
from ._store.direct import DirectRedis
from ._store.store import Store

T = TypeVar("T")


async def _with_trace_context(captured: Any, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the coroutine ``make()`` with the trace context captured on the caller's thread."""
    with tracing.attached(captured):
        return await make()


class Client(SyncQueries, ScheduleMethods):
    """Synchronous client; the same methods as :class:`AsyncClient`, blocking."""

    _async: AsyncClient
    _thread: LoopThread | None
    #: single-command calls (start, read a state, a wait that finds its instance there) go from
    #: the calling thread on a blocking connection, without the hop to the loop thread; None:
    #: not connected yet, or not available (Redis Cluster, an in-process test hub)
    _direct: DirectRedis | None = None
    _direct_ok = False

    def __init__(
        self, redis_url: str | None = None, hub: str | None = None, *, durability: str | None = None
    ) -> None:
        self._async = AsyncClient(redis_url, hub, durability=durability)
        self.hub = self._async.hub
        self._thread = LoopThread("durable-client")
        self._direct_ok = True
        self._direct_lock = threading.Lock()

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._thread is None:
            raise RuntimeError("client is closed")
        # the caller's trace context goes along (its active span is the parent of ours)
        call = functools.partial(fn, *args, **kwargs)
        return self._thread.run(_with_trace_context(tracing.capture(), call))

    def _direct_store(self) -> tuple[DirectRedis, Store] | None:
        """The direct connection and the store (for its key layout), or None: use the loop."""
        if self._thread is None:
            raise RuntimeError("client is closed")
        direct, store = self._direct, self._async._store
        if direct is not None and store is not None:
            return direct, store
        if not self._direct_ok:
            return None
        with self._direct_lock:
            store = self._call(self._async._get_store)  # connects, learns the hub's layout
            if self._direct is None and self._direct_ok:
                if store.cluster:
                    self._direct_ok = False
                else:
                    self._direct = DirectRedis(resolve_url(self._async._redis_url))
            return None if self._direct is None else (self._direct, store)

    def _read_state(self, instance_id: str, timeout: float | None = None) -> OrchestrationState | None:
        """The instance's state read directly; None when there is none. Raises LookupError
        (unanswered: no direct connection, or a payload stored apart, read through the loop)."""
        got = self._direct_store()
        if got is None:
            raise LookupError("no direct connection")
        direct, store = got
        fields = direct.hgetall(store.keys_for(instance_id).instance(instance_id), timeout)
        if not fields or b"status" not in fields:
            return None
        if any(is_blob_ref(fields.get(k)) for k in (b"input", b"output", b"custom")):
            raise LookupError("a payload is stored apart")
        return state_from(instance_id, fields)

    def _wait(
        self,
        instance_id: str,
        timeout: float,
        done: Callable[[OrchestrationState], bool],
        cannot_end: frozenset[bytes],
    ) -> OrchestrationState:
        """One direct read when the instance is already there; else the loop's wait."""
        deadline = time.monotonic() + timeout
        read = False
        try:
            state = self._read_state(instance_id, timeout)
            read = True
            if state is not None and done(state):
                return state
        except (LookupError, RedisError, OSError):
            pass  # not answered here: the loop's wait reads (and retries through restarts)
        return self._call(  # type: ignore[no-any-return]
            self._async._wait,
            instance_id,
            max(0.0, deadline - time.monotonic()),
            done,
            cannot_end=cannot_end,
            read_first=not read,
            stated_timeout=timeout,
        )

    def close(self) -> None:
        """Close connections and the client's background thread."""
        if self._thread is not None:
            self._thread.run(self._async.close())
            self._thread.close()
            self._thread = None
        with self._direct_lock:
            if self._direct is not None:
                self._direct.close()
                self._direct = None

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def schedule_new_orchestration(
        self,
        orchestrator: Callable[..., Any] | str,
        *,
        input: Any = None,
        instance_id: str | None = None,
        start_at: _dt.datetime | None = None,
        tags: dict[str, str] | None = None,
        version: str | None = None,
        replace: Collection[OrchestrationStatus] | None = None,
    ) -> str:
        """See :meth:`AsyncClient.schedule_new_orchestration`."""
        return str(
            self._call(
                self._async.schedule_new_orchestration,
                orchestrator,
                input=input,
                instance_id=instance_id,
                start_at=start_at,
                tags=tags,
                version=version,
                replace=replace,
            )
        )

    def get_orchestration_state(self, instance_id: str) -> OrchestrationState | None:
        """See :meth:`AsyncClient.get_orchestration_state`."""
        try:
            return self._read_state(instance_id)
        except LookupError:
            return self._call(self._async.get_orchestration_state, instance_id)  # type: ignore[no-any-return]

    def get_orchestration_history(self, instance_id: str) -> list[dict[str, Any]]:
        """See :meth:`AsyncClient.get_orchestration_history`."""
        return self._call(self._async.get_orchestration_history, instance_id)  # type: ignore[no-any-return]

    def wait_for_orchestration_start(self, instance_id: str, *, timeout: float = 60) -> OrchestrationState:
        """See :meth:`AsyncClient.wait_for_orchestration_start`."""
        return self._wait(instance_id, timeout, is_started, NOT_STARTED)

    def wait_for_orchestration_completion(
        self, instance_id: str, *, timeout: float = 60
    ) -> OrchestrationState:
        """See :meth:`AsyncClient.wait_for_orchestration_completion`."""
        return self._wait(instance_id, timeout, is_finished, NOT_FINISHED)

    def raise_orchestration_event(self, instance_id: str, event_name: str, *, data: Any = None) -> None:
        """See :meth:`AsyncClient.raise_orchestration_event`."""
        self._call(self._async.raise_orchestration_event, instance_id, event_name, data=data)

    def terminate_orchestration(
        self, instance_id: str, *, output: Any = None, recursive: bool = True
    ) -> None:
        """See :meth:`AsyncClient.terminate_orchestration`."""
        self._call(self._async.terminate_orchestration, instance_id, output=output, recursive=recursive)

    def suspend_orchestration(self, instance_id: str, *, reason: str | None = None) -> None:
        """See :meth:`AsyncClient.suspend_orchestration`."""
        self._call(self._async.suspend_orchestration, instance_id, reason=reason)

    def resume_orchestration(self, instance_id: str, *, reason: str | None = None) -> None:
        """See :meth:`AsyncClient.resume_orchestration`."""
        self._call(self._async.resume_orchestration, instance_id, reason=reason)

    def purge_orchestration(self, instance_id: str, *, recursive: bool = True) -> bool:
        """See :meth:`AsyncClient.purge_orchestration`."""
        return bool(self._call(self._async.purge_orchestration, instance_id, recursive=recursive))

    def purge_orchestrations(
        self,
        *,
        status: OrchestrationStatus | str | list[OrchestrationStatus | str] | None = None,
        name: str | None = None,
        created_from: _dt.datetime | None = None,
        created_to: _dt.datetime | None = None,
        timeout: float = 300.0,
    ) -> int:
        """See :meth:`AsyncClient.purge_orchestrations`."""
        return int(
            self._call(
                self._async.purge_orchestrations,
                status=status,
                name=name,
                created_from=created_from,
                created_to=created_to,
                timeout=timeout,
            )
        )

    def rewind_orchestration(
        self, instance_id: str, *, reason: str | None = None, timeout: float = 60.0
    ) -> None:
        """See :meth:`AsyncClient.rewind_orchestration`."""
        self._call(self._async.rewind_orchestration, instance_id, reason=reason, timeout=timeout)

    def restart_orchestration(self, instance_id: str, *, new_instance_id: bool = False) -> str:
        """See :meth:`AsyncClient.restart_orchestration`."""
        return str(
            self._call(self._async.restart_orchestration, instance_id, new_instance_id=new_instance_id)
        )

    def signal_entity(
        self,
        entity_id: EntityId | str,
        operation: str,
        *,
        input: Any = None,
        signal_at: _dt.datetime | None = None,
        signal_id: str | None = None,
    ) -> str:
        """See :meth:`AsyncClient.signal_entity`."""
        return str(
            self._call(
                self._async.signal_entity,
                entity_id,
                operation,
                input=input,
                signal_at=signal_at,
                signal_id=signal_id,
            )
        )

    def signal_entities(self, signals: Iterable[EntitySignal | tuple[EntityId | str, str, Any]]) -> list[str]:
        """See :meth:`AsyncClient.signal_entities`."""
        return self._call(self._async.signal_entities, list(signals))  # type: ignore[no-any-return]

    def get_entity(self, entity_id: EntityId | str) -> EntityState | None:
        """See :meth:`AsyncClient.get_entity`."""
        return self._call(self._async.get_entity, entity_id)  # type: ignore[no-any-return]
