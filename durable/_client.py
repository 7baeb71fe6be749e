"""The asynchronous client, AsyncClient (the synchronous Client in _sync_client wraps it)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import time
import uuid
from collections.abc import Callable, Collection, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
from redis.exceptions import RedisError

from ._config import ENV_DURABILITY, resolve_hub, resolve_url
from ._core import events as ev
from ._core.entities import EntityId, EntityRecord, EntitySignal, EntityState
from ._core.model import (
    OrchestrationAlreadyExistsError,
    OrchestrationNotFoundError,
    OrchestrationState,
    OrchestrationStatus,
    datetime_to_ms,
    encode_tags,
)
from ._core.registry import check_version, name_of
from ._core.serialization import decode, encode, pack_record
from ._query import AsyncQueries, resolved, state_from
from ._runtime import tracing
from ._runtime.schedule_client import AsyncScheduleMethods
from ._store import lifecycle
from ._store.store import StartOutcome, Store

if TYPE_CHECKING:
    from ._store.notify import StatusNotifier


def is_started(state: OrchestrationState) -> bool:
    return state.runtime_status != OrchestrationStatus.PENDING


def is_finished(state: OrchestrationState) -> bool:
    return state.runtime_status.is_terminal


#: announced statuses a wait for the start / the completion cannot end on (it reads on any other)
NOT_STARTED = frozenset({OrchestrationStatus.PENDING.value.encode()})
NOT_FINISHED = frozenset(s.value.encode() for s in OrchestrationStatus if not s.is_terminal)


#: how long a start waits for the termination of the unfinished instance it replaces
_REPLACE_SECONDS = 60.0
_FINISHED = tuple(s.value.encode() for s in OrchestrationStatus if s.is_terminal)


def _replaceable(statuses: Collection[OrchestrationStatus]) -> list[str]:
    """The status values a start's ``replace`` names, as the instance record spells them."""
    out = [OrchestrationStatus(s).value for s in statuses]
    if OrchestrationStatus.RUNNING.value in out:
        out.append(OrchestrationStatus.CONTINUED_AS_NEW.value)
    return out


class AsyncClient(AsyncQueries, AsyncScheduleMethods):
    """Starts, queries and controls orchestrations (and signals entities, and manages schedules) of
    one hub."""

    def __init__(
        self, redis_url: str | None = None, hub: str | None = None, *, durability: str | None = None
    ) -> None:
        self._redis_url = redis_url
        self.hub = resolve_hub(hub)
        self.durability = durability or os.environ.get(ENV_DURABILITY, "fast")
        if self.durability not in ("fast", "strict"):
            raise ValueError(f"durability must be 'fast' or 'strict', not {self.durability!r}")
        self._store: Store | None = None
        self._notifier: StatusNotifier | None = None
        self._store_lock = anyio.Lock()
        #: wall-clock milliseconds (a test environment substitutes its own clock)
        self._now_ms: Callable[[], int] = lambda: int(time.time() * 1000)

    async def _get_store(self) -> Store:
        if self._store is not None:
            return self._store
        async with self._store_lock:  # concurrent first calls share one store (and one pool)
            return await self._create_store()

    async def _create_store(self) -> Store:
        if self._store is None:
            store = Store.from_url(resolve_url(self._redis_url), self.hub)
            await store.ensure_hub()
            if self.durability == "strict":
                # starts, events and purges return once the replicas have them
                await store.enable_strict(None, 5_000)
            self._store = store
        return self._store

    async def close(self) -> None:
        """Close the Redis connections."""
        if self._notifier is not None:
            await self._notifier.close()
            self._notifier = None
        if self._store is not None:
            await self._store.close()
            self._store = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- orchestrations --------------------------------------------------------------------------
    async def schedule_new_orchestration(
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
        """Start an orchestration (now, or at ``start_at``); returns its instance id.

        ``tags`` (short strings) are kept with the instance and can be filtered on
        (:meth:`list_orchestrations`). ``version`` pins the instance to that version of the
        orchestrator; None pins it, at its first step, to the newest version registered by the
        worker that runs that step. A worker that lacks the version never runs the instance: it
        waits for one that has it. Raises SerializationError for an input msgpack cannot carry
        and OrchestrationAlreadyExistsError when an instance with that id is still running.

        ``replace`` (the id reuse policy): the statuses of an existing instance with that id that
        this start replaces (None: the finished ones, COMPLETED, FAILED and TERMINATED; RUNNING
        covers CONTINUED_AS_NEW); another status raises OrchestrationAlreadyExistsError. An
        unfinished instance that may be replaced is terminated (recursively) first, and replaced
        once its termination is committed; a start that takes the id meanwhile is judged by the
        same rule. TimeoutError when the termination is not applied within a minute (it still
        will be; the new instance is not started).
        """
        name = name_of(orchestrator, "orchestrator")
        version = check_version(version)
        iid = instance_id or uuid.uuid4().hex
        if not iid or iid.startswith("@"):
            raise ValueError(f"invalid instance id {iid!r} (must be non-empty and not start with '@')")
        data = encode(input, what=f"input of orchestration {name!r}")
        tag_text = encode_tags(tags)
        store = await self._get_store()
        created = self._now_ms()
        exec_id = uuid.uuid4().hex
        body: dict[str, Any] = {
            "kind": ev.MSG_START,
            "target": iid,
            "name": name,
            "input": data,
            "exec": exec_id,
            "created": created,
        }
        if tag_text:
            body["tags"] = tag_text
        if version is not None:
            body["ver"] = version
        scheduled = None
        if start_at is not None:
            scheduled = datetime_to_ms(start_at)
            if scheduled <= created:
                scheduled = None
        span_attributes = {"durable.instance_id": iid, "durable.orchestration.name": name}
        with tracing.client_span(f"create_orchestration:{name}", span_attributes) as traceparent:
            if traceparent is not None:
                body["traceparent"] = traceparent
            try:
                outcome = await self._start_replacing(store, body, scheduled, replace)
            except TimeoutError:
                raise TimeoutError(
                    f"the orchestration {iid!r} that this start replaces was not terminated within "
                    f"{_REPLACE_SECONDS}s (it will be; the new instance was not started)"
                ) from None
        if outcome.code == 0:
            why = "is not finished" if replace is None else f"is {outcome.status}, which may not be replaced"
            raise OrchestrationAlreadyExistsError(
                f"an orchestration with id {iid!r} already exists and {why}"
            )
        return iid

    async def _start_replacing(
        self,
        store: Store,
        body: dict[str, Any],
        scheduled: int | None,
        replace: Collection[OrchestrationStatus] | None,
    ) -> StartOutcome:
        """The start script's outcome; an unfinished instance that may be replaced is terminated,
        and the start tried again (a new creation time) once the termination is committed."""
        iid = str(body["target"])
        replaceable = None if replace is None else _replaceable(replace)
        replaces = ""
        with anyio.fail_after(_REPLACE_SECONDS):
            while True:
                outcome = await store.start_instance(
                    iid, str(body["name"]), pack_record(body), body["input"], body["created"],
                    scheduled, str(body["exec"]), body.get("tags", ""), body.get("ver"),
                    replaceable, replaces,
                )  # fmt: skip
                if outcome.code != 2:
                    return outcome
                replaces = outcome.execution or ""
                # the terminate names the execution: it can never end one started meanwhile
                terminate = {"kind": ev.MSG_TERMINATE, "output": None, "recursive": True, "exec": replaces}
                with contextlib.suppress(OrchestrationNotFoundError):  # purged meanwhile
                    await self._send(iid, terminate)
                await self._wait_replaced(iid, replaces)
                body["created"] = self._now_ms()

    async def _wait_replaced(self, instance_id: str, execution: str) -> None:
        """Until the execution ``execution`` of the instance finished, or is gone (replaced or
        purged); the caller bounds the wait."""
        store = await self._get_store()
        if self._notifier is None:
            self._notifier = store.status_notifier()
        channel = store.keys.status_channel(instance_id)
        event = await self._notifier.register(channel)
        try:
            while True:
                event.clear()
                fields = await store.get_instance(instance_id) or {}
                if fields.get(b"exec", b"").decode() != execution or fields.get(b"status") in _FINISHED:
                    return
                # wake on a status change, or re-check periodically in case a hint is lost
                with anyio.move_on_after(1.0):
                    await event.wait()
        finally:
            with anyio.CancelScope(shield=True):
                await self._notifier.unregister(channel, event)

    async def get_orchestration_state(self, instance_id: str) -> OrchestrationState | None:
        """The instance's current state, or None if there is no such instance."""
        store = await self._get_store()
        fields = await store.get_instance(instance_id)
        if not fields or b"status" not in fields:
            return None
        return state_from(instance_id, await resolved(store, fields))

    async def get_orchestration_history(self, instance_id: str) -> list[dict[str, Any]]:
        """The recorded history events of the instance's current execution (payloads decoded)."""
        store = await self._get_store()
        events = await store.get_history(instance_id)
        for e in events:
            for key in ("input", "result", "output"):
                if isinstance(e.get(key), bytes):
                    e[key] = decode(await store.resolve(e[key]))
        return events

    async def _wait(
        self,
        instance_id: str,
        timeout: float,
        done: Callable[[OrchestrationState], bool],
        *,
        cannot_end: frozenset[bytes] = frozenset(),
        read_first: bool = True,
        stated_timeout: float | None = None,
    ) -> OrchestrationState:
        """The state once ``done`` holds. An instance already there costs one read (one round
        trip); otherwise the wait subscribes to its status channel, then reads again (the change
        may have come before the subscription) and after every announcement of a status not in
        ``cannot_end``. ``read_first=False``: the caller has just read it. ``stated_timeout``: the
        timeout the error message names."""
        store = await self._get_store()
        try:
            with anyio.fail_after(timeout):
                if read_first:
                    try:
                        state = await self.get_orchestration_state(instance_id)
                    except (RedisError, OSError):
                        state = None  # Redis restarting: the loop below keeps trying
                    if state is not None and done(state):
                        return state
                return await self._wait_subscribed(store, instance_id, done, cannot_end)
        except TimeoutError:
            raise TimeoutError(
                f"orchestration {instance_id!r} did not reach the expected state within "
                f"{timeout if stated_timeout is None else stated_timeout}s"
            ) from None

    async def _wait_subscribed(
        self,
        store: Store,
        instance_id: str,
        done: Callable[[OrchestrationState], bool],
        cannot_end: frozenset[bytes],
    ) -> OrchestrationState:
        if self._notifier is None:
            self._notifier = store.status_notifier()
        notifier = self._notifier
        channel = store.keys.status_channel(instance_id)
        event = await notifier.register(channel)
        failures = 0
        try:
            while True:
                event.clear()
                try:
                    state = await self.get_orchestration_state(instance_id)
                    failures = 0
                except (RedisError, OSError):
                    # Redis restarting or unreachable: keep waiting until the deadline
                    failures += 1
                    await anyio.sleep(min(0.05 * 2**failures, 1.0))
                    continue
                if state is not None and done(state):
                    return state
                # wake on a status change, or re-check periodically in case a hint is lost
                with anyio.move_on_after(1.0):
                    await event.wait()
                    while event.status in cannot_end:
                        event.clear()  # announced a status the wait cannot end on: no read
                        await event.wait()
        finally:
            with anyio.CancelScope(shield=True):
                await notifier.unregister(channel, event)

    async def wait_for_orchestration_start(
        self, instance_id: str, *, timeout: float = 60
    ) -> OrchestrationState:
        """Wait until the instance has left PENDING; raises TimeoutError."""
        return await self._wait(instance_id, timeout, is_started, cannot_end=NOT_STARTED)

    async def wait_for_orchestration_completion(
        self, instance_id: str, *, timeout: float = 60
    ) -> OrchestrationState:
        """Wait until the instance completed, failed or was terminated; raises TimeoutError."""
        return await self._wait(instance_id, timeout, is_finished, cannot_end=NOT_FINISHED)

    async def _send(self, instance_id: str, body: dict[str, Any]) -> None:
        store = await self._get_store()
        body["target"] = instance_id
        traceparent = tracing.current_traceparent()
        if traceparent is not None:
            body["traceparent"] = traceparent
        if not await store.send_to_instance(instance_id, pack_record(body)):
            raise OrchestrationNotFoundError(f"no orchestration with id {instance_id!r}")

    async def raise_orchestration_event(self, instance_id: str, event_name: str, *, data: Any = None) -> None:
        """Deliver an external event; it is buffered until the orchestration waits for it.

        Raises OrchestrationNotFoundError when no instance has this id (never started, or purged).
        An event for an instance that has finished is accepted and discarded, as in Durable
        Functions: an event can always cross the instance's completion, so returning means the
        event was delivered, not that the orchestration used it.
        """
        payload = encode(data, what=f"data of event {event_name!r}")
        await self._send(instance_id, {"kind": ev.MSG_EVENT, "name": event_name, "input": payload})

    async def terminate_orchestration(
        self, instance_id: str, *, output: Any = None, recursive: bool = True
    ) -> None:
        """Stop the instance; its status becomes TERMINATED with ``output``. With ``recursive``
        its sub-orchestrations still running are terminated too, transitively."""
        payload = encode(output, what="termination output")
        body = {"kind": ev.MSG_TERMINATE, "output": payload, "recursive": recursive}
        await self._send(instance_id, body)

    async def suspend_orchestration(self, instance_id: str, *, reason: str | None = None) -> None:
        """Pause the instance; events that arrive meanwhile are kept and applied on resume."""
        await self._send(instance_id, {"kind": ev.MSG_SUSPEND, "reason": reason})

    async def resume_orchestration(self, instance_id: str, *, reason: str | None = None) -> None:
        """Resume a suspended instance."""
        await self._send(instance_id, {"kind": ev.MSG_RESUME, "reason": reason})

    async def purge_orchestration(self, instance_id: str, *, recursive: bool = True) -> bool:
        """Delete a finished instance and everything it owns (history, state, large payloads);
        with ``recursive``, its sub-orchestrations too, transitively. False if there is no such
        instance. Raises ValueError when it (or a sub-orchestration) has not finished: terminate
        it first."""
        store = await self._get_store()
        purged, running = await lifecycle.purge_tree(store, instance_id, recursive=recursive)
        if running is not None:
            detail = "" if running == instance_id else f" (a sub-orchestration of {instance_id!r})"
            raise ValueError(
                f"orchestration {running!r}{detail} is still running; terminate it before purging"
            )
        return purged

    async def purge_orchestrations(
        self,
        *,
        status: OrchestrationStatus | str | list[OrchestrationStatus | str] | None = None,
        name: str | None = None,
        created_from: _dt.datetime | None = None,
        created_to: _dt.datetime | None = None,
        timeout: float = 300.0,
    ) -> int:
        """Purge the terminal instances that match the filters (status: terminal ones only) and
        return how many were purged. Each partition's owner purges its part in bounded batches;
        this waits until every partition has answered (TimeoutError after ``timeout`` seconds: are
        workers running?)."""
        low = datetime_to_ms(created_from) if created_from else None
        high = datetime_to_ms(created_to) if created_to else None
        return await lifecycle.purge_matching(await self._get_store(), status, name, low, high, timeout)

    async def rewind_orchestration(
        self, instance_id: str, *, reason: str | None = None, timeout: float = 60.0
    ) -> None:
        """Bring a FAILED instance back to RUNNING: its failed activity and sub-orchestration calls
        are forgotten and run again (a failed sub-orchestration is rewound in turn); successful
        steps are not run again. Returns once a worker applied it (TimeoutError after ``timeout``
        seconds; it is still applied later). Raises ValueError when the instance has not failed,
        or when it cannot be rewound (the message says why)."""
        before = await self.get_orchestration_state(instance_id)
        if before is None:
            raise OrchestrationNotFoundError(f"no orchestration with id {instance_id!r}")
        if before.runtime_status != OrchestrationStatus.FAILED:
            raise ValueError(
                f"only a FAILED orchestration can be rewound; {instance_id!r} is {before.runtime_status}"
            )
        await self._send(instance_id, {"kind": ev.MSG_REWIND, "reason": reason})
        after = await self._wait(
            instance_id,
            timeout,
            lambda s: s.runtime_status != before.runtime_status or s.last_updated_at > before.last_updated_at,
        )
        refused = after.failure_details if after.runtime_status == OrchestrationStatus.FAILED else None
        if refused is not None and refused.error_type == "RewindError":
            raise ValueError(refused.message)

    async def restart_orchestration(self, instance_id: str, *, new_instance_id: bool = False) -> str:
        """Start a finished instance again with the same input, as a new execution under the same
        id (its old history is replaced) or, with ``new_instance_id``, under a new id; returns
        the id. Raises ValueError when the instance has not finished."""
        state = await self.get_orchestration_state(instance_id)
        if state is None:
            raise OrchestrationNotFoundError(f"no orchestration with id {instance_id!r}")
        if not state.runtime_status.is_terminal:
            raise ValueError(
                f"only a finished orchestration can be restarted; {instance_id!r} is {state.runtime_status}"
            )
        target = uuid.uuid4().hex if new_instance_id else instance_id
        return await self.schedule_new_orchestration(state.name, input=state.input, instance_id=target)

    # -- entities --------------------------------------------------------------------------------
    async def signal_entity(
        self,
        entity_id: EntityId | str,
        operation: str,
        *,
        input: Any = None,
        signal_at: _dt.datetime | None = None,
        signal_id: str | None = None,
    ) -> str:
        """Send a one-way operation to an entity (durable); returns the signal id.

        The entity applies a signal id once: when a send's outcome is unknown, retry it with the
        same ``signal_id``. ``signal_at`` delays the operation until that time (Redis clock).
        Concurrent calls share round trips to Redis (automatic pipelining); to send many signals
        at once, :meth:`signal_entities` is cheaper still.
        """
        sid = signal_id or os.urandom(16).hex()
        target, message = _signal_message(entity_id, operation, input, sid, signal_at)
        store = self._store or await self._get_store()
        await store.send_message(target, message)
        return sid

    async def signal_entities(
        self, signals: Iterable[EntitySignal | tuple[EntityId | str, str, Any]]
    ) -> list[str]:
        """Send many one-way operations at once: one round trip to Redis for the lot; returns the
        signal ids, in order.

        Each item is ``(entity_id, operation, input)`` or an :class:`EntitySignal` (which can also
        carry a ``signal_id`` and a ``signal_at``). Each signal is independent, exactly as if sent
        by :meth:`signal_entity`: applied once per signal id, in order per entity for the signals
        of one call. When the call fails, some signals may have been sent: retry the same
        ``EntitySignal`` items with the ids this call would have returned (give each a
        ``signal_id``) and the entities drop the ones they already have.
        """
        ids: list[str] = []
        messages: list[tuple[str, bytes]] = []
        for item in signals:
            at: _dt.datetime | None = None
            if len(item) == 3:
                entity_id, operation, value = item
                sid = os.urandom(16).hex()
            else:
                entity_id, operation, value, given, at = item
                sid = given or os.urandom(16).hex()
            messages.append(_signal_message(entity_id, operation, value, sid, at))
            ids.append(sid)
        if messages:
            store = self._store or await self._get_store()
            await store.send_messages(messages)
        return ids

    async def get_entity(self, entity_id: EntityId | str) -> EntityState | None:
        """The entity's state, or None if it does not exist (never set, or deleted)."""
        eid = EntityId.of(entity_id)
        target = str(eid)
        store = await self._get_store()
        pk = store.keys_for(target)
        main, side = await store.load_records(pk.index, [pk.entity(target), pk.entity_control(target)])
        return EntityRecord.from_fields(main, side).to_state(eid)


def _signal_message(
    entity_id: EntityId | str, operation: str, value: Any, sid: str, signal_at: _dt.datetime | None
) -> tuple[str, bytes]:
    """(target, encoded message) of one client signal."""
    target = str(entity_id) if entity_id.__class__ is EntityId else str(EntityId.of(entity_id))
    msg: dict[str, Any] = {
        "kind": ev.MSG_SIGNAL,
        "target": target,
        "op": operation,
        "input": _NONE
        if value is None
        else encode(value, what=f"input of operation {operation!r} on {target}"),
        "id": sid,
    }
    if signal_at is not None:
        msg["at"] = datetime_to_ms(signal_at)
    traceparent = tracing.current_traceparent()  # the entity's span joins the caller's trace
    if traceparent is not None:
        msg["traceparent"] = traceparent
    return target, pack_record(msg)


_NONE = encode(None)
