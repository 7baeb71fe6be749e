"""Recurring schedules: the public types, validation, and the schedule entity's state machine.

Pure: no I/O. A schedule is a durable entity, ``@durable.schedule@{schedule_id}``, whose state is
the schedule (:class:`ScheduleState`). Every worker registers the entity (:func:`schedule_entity`)
on its own, so whichever worker owns the entity's partition runs it.

How it runs:

* The entity keeps ``next``, the next slot of its calendar, and arms one durable timer for it: a
  signal to itself (operation ``tick``) parked in the partition's timer set until the slot, and
  promoted by the Redis server's clock, so a run never starts before its slot.
* On ``tick`` it handles every slot that is due, oldest first: a slot later than the catch-up
  window is skipped and counted (in bulk, without stepping through a long outage one slot at a
  time); one inside it starts a run or, by the overlap policy, is buffered or skipped. Then it
  arms the timer for the new ``next``. A tick is idempotent, so a stale or repeated one does no
  harm.
* A run is an ordinary orchestration started by the entity, with instance id
  ``{schedule_id}@{slot, UTC, ISO-8601 seconds}``. Its start and the entity's new state leave in
  the same atomic commit, and the entity applies each tick once: so a slot runs at most once, even
  across crashes, restarts and several workers.
* The run's start message asks to be told when it ends (``notify``): the orchestration's final
  commit signals ``ended`` to the entity, which then knows which runs still run (for ``skip`` and
  ``buffer_one``).

Clients change a schedule (create, update, pause, resume, delete) with one atomic compare-and-set
of the entity's record that also appends a ``tick`` to the entity's inbox (see
``durable._store.schedules``), so the calls are synchronous and need no worker; ``trigger`` is a
signal, because only the entity may start runs.
"""

from __future__ import annotations

import datetime as _dt
import re
import uuid
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import EllipsisType
from typing import Any

from . import events as ev
from .calendar import Calendar, CalendarError, check_cron, check_interval, slot_id, zone
from .entities import EntityContext
from .model import datetime_to_ms, ms_to_datetime
from .serialization import decode, encode

#: The name under which every worker registers the schedule entity.
SCHEDULE_ENTITY = "durable.schedule"
#: The overlap policies: what a slot does while an earlier run still runs.
OVERLAP_POLICIES = ("skip", "buffer_one", "allow_all")
#: A slot that starts at most this late is on time, whatever the catch-up window: it absorbs the
#: ordinary delay between a timer's due time and its step, so a window of 0 skips only slots that
#: were really missed (no worker ran, or Redis was down).
ON_TIME_MS = 2_000
#: Entity operations (besides the client's record writes).
OP_TICK, OP_ENDED, OP_TRIGGER = "tick", "ended", "trigger"
#: The kind of the notes the entity leaves for the worker's metrics: (schedule id, "started",
#: lateness in seconds or None for a triggered run) or (schedule id, "skipped", count).
NOTE_RUN = "schedule_run"

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")


class ScheduleStatus(StrEnum):
    """The status of a schedule."""

    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"
    #: past ``end_at``, or the cron expression has no more dates: no more calendar runs
    COMPLETED = "COMPLETED"


class ScheduleNotFoundError(LookupError):
    """No schedule with that id exists."""


class ScheduleAlreadyExistsError(ValueError):
    """``create_schedule`` with an id that exists (use ``update_schedule`` to change it)."""


@dataclass(frozen=True)
class ScheduleDescription:
    """A snapshot of one schedule, as clients see it."""

    schedule_id: str
    orchestration_name: str
    cron: str | None
    interval: _dt.timedelta | None
    timezone: str
    input: Any
    start_at: _dt.datetime | None
    end_at: _dt.datetime | None
    overlap: str
    catchup_window: _dt.timedelta
    status: ScheduleStatus
    paused_reason: str | None
    #: the next slot of the calendar (None while paused or completed)
    next_run_at: _dt.datetime | None
    #: the scheduled time of the last run started (the trigger time for a triggered run)
    last_run_at: _dt.datetime | None
    last_instance_id: str | None
    runs_started: int
    runs_skipped: int
    created_at: _dt.datetime


def entity_key(schedule_id: str) -> str:
    """The schedule entity's id, ``@durable.schedule@{schedule_id}``."""
    return f"@{SCHEDULE_ENTITY}@{schedule_id}"


def check_schedule_id(schedule_id: Any) -> str:
    """A valid schedule id: letters, digits, ``.``, ``_``, ``:`` and ``-`` (it starts with a letter
    or digit), at most 200 characters. Raises ValueError."""
    if not isinstance(schedule_id, str) or not _ID_RE.fullmatch(schedule_id):
        raise ValueError(
            f"invalid schedule id {schedule_id!r}: use 1 to 200 letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit"
        )
    return schedule_id


def _check_overlap(overlap: Any) -> str:
    if overlap not in OVERLAP_POLICIES:
        raise ValueError(f"unknown overlap policy {overlap!r}: use one of {', '.join(OVERLAP_POLICIES)}")
    return str(overlap)


def _check_window(window: Any) -> int:
    if not isinstance(window, _dt.timedelta):
        raise ValueError(f"catchup_window must be a datetime.timedelta, not {type(window).__name__}")
    if window < _dt.timedelta(0):
        raise ValueError(f"catchup_window must not be negative, got {window}")
    return int(window.total_seconds() * 1000)


def _check_time(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, _dt.datetime):
        raise ValueError(f"{name} must be a datetime (naive values are UTC), not {type(value).__name__}")
    return datetime_to_ms(value)


@dataclass
class ScheduleState:
    """The schedule entity's state (what its record holds)."""

    schedule_id: str
    orchestration: str
    cron: str | None
    interval_s: int | None
    timezone: str
    #: the runs' input, encoded once by the client
    input: bytes
    start_ms: int | None
    end_ms: int | None
    overlap: str
    catchup_ms: int
    created_ms: int
    status: ScheduleStatus = ScheduleStatus.ACTIVE
    paused_reason: str | None = None
    next_ms: int | None = None
    #: the slot whose tick timer is armed
    armed_ms: int | None = None
    last_run_ms: int | None = None
    last_instance_id: str | None = None
    started: int = 0
    skipped: int = 0
    #: runs started and not yet ended, oldest first
    running: list[str] = field(default_factory=list)
    #: buffer_one: the slot waiting for the running run to end
    buffered_ms: int | None = None

    # -- record ----------------------------------------------------------------------------------
    def to_record(self) -> dict[str, Any]:
        return {
            "id": self.schedule_id,
            "orch": self.orchestration,
            "cron": self.cron,
            "every": self.interval_s,
            "tz": self.timezone,
            "input": self.input,
            "start": self.start_ms,
            "end": self.end_ms,
            "overlap": self.overlap,
            "catchup": self.catchup_ms,
            "created": self.created_ms,
            "status": self.status.value,
            "reason": self.paused_reason,
            "next": self.next_ms,
            "armed": self.armed_ms,
            "last": self.last_run_ms,
            "last_iid": self.last_instance_id,
            "started": self.started,
            "skipped": self.skipped,
            "running": list(self.running),
            "buffered": self.buffered_ms,
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> ScheduleState:
        return cls(
            schedule_id=rec["id"],
            orchestration=rec["orch"],
            cron=rec.get("cron"),
            interval_s=rec.get("every"),
            timezone=rec.get("tz") or "UTC",
            input=rec.get("input") or b"",
            start_ms=rec.get("start"),
            end_ms=rec.get("end"),
            overlap=rec.get("overlap") or "skip",
            catchup_ms=int(rec.get("catchup") or 0),
            created_ms=int(rec.get("created") or 0),
            status=ScheduleStatus(rec.get("status") or "ACTIVE"),
            paused_reason=rec.get("reason"),
            next_ms=rec.get("next"),
            armed_ms=rec.get("armed"),
            last_run_ms=rec.get("last"),
            last_instance_id=rec.get("last_iid"),
            started=int(rec.get("started") or 0),
            skipped=int(rec.get("skipped") or 0),
            running=list(rec.get("running") or []),
            buffered_ms=rec.get("buffered"),
        )

    def calendar(self) -> Calendar:
        return Calendar(self.cron, self.interval_s, self.timezone, self.start_ms, self.end_ms)

    def describe(self) -> ScheduleDescription:
        active = self.status == ScheduleStatus.ACTIVE
        return ScheduleDescription(
            schedule_id=self.schedule_id,
            orchestration_name=self.orchestration,
            cron=self.cron,
            interval=_dt.timedelta(seconds=self.interval_s) if self.interval_s is not None else None,
            timezone=self.timezone,
            input=decode(self.input),
            start_at=_dt_or_none(self.start_ms),
            end_at=_dt_or_none(self.end_ms),
            overlap=self.overlap,
            catchup_window=_dt.timedelta(milliseconds=self.catchup_ms),
            status=self.status,
            paused_reason=self.paused_reason,
            next_run_at=_dt_or_none(self.next_ms) if active else None,
            last_run_at=_dt_or_none(self.last_run_ms),
            last_instance_id=self.last_instance_id,
            runs_started=self.started,
            runs_skipped=self.skipped,
            created_at=ms_to_datetime(self.created_ms),
        )

    # -- client changes (applied by the client's compare-and-set) ----------------------------------
    def plan_next(self, now_ms: int) -> None:
        """Recompute the next slot from ``now_ms`` (after a change of calendar, or on resume)."""
        if self.status == ScheduleStatus.PAUSED:
            self.next_ms = None
            return
        self.next_ms = self.calendar().next_after(now_ms)
        self.status = ScheduleStatus.ACTIVE if self.next_ms is not None else ScheduleStatus.COMPLETED

    def pause(self, reason: str | None) -> bool:
        """Stop calendar runs; False when there is nothing to pause (paused or completed)."""
        if self.status != ScheduleStatus.ACTIVE:
            return False
        self.status = ScheduleStatus.PAUSED
        self.paused_reason = reason
        self.next_ms = None
        return True

    def resume(self, now_ms: int) -> bool:
        """Continue from the first slot after ``now_ms``; False when it was not paused."""
        if self.status != ScheduleStatus.PAUSED:
            return False
        self.status = ScheduleStatus.ACTIVE
        self.paused_reason = None
        self.plan_next(now_ms)
        return True

    # -- the entity's operations -----------------------------------------------------------------
    def tick(self, now_ms: int, slot_ms: int | None, effects: Effects) -> None:
        """Handle every due slot (``slot_ms``: the slot whose timer fired, due by the Redis clock)."""
        if slot_ms is not None:
            now_ms = max(now_ms, slot_ms)
            if slot_ms == self.armed_ms:
                self.armed_ms = None
        if self.status == ScheduleStatus.PAUSED:
            if self.buffered_ms is not None:  # a pause drops the buffered run
                self.buffered_ms = None
                self._skip(1, effects)
            return
        if self.status != ScheduleStatus.ACTIVE:
            return
        cal = self.calendar()
        window = max(self.catchup_ms, ON_TIME_MS)
        while self.next_ms is not None and self.next_ms <= now_ms:
            slot = self.next_ms
            if now_ms - slot > window:  # missed: skip every slot older than the window at once
                count, self.next_ms = cal.count_until(slot, now_ms - window - 1)
                self._skip(count, effects)
                continue
            self._slot_due(slot, now_ms, effects)
            self.next_ms = cal.next_after(slot)
        if self.next_ms is None:
            self.status = ScheduleStatus.COMPLETED
        elif self.next_ms != self.armed_ms:
            self.armed_ms = self.next_ms
            effects.arm = self.next_ms

    def ended(self, instance_id: str, now_ms: int, effects: Effects) -> None:
        """A run ended; a buffered slot starts once none runs."""
        if instance_id in self.running:
            self.running.remove(instance_id)
        if self.running or self.buffered_ms is None or self.status == ScheduleStatus.PAUSED:
            return
        slot, self.buffered_ms = self.buffered_ms, None
        self._start(slot_id(self.schedule_id, slot), slot, now_ms, effects)

    def trigger(self, instance_id: str, at_ms: int, effects: Effects) -> None:
        """One run now, outside the calendar and its overlap policy (a repeat is ignored)."""
        if instance_id in self.running or instance_id == self.last_instance_id:
            return
        self._start(instance_id, at_ms, None, effects)

    def _slot_due(self, slot: int, now_ms: int, effects: Effects) -> None:
        if self.overlap == "allow_all" or not self.running:
            self._start(slot_id(self.schedule_id, slot), slot, now_ms, effects)
        elif self.overlap == "buffer_one" and self.buffered_ms is None:
            self.buffered_ms = slot
        else:
            self._skip(1, effects)

    def _start(self, instance_id: str, slot: int, now_ms: int | None, effects: Effects) -> None:
        self.running.append(instance_id)
        self.started += 1
        self.last_run_ms = slot
        self.last_instance_id = instance_id
        lateness = None if now_ms is None else max(now_ms - slot, 0) / 1000
        effects.starts.append((instance_id, lateness))

    def _skip(self, count: int, effects: Effects) -> None:
        if count > 0:
            self.skipped += count
            effects.skipped += count


@dataclass
class Effects:
    """What one entity operation does besides changing the state."""

    #: runs to start: (instance id, lateness in seconds; None for a triggered run)
    starts: list[tuple[str, float | None]] = field(default_factory=list)
    skipped: int = 0
    #: the slot to arm the tick timer for
    arm: int | None = None


# -- building and changing schedules (the client's side) ------------------------------------------
_UNSET: Any = ...


def new_state(
    schedule_id: str,
    orchestration: str,
    *,
    cron: str | None,
    interval: _dt.timedelta | None,
    input_data: bytes,
    timezone: str,
    start_at: _dt.datetime | None,
    end_at: _dt.datetime | None,
    overlap: str,
    catchup_window: _dt.timedelta,
    paused: bool,
    now_ms: int,
) -> ScheduleState:
    """A validated new schedule; raises ValueError (CalendarError for the calendar) when invalid."""
    check_schedule_id(schedule_id)
    if (cron is None) == (interval is None):
        raise CalendarError(
            "give exactly one of cron and interval"
            + (" (both were given)" if cron is not None else " (neither was given)")
        )
    state = ScheduleState(
        schedule_id=schedule_id,
        orchestration=orchestration,
        cron=check_cron(cron) if cron is not None else None,
        interval_s=check_interval(interval) if interval is not None else None,
        timezone=zone(timezone).key,
        input=input_data,
        start_ms=_check_time("start_at", start_at),
        end_ms=_check_time("end_at", end_at),
        overlap=_check_overlap(overlap),
        catchup_ms=_check_window(catchup_window),
        created_ms=now_ms,
        status=ScheduleStatus.PAUSED if paused else ScheduleStatus.ACTIVE,
    )
    state.calendar()  # checks the combination (end after start)
    state.plan_next(now_ms)
    return state


def updated_state(
    state: ScheduleState,
    now_ms: int,
    *,
    cron: str | EllipsisType | None = _UNSET,
    interval: _dt.timedelta | EllipsisType | None = _UNSET,
    input_data: bytes | EllipsisType = _UNSET,
    timezone: str | EllipsisType = _UNSET,
    start_at: _dt.datetime | EllipsisType | None = _UNSET,
    end_at: _dt.datetime | EllipsisType | None = _UNSET,
    overlap: str | EllipsisType = _UNSET,
    catchup_window: _dt.timedelta | EllipsisType = _UNSET,
) -> ScheduleState:
    """A copy of ``state`` with the given fields changed (``...``: unchanged). Giving ``cron``
    replaces an interval and giving ``interval`` replaces a cron expression. Raises ValueError."""
    new = replace(state, running=list(state.running))
    given = not isinstance(cron, EllipsisType), not isinstance(interval, EllipsisType)
    if all(given) and (cron is None) == (interval is None):
        raise CalendarError("give exactly one of cron and interval")
    if not isinstance(cron, EllipsisType):
        if cron is None and not given[1]:
            raise CalendarError("cron=None needs an interval: a schedule has exactly one of the two")
        new.cron = check_cron(cron) if cron is not None else None
        if cron is not None:
            new.interval_s = None
    if not isinstance(interval, EllipsisType):
        if interval is None and not given[0]:
            raise CalendarError("interval=None needs a cron expression: a schedule has exactly one")
        new.interval_s = check_interval(interval) if interval is not None else None
        if interval is not None:
            new.cron = None
    if not isinstance(input_data, EllipsisType):
        new.input = input_data
    if not isinstance(timezone, EllipsisType):
        new.timezone = zone(timezone).key
    if not isinstance(start_at, EllipsisType):
        new.start_ms = _check_time("start_at", start_at)
    if not isinstance(end_at, EllipsisType):
        new.end_ms = _check_time("end_at", end_at)
    if not isinstance(overlap, EllipsisType):
        new.overlap = _check_overlap(overlap)
        if new.overlap != "buffer_one" and new.buffered_ms is not None:
            new.buffered_ms = None
            new.skipped += 1
    if not isinstance(catchup_window, EllipsisType):
        new.catchup_ms = _check_window(catchup_window)
    new.calendar()
    if (new.cron, new.interval_s, new.timezone, new.start_ms, new.end_ms) != (
        state.cron,
        state.interval_s,
        state.timezone,
        state.start_ms,
        state.end_ms,
    ):
        new.plan_next(now_ms)
    return new


# -- the entity ------------------------------------------------------------------------------------
def run_start_message(state: ScheduleState, instance_id: str, now_ms: int) -> dict[str, Any]:
    """The start message of a run: an ordinary orchestration start that asks for an ``ended``
    signal to the schedule entity when the run finishes."""
    return {
        "kind": ev.MSG_START,
        "target": instance_id,
        "name": state.orchestration,
        "input": state.input,
        "exec": uuid.uuid4().hex,
        "created": now_ms,
        "notify": {"entity": entity_key(state.schedule_id), "op": OP_ENDED},
    }


def tick_message(schedule_id: str, slot_ms: int | None, at_ms: int | None = None) -> dict[str, Any]:
    """A ``tick`` signal to a schedule entity (delayed until ``at_ms`` when given)."""
    msg: dict[str, Any] = {
        "kind": ev.MSG_SIGNAL,
        "target": entity_key(schedule_id),
        "op": OP_TICK,
        "input": encode({"slot": slot_ms}),
    }
    if at_ms is not None:
        msg["at"] = at_ms
    return msg


def schedule_entity(ctx: EntityContext, value: Any) -> None:
    """The schedule entity (registered by every worker as :data:`SCHEDULE_ENTITY`).

    A schedule that does not exist (deleted) ignores late ticks and run notifications."""
    record = ctx.get_state()
    if not isinstance(record, dict):
        return
    state = ScheduleState.from_record(record)
    now = ctx._now_ms
    effects = Effects()
    args = value if isinstance(value, dict) else {}
    op = ctx.operation
    if op == OP_TICK:
        slot = args.get("slot")
        state.tick(now, slot if isinstance(slot, int) else None, effects)
    elif op == OP_ENDED:
        state.ended(str(args.get("instance_id")), now, effects)
    elif op == OP_TRIGGER:
        state.trigger(str(args["instance_id"]), int(args.get("at") or now), effects)
    else:
        raise ValueError(f"unknown schedule operation {op!r}")
    ctx.set_state(state.to_record())
    for instance_id, lateness in effects.starts:
        ctx._emit(run_start_message(state, instance_id, now))
        ctx._note(NOTE_RUN, (state.schedule_id, "started", lateness))
    if effects.skipped:
        ctx._note(NOTE_RUN, (state.schedule_id, "skipped", effects.skipped))
    if effects.arm is not None:
        ctx._emit(tick_message(state.schedule_id, effects.arm, effects.arm))


def _dt_or_none(ms: int | None) -> _dt.datetime | None:
    return ms_to_datetime(ms) if ms is not None else None
