"""The schedule calendar: cron in IANA zones (DST included), intervals, validation."""

from __future__ import annotations

import datetime as dt
import itertools
from zoneinfo import ZoneInfo

import pytest

from durable._core.calendar import (
    Calendar,
    CalendarError,
    check_cron,
    check_interval,
    slot_id,
    trigger_id,
    zone,
)
from durable._core.model import datetime_to_ms, ms_to_datetime

AMS = ZoneInfo("Europe/Amsterdam")


def ms(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, tz: object = dt.UTC
) -> int:
    return datetime_to_ms(dt.datetime(year, month, day, hour, minute, second, tzinfo=tz))  # type: ignore[arg-type]


def slots(cal: Calendar, after: int, count: int) -> list[dt.datetime]:
    out: list[dt.datetime] = []
    for _ in range(count):
        nxt = cal.next_after(after)
        assert nxt is not None
        out.append(ms_to_datetime(nxt))
        after = nxt
    return out


def test_weekdays_at_nine_in_amsterdam() -> None:
    cal = Calendar(cron="0 9 * * MON-FRI", timezone="Europe/Amsterdam")
    # Friday 28 March 2025, 10:00 (CET) -> Monday 31 March 09:00 (CEST, after the DST change)
    friday = ms(2025, 3, 28, 10, tz=AMS)
    got = slots(cal, friday, 3)
    assert [g.astimezone(AMS).strftime("%a %d %H:%M %Z") for g in got] == [
        "Mon 31 09:00 CEST",
        "Tue 01 09:00 CEST",
        "Wed 02 09:00 CEST",
    ]
    assert got[0] == dt.datetime(2025, 3, 31, 7, tzinfo=dt.UTC)
    # before nine on a weekday: the same day; at nine exactly: the next day (strictly after)
    assert ms_to_datetime(cal.next_after(ms(2025, 3, 26, 8, 59, tz=AMS)) or 0).astimezone(AMS).day == 26
    assert ms_to_datetime(cal.next_after(ms(2025, 3, 26, 9, tz=AMS)) or 0).astimezone(AMS).day == 27


def test_spring_forward_runs_once_at_the_next_valid_time() -> None:
    cal = Calendar(cron="30 2 * * *", timezone="Europe/Amsterdam")
    got = slots(cal, ms(2025, 3, 29, 12, tz=AMS), 3)
    local = [g.astimezone(AMS) for g in got]
    # 30 March 2025: 02:00 jumps to 03:00, so 02:30 does not exist: one run, at 03:00
    assert [(x.day, x.hour, x.minute) for x in local] == [(30, 3, 0), (31, 2, 30), (1, 2, 30)]
    assert got[0] == dt.datetime(2025, 3, 30, 1, 0, tzinfo=dt.UTC)


def test_fall_back_never_runs_twice() -> None:
    cal = Calendar(cron="30 2 * * *", timezone="Europe/Amsterdam")
    got = slots(cal, ms(2025, 10, 25, 12, tz=AMS), 3)
    # 26 October 2025: 03:00 falls back to 02:00, so 02:30 happens twice; it runs once
    assert [g.astimezone(AMS).day for g in got] == [26, 27, 28]
    assert got[0] == dt.datetime(2025, 10, 26, 0, 30, tzinfo=dt.UTC)  # the first 02:30 (CEST)
    assert got[1] == dt.datetime(2025, 10, 27, 1, 30, tzinfo=dt.UTC)  # CET from then on


def test_hourly_jobs_follow_the_clock_through_fall_back() -> None:
    cal = Calendar(cron="0 * * * *", timezone="Europe/Amsterdam")
    got = slots(cal, ms(2025, 10, 26, 0, 30, tz=dt.UTC), 3)
    # every hour of elapsed time: the repeated local hour is a different instant
    assert [(b - a) for a, b in itertools.pairwise(got)] == [dt.timedelta(hours=1)] * 2


def test_six_fields_names_and_macros() -> None:
    start = ms(2025, 1, 1, 0, 0, 0)
    assert [g.second for g in slots(Calendar(cron="*/15 * * * * *"), start, 4)] == [15, 30, 45, 0]
    assert slots(Calendar(cron="0 0 1 JAN *"), start, 1)[0] == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert slots(Calendar(cron="@hourly"), start, 1)[0] == dt.datetime(2025, 1, 1, 1, tzinfo=dt.UTC)
    assert slots(Calendar(cron="@daily"), start, 1)[0] == dt.datetime(2025, 1, 2, tzinfo=dt.UTC)
    weekly = slots(Calendar(cron="@weekly"), start, 1)[0]
    assert weekly.weekday() == 6 and weekly == dt.datetime(2025, 1, 5, tzinfo=dt.UTC)
    assert check_cron("  0   9 * * mon-fri ") == "0 9 * * mon-fri"


def test_intervals_are_aligned_to_start_at_or_the_epoch() -> None:
    cal = Calendar(interval_s=3600)
    assert ms_to_datetime(cal.next_after(ms(2025, 5, 1, 10, 17)) or 0) == dt.datetime(
        2025, 5, 1, 11, tzinfo=dt.UTC
    )
    anchored = Calendar(interval_s=10, start_ms=ms(2025, 5, 1, 10, 0, 3) + 250)  # rounded up to :04
    assert anchored.next_after(0) == ms(2025, 5, 1, 10, 0, 4)
    assert anchored.next_after(ms(2025, 5, 1, 10, 0, 4)) == ms(2025, 5, 1, 10, 0, 14)


def test_end_at_bounds_the_calendar() -> None:
    cal = Calendar(interval_s=1, start_ms=ms(2025, 1, 1), end_ms=ms(2025, 1, 1, 0, 0, 2))
    assert cal.next_after(ms(2024, 12, 31)) == ms(2025, 1, 1)
    assert cal.next_after(ms(2025, 1, 1, 0, 0, 1)) == ms(2025, 1, 1, 0, 0, 2)
    assert cal.next_after(ms(2025, 1, 1, 0, 0, 2)) is None


def test_count_until() -> None:
    cal = Calendar(interval_s=1)
    first = ms(2025, 1, 1)
    assert cal.count_until(first, first + 4_500) == (5, first + 5_000)
    cron = Calendar(cron="* * * * * *")
    assert cron.count_until(first, first + 4_500) == (5, first + 5_000)
    assert cal.count_until(first, first - 1) == (0, first)


def test_instance_ids() -> None:
    slot = ms(2025, 3, 31, 7, 0, 0)
    assert slot_id("nightly", slot) == "nightly@2025-03-31T07:00:00Z"
    assert trigger_id("nightly", slot + 42) == "nightly@2025-03-31T07:00:00.042Z"


@pytest.mark.parametrize(
    ("cron", "field"),
    [
        ("61 * * * *", "bad minute field '61'"),
        ("0 25 * * *", "bad hour field '25'"),
        ("0 0 32 * *", "bad day-of-month field '32'"),
        ("0 0 * 13 *", "bad month field '13'"),
        ("0 0 * * FUNDAY", "bad day-of-week field 'FUNDAY'"),
        ("70 0 0 * * *", "bad second field '70'"),
        ("* * *", "expected 5 fields"),
        ("@fortnightly", "expected 5 fields"),
        ("", "empty"),
    ],
)
def test_bad_cron_names_the_field(cron: str, field: str) -> None:
    with pytest.raises(CalendarError, match="invalid cron expression") as info:
        check_cron(cron)
    assert field in str(info.value)
    assert isinstance(info.value, ValueError)


def test_bad_zones_and_intervals() -> None:
    assert zone("Europe/Amsterdam").key == "Europe/Amsterdam"
    for name in ("Mars/Olympus_Mons", "", "../etc/passwd", "/etc/localtime"):
        with pytest.raises(CalendarError, match="unknown time zone"):
            zone(name)
    assert check_interval(dt.timedelta(minutes=5)) == 300
    with pytest.raises(CalendarError, match="at least 1 second"):
        check_interval(dt.timedelta(milliseconds=500))
    with pytest.raises(CalendarError, match="whole number of seconds"):
        check_interval(dt.timedelta(seconds=1.5))
    with pytest.raises(CalendarError, match="exactly one of cron and interval"):
        Calendar()
    with pytest.raises(CalendarError, match="end_at must be later"):
        Calendar(interval_s=1, start_ms=10_000, end_ms=10_000)
