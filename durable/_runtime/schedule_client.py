"""The schedule methods of the clients (mixed into :class:`durable.AsyncClient` and
:class:`durable.Client`).

Creating, updating, pausing, resuming and deleting a schedule is a compare-and-set of the schedule
entity's record (``durable._store.schedules``), computed here with the pure state machine of
``durable._core.schedules`` on the Redis server's clock; so these calls take effect at once,
atomically, with or without a worker running, and return what they did. Triggering a run is a
signal to the entity, the only one that starts runs.
"""

from __future__ import annotations

import datetime as _dt
import functools
import time
from collections.abc import Callable
from types import EllipsisType
from typing import TYPE_CHECKING, Any

from .._core import events as ev
from .._core.calendar import trigger_id
from .._core.registry import name_of
from .._core.schedules import (
    ScheduleAlreadyExistsError,
    ScheduleDescription,
    ScheduleNotFoundError,
    ScheduleState,
    ScheduleStatus,
    check_schedule_id,
    entity_key,
    new_state,
    tick_message,
    updated_state,
)
from .._core.serialization import decode, encode, pack_record
from .._store.schedules import CONFLICT, EXISTS, NOT_FOUND, ScheduleRecord, ScheduleRecords

if TYPE_CHECKING:
    from .._store.store import Store

__all__ = ["AsyncScheduleMethods", "ScheduleMethods"]

#: A compare-and-set that keeps losing to concurrent changes gives up after this many tries.
_MAX_TRIES = 100

Change = Callable[[ScheduleState, int], ScheduleState | None]


def _status_set(status: ScheduleStatus | str | list[ScheduleStatus | str] | None) -> set[str] | None:
    if status is None:
        return None
    items = status if isinstance(status, list) else [status]
    out: set[str] = set()
    for item in items:
        try:
            out.add(ScheduleStatus(item.upper() if isinstance(item, str) else item).value)
        except ValueError:
            valid = ", ".join(s.value for s in ScheduleStatus)
            raise ValueError(f"unknown schedule status {item!r}; use one of {valid}") from None
    return out


class AsyncScheduleMethods:
    """Recurring schedules (see the README's "Schedules")."""

    if TYPE_CHECKING:

        async def _get_store(self) -> Store: ...

    async def _records(self) -> tuple[Store, ScheduleRecords]:
        store = await self._get_store()
        return store, ScheduleRecords(store)

    async def create_schedule(
        self,
        schedule_id: str,
        orchestrator: Callable[..., Any] | str,
        *,
        cron: str | None = None,
        interval: _dt.timedelta | None = None,
        input: Any = None,
        timezone: str = "UTC",
        start_at: _dt.datetime | None = None,
        end_at: _dt.datetime | None = None,
        overlap: str = "skip",
        catchup_window: _dt.timedelta = _dt.timedelta(0),
        paused: bool = False,
    ) -> ScheduleDescription:
        """Create a schedule that starts orchestration ``orchestrator`` on a calendar: exactly one of
        ``cron`` (5 fields, or 6 with leading seconds, evaluated in ``timezone``) or ``interval``.

        Each run is an orchestration with instance id ``{schedule_id}@{slot, UTC ISO-8601}``.
        ``overlap`` is ``"skip"``, ``"buffer_one"`` or ``"allow_all"``; slots missed while no worker
        ran are started if newer than ``catchup_window``. Raises ValueError for invalid input and
        ScheduleAlreadyExistsError (a ValueError) when the id exists.
        """
        name = name_of(orchestrator, "orchestrator")
        data = encode(input, what=f"input of schedule {schedule_id!r}")
        make = functools.partial(
            new_state,
            schedule_id,
            name,
            cron=cron,
            interval=interval,
            input_data=data,
            timezone=timezone,
            start_at=start_at,
            end_at=end_at,
            overlap=overlap,
            catchup_window=catchup_window,
            paused=paused,
        )
        make(now_ms=int(time.time() * 1000))  # invalid input fails here, before any I/O
        store, records = await self._records()
        now = await store.redis_time_ms()
        state = make(now_ms=now)
        res = await records.write(
            "c",
            schedule_id,
            entity_key(schedule_id),
            0,
            encode(state.to_record()),
            now,
            pack_record(tick_message(schedule_id, None)),
        )
        if res == EXISTS:
            raise ScheduleAlreadyExistsError(
                f"a schedule with id {schedule_id!r} already exists; update_schedule changes it"
            )
        return state.describe()

    async def get_schedule(self, schedule_id: str) -> ScheduleDescription | None:
        """The schedule's description, or None if there is no such schedule."""
        check_schedule_id(schedule_id)
        _, records = await self._records()
        record = await records.read(entity_key(schedule_id))
        return _state_of(record).describe() if record.state is not None else None

    async def list_schedules(
        self,
        *,
        status: ScheduleStatus | str | list[ScheduleStatus | str] | None = None,
        prefix: str | None = None,
    ) -> list[ScheduleDescription]:
        """Every schedule (sorted by id), optionally only those in ``status`` and whose id starts
        with ``prefix``."""
        wanted = _status_set(status)
        _, records = await self._records()
        ids = [i for i in await records.schedule_ids() if prefix is None or i.startswith(prefix)]
        out: list[ScheduleDescription] = []
        for start in range(0, len(ids), 200):
            chunk = await records.read_many([entity_key(i) for i in ids[start : start + 200]])
            for record in chunk:
                if record.state is None:
                    continue
                description = _state_of(record).describe()
                if wanted is None or description.status.value in wanted:
                    out.append(description)
        return out

    async def update_schedule(
        self,
        schedule_id: str,
        *,
        cron: str | EllipsisType | None = ...,
        interval: _dt.timedelta | EllipsisType | None = ...,
        input: Any = ...,
        timezone: str | EllipsisType = ...,
        start_at: _dt.datetime | EllipsisType | None = ...,
        end_at: _dt.datetime | EllipsisType | None = ...,
        overlap: str | EllipsisType = ...,
        catchup_window: _dt.timedelta | EllipsisType = ...,
    ) -> ScheduleDescription:
        """Change what is given (an argument left out stays as it is). A new ``cron`` replaces an
        interval and a new ``interval`` a cron expression; a change of calendar takes effect from
        the next slot after now. Raises ScheduleNotFoundError and ValueError."""
        data: bytes | EllipsisType = ...
        if input is not ...:
            data = encode(input, what=f"input of schedule {schedule_id!r}")

        def change(state: ScheduleState, now: int) -> ScheduleState:
            return updated_state(
                state,
                now,
                cron=cron,
                interval=interval,
                input_data=data,
                timezone=timezone,
                start_at=start_at,
                end_at=end_at,
                overlap=overlap,
                catchup_window=catchup_window,
            )

        return await self._change(schedule_id, change)

    async def pause_schedule(self, schedule_id: str, *, reason: str | None = None) -> None:
        """Stop starting runs until :meth:`resume_schedule` (running runs go on). Pausing a paused
        or completed schedule changes nothing. Raises ScheduleNotFoundError."""

        def change(state: ScheduleState, now: int) -> ScheduleState | None:
            return state if state.pause(reason) else None

        await self._change(schedule_id, change)

    async def resume_schedule(self, schedule_id: str) -> None:
        """Continue a paused schedule from its next slot after now (the slots of the pause are not
        caught up). Raises ScheduleNotFoundError."""

        def change(state: ScheduleState, now: int) -> ScheduleState | None:
            return state if state.resume(now) else None

        await self._change(schedule_id, change)

    async def trigger_schedule(self, schedule_id: str) -> str:
        """Start one run now, outside the calendar and its overlap policy; returns its instance id
        (``{schedule_id}@{now, UTC ISO-8601 with milliseconds}``). The schedule's entity starts it
        (a worker must run). Raises ScheduleNotFoundError."""
        check_schedule_id(schedule_id)
        store, records = await self._records()
        if (await records.read(entity_key(schedule_id))).state is None:
            raise ScheduleNotFoundError(f"no schedule with id {schedule_id!r}")
        now = await store.redis_time_ms()
        iid = trigger_id(schedule_id, now)
        target = entity_key(schedule_id)
        msg = {
            "kind": ev.MSG_SIGNAL,
            "target": target,
            "op": "trigger",
            "input": encode({"instance_id": iid, "at": now}),
            "id": iid,
        }
        await store.send_message(target, pack_record(msg))
        return iid

    async def delete_schedule(self, schedule_id: str) -> bool:
        """Delete the schedule (its runs that still run go on); False if there was none."""
        check_schedule_id(schedule_id)
        _, records = await self._records()
        eid = entity_key(schedule_id)
        for _ in range(_MAX_TRIES):
            record = await records.read(eid)
            if record.state is None:
                return False
            res = await records.write("d", schedule_id, eid, record.version, b"", 0, None)
            if res != CONFLICT:
                return res == 1
        raise RuntimeError(f"schedule {schedule_id!r} kept changing; delete it again")

    async def _change(self, schedule_id: str, change: Change) -> ScheduleDescription:
        check_schedule_id(schedule_id)
        store, records = await self._records()
        eid = entity_key(schedule_id)
        for _ in range(_MAX_TRIES):
            record = await records.read(eid)
            if record.state is None:
                raise ScheduleNotFoundError(f"no schedule with id {schedule_id!r}")
            now = await store.redis_time_ms()
            state = _state_of(record)
            new = change(state, now)
            if new is None:
                return state.describe()
            res = await records.write(
                "w",
                schedule_id,
                eid,
                record.version,
                encode(new.to_record()),
                now,
                pack_record(tick_message(schedule_id, None)),
            )
            if res == 1:
                return new.describe()
            if res == NOT_FOUND:
                raise ScheduleNotFoundError(f"no schedule with id {schedule_id!r}")
        raise RuntimeError(f"schedule {schedule_id!r} kept changing; try again")


def _state_of(record: ScheduleRecord) -> ScheduleState:
    assert record.state is not None
    return ScheduleState.from_record(decode(record.state))


class ScheduleMethods:
    """The blocking schedule methods of :class:`durable.Client` (see :class:`AsyncScheduleMethods`)."""

    if TYPE_CHECKING:
        _async: AsyncScheduleMethods

        def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any: ...

    def create_schedule(
        self,
        schedule_id: str,
        orchestrator: Callable[..., Any] | str,
        *,
        cron: str | None = None,
        interval: _dt.timedelta | None = None,
        input: Any = None,
        timezone: str = "UTC",
        start_at: _dt.datetime | None = None,
        end_at: _dt.datetime | None = None,
        overlap: str = "skip",
        catchup_window: _dt.timedelta = _dt.timedelta(0),
        paused: bool = False,
    ) -> ScheduleDescription:
        """See :meth:`AsyncClient.create_schedule`."""
        return self._call(  # type: ignore[no-any-return]
            self._async.create_schedule,
            schedule_id,
            orchestrator,
            cron=cron,
            interval=interval,
            input=input,
            timezone=timezone,
            start_at=start_at,
            end_at=end_at,
            overlap=overlap,
            catchup_window=catchup_window,
            paused=paused,
        )

    def get_schedule(self, schedule_id: str) -> ScheduleDescription | None:
        """See :meth:`AsyncClient.get_schedule`."""
        return self._call(self._async.get_schedule, schedule_id)  # type: ignore[no-any-return]

    def list_schedules(
        self,
        *,
        status: ScheduleStatus | str | list[ScheduleStatus | str] | None = None,
        prefix: str | None = None,
    ) -> list[ScheduleDescription]:
        """See :meth:`AsyncClient.list_schedules`."""
        return self._call(  # type: ignore[no-any-return]
            self._async.list_schedules, status=status, prefix=prefix
        )

    def update_schedule(
        self,
        schedule_id: str,
        *,
        cron: str | EllipsisType | None = ...,
        interval: _dt.timedelta | EllipsisType | None = ...,
        input: Any = ...,
        timezone: str | EllipsisType = ...,
        start_at: _dt.datetime | EllipsisType | None = ...,
        end_at: _dt.datetime | EllipsisType | None = ...,
        overlap: str | EllipsisType = ...,
        catchup_window: _dt.timedelta | EllipsisType = ...,
    ) -> ScheduleDescription:
        """See :meth:`AsyncClient.update_schedule`."""
        return self._call(  # type: ignore[no-any-return]
            self._async.update_schedule,
            schedule_id,
            cron=cron,
            interval=interval,
            input=input,
            timezone=timezone,
            start_at=start_at,
            end_at=end_at,
            overlap=overlap,
            catchup_window=catchup_window,
        )

    def pause_schedule(self, schedule_id: str, *, reason: str | None = None) -> None:
        """See :meth:`AsyncClient.pause_schedule`."""
        self._call(self._async.pause_schedule, schedule_id, reason=reason)

    def resume_schedule(self, schedule_id: str) -> None:
        """See :meth:`AsyncClient.resume_schedule`."""
        self._call(self._async.resume_schedule, schedule_id)

    def trigger_schedule(self, schedule_id: str) -> str:
        """See :meth:`AsyncClient.trigger_schedule`."""
        return str(self._call(self._async.trigger_schedule, schedule_id))

    def delete_schedule(self, schedule_id: str) -> bool:
        """See :meth:`AsyncClient.delete_schedule`."""
        return bool(self._call(self._async.delete_schedule, schedule_id))
