"""The calendar of a schedule: which instants (slots) it fires at.

Pure: no I/O. A calendar is either a cron expression evaluated in an IANA time zone, or a fixed
interval. Cron expressions are parsed and evaluated by ``cronsim`` (the evaluator of
Healthchecks.io): it follows Debian cron, including its handling of daylight saving time, which is
what the schedules promise. A time that does not exist on a spring-forward day runs once, at the
first valid time after the gap; a time that exists twice on a fall-back day runs once, at its first
occurrence. That special handling applies to 5-field expressions naming a specific minute and hour
(as in Debian cron); expressions that fire every hour or more often simply follow the clock.

Slots are whole seconds, kept as milliseconds since the epoch (UTC). Interval slots are aligned to
``start_at`` (rounded up to a whole second) or, without one, to the Unix epoch, so an interval of
one hour fires on the hour (UTC) whoever created it and whenever.
"""

from __future__ import annotations

import datetime as _dt
import math
import zoneinfo
from dataclasses import dataclass
from functools import lru_cache

from cronsim import CronSim, CronSimError

#: Cron macros (cronsim has none of its own), mapped to the expressions they stand for.
CRON_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_FIELDS_5 = ("minute", "hour", "day-of-month", "month", "day-of-week")
_FIELDS_6 = ("second", *_FIELDS_5)
#: At most this many slots are stepped through to count the ones a catch-up skips; past it the
#: calendar jumps ahead and the count stops there (a seconds-granularity cron down for a day).
MAX_COUNTED_SLOTS = 100_000


class CalendarError(ValueError):
    """An invalid calendar: the message says what is wrong (for a cron expression, which field)."""


def _expand(cron: str) -> str:
    text = " ".join(cron.split())
    return CRON_MACROS.get(text.lower(), text)


def _cron_error(cron: str, exc: CronSimError) -> CalendarError:
    parts = _expand(cron).split()
    reason = str(exc)
    if len(parts) not in (5, 6):
        return CalendarError(
            f"invalid cron expression {cron!r}: expected 5 fields (minute hour day-of-month month "
            f"day-of-week), 6 with a leading seconds field, or one of {', '.join(CRON_MACROS)}; "
            f"got {len(parts)} field(s)"
        )
    names = _FIELDS_6 if len(parts) == 6 else _FIELDS_5
    for name, value in zip(names, parts, strict=True):
        if reason.lower() == f"bad {name}":
            return CalendarError(f"invalid cron expression {cron!r}: bad {name} field {value!r}")
    return CalendarError(f"invalid cron expression {cron!r}: {reason}")


@lru_cache(maxsize=256)
def zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA time zone ``name``; :class:`CalendarError` when unknown."""
    if not isinstance(name, str) or not name or name.startswith(("/", ".")) or ".." in name:
        raise CalendarError(f"unknown time zone {name!r}: expected an IANA name such as 'Europe/Amsterdam'")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise CalendarError(
            f"unknown time zone {name!r}: expected an IANA name such as 'Europe/Amsterdam'"
        ) from None


def check_cron(cron: str) -> str:
    """Validate a cron expression; returns it normalised (single spaces). Raises CalendarError."""
    if not isinstance(cron, str) or not cron.strip():
        raise CalendarError("invalid cron expression: it is empty")
    try:
        CronSim(_expand(cron), _dt.datetime(2000, 1, 1, tzinfo=_dt.UTC))
    except CronSimError as exc:
        raise _cron_error(cron, exc) from None
    return " ".join(cron.split())


def check_interval(interval: _dt.timedelta) -> int:
    """An interval's whole seconds (at least 1). Raises CalendarError."""
    if not isinstance(interval, _dt.timedelta):
        raise CalendarError(f"interval must be a datetime.timedelta, not {type(interval).__name__}")
    seconds = interval.total_seconds()
    if seconds < 1:
        raise CalendarError(f"interval must be at least 1 second, got {interval}")
    if interval.microseconds:
        raise CalendarError(f"interval must be a whole number of seconds, got {interval}")
    return int(seconds)


@dataclass(frozen=True)
class Calendar:
    """The slots of a schedule: ``cron`` in ``timezone``, or every ``interval_s`` seconds; within
    ``[start_ms, end_ms]`` when those are set."""

    cron: str | None = None
    interval_s: int | None = None
    timezone: str = "UTC"
    start_ms: int | None = None
    end_ms: int | None = None

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.interval_s is None):
            raise CalendarError("give exactly one of cron and interval")
        if self.interval_s is not None and self.interval_s < 1:
            raise CalendarError("interval must be at least 1 second")
        if self.start_ms is not None and self.end_ms is not None and self.end_ms <= self.start_ms:
            raise CalendarError("end_at must be later than start_at")

    def _first_allowed(self, after_ms: int) -> int:
        """The earliest instant a slot may have: after ``after_ms`` and not before ``start_ms``."""
        if self.start_ms is not None:
            return max(after_ms, self.start_ms - 1)
        return after_ms

    def next_after(self, after_ms: int) -> int | None:
        """The first slot strictly after ``after_ms``; None when the calendar has no more."""
        after = self._first_allowed(after_ms)
        slot = self._interval_next(after) if self.interval_s is not None else self._cron_next(after)
        if slot is None or (self.end_ms is not None and slot > self.end_ms):
            return None
        return slot

    def _interval_next(self, after_ms: int) -> int:
        assert self.interval_s is not None
        step = self.interval_s * 1000
        anchor = 0 if self.start_ms is None else math.ceil(self.start_ms / 1000) * 1000
        if after_ms < anchor:
            return anchor
        return anchor + ((after_ms - anchor) // step + 1) * step

    def _cron_next(self, after_ms: int) -> int | None:
        assert self.cron is not None
        tz = zone(self.timezone)
        start = _dt.datetime.fromtimestamp(after_ms // 1000, tz=_dt.UTC).astimezone(tz)
        it = CronSim(_expand(self.cron), start)
        for _ in range(1000):  # cronsim may return a repeated local time; keep UTC increasing
            try:
                value = next(it)
            except StopIteration:  # nothing in the next 50 years
                return None
            ms = int(value.timestamp()) * 1000
            if ms > after_ms:
                return ms
        return None

    def count_until(self, first_ms: int, last_ms: int) -> tuple[int, int | None]:
        """Count the slots in ``[first_ms, last_ms]`` (``first_ms`` a slot); returns the count and
        the first slot after ``last_ms`` (None: no more)."""
        if first_ms > last_ms:
            return 0, first_ms
        if self.interval_s is not None:
            step = self.interval_s * 1000
            count = (last_ms - first_ms) // step + 1
            return count, self.next_after(first_ms + (count - 1) * step)
        count = 0
        nxt: int | None = first_ms
        while nxt is not None and nxt <= last_ms:
            count += 1
            if count >= MAX_COUNTED_SLOTS:
                return count, self.next_after(last_ms)
            nxt = self.next_after(nxt)
        return count, nxt


def slot_id(schedule_id: str, slot_ms: int) -> str:
    """The instance id of a schedule's run for a slot: ``{schedule_id}@{UTC ISO-8601 seconds}Z``."""
    when = _dt.datetime.fromtimestamp(slot_ms // 1000, tz=_dt.UTC)
    return f"{schedule_id}@{when.strftime('%Y-%m-%dT%H:%M:%SZ')}"


def trigger_id(schedule_id: str, at_ms: int) -> str:
    """The instance id of a triggered run: the trigger time with milliseconds, so it never equals
    a calendar slot's id (those have whole seconds and no fraction)."""
    when = _dt.datetime.fromtimestamp(at_ms // 1000, tz=_dt.UTC)
    return f"{schedule_id}@{when.strftime('%Y-%m-%dT%H:%M:%S')}.{at_ms % 1000:03d}Z"
