"""The schedule entity's state machine (pure): slots, overlap, catch-up, pause, trigger, validation."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from durable._core import events as ev
from durable._core.calendar import slot_id
from durable._core.entities import EntityId, EntityRecord
from durable._core.entity_batch import EntityBatch
from durable._core.model import datetime_to_ms
from durable._core.schedules import (
    NOTE_RUN,
    SCHEDULE_ENTITY,
    Effects,
    ScheduleAlreadyExistsError,
    ScheduleState,
    ScheduleStatus,
    new_state,
    schedule_entity,
    updated_state,
)
from durable._core.serialization import decode, encode

T0 = datetime_to_ms(dt.datetime(2025, 6, 1, 12, 0, 0, tzinfo=dt.UTC))
SEC = 1000


def make(now: int = T0 + 300, **kw: Any) -> ScheduleState:
    args: dict[str, Any] = {
        "cron": None,
        "interval": dt.timedelta(seconds=1),
        "input_data": encode({"n": 1}),
        "timezone": "UTC",
        "start_at": None,
        "end_at": None,
        "overlap": "skip",
        "catchup_window": dt.timedelta(0),
        "paused": False,
    }
    args.update(kw)
    return new_state("job", "work", now_ms=now, **args)


def tick(state: ScheduleState, now: int, slot: int | None = None) -> Effects:
    effects = Effects()
    state.tick(now, slot, effects)
    return effects


def ids(effects: Effects) -> list[str]:
    return [iid for iid, _ in effects.starts]


def test_a_new_schedule_plans_its_first_future_slot() -> None:
    state = make()
    assert state.next_ms == T0 + SEC and state.status == ScheduleStatus.ACTIVE
    assert state.describe().next_run_at == dt.datetime(2025, 6, 1, 12, 0, 1, tzinfo=dt.UTC)
    assert make(paused=True).describe().next_run_at is None
    assert make(paused=True).status == ScheduleStatus.PAUSED


def test_due_slots_start_runs_and_arm_the_next_tick() -> None:
    state = make()
    first = tick(state, T0 + 400)
    assert first.starts == [] and first.arm == T0 + SEC  # not due yet: armed for the slot
    assert tick(state, T0 + 900).arm is None  # already armed: no second timer
    effects = tick(state, T0 + SEC + 20, T0 + SEC)
    assert ids(effects) == ["job@2025-06-01T12:00:01Z"]
    assert effects.starts[0][1] == pytest.approx(0.02)
    assert effects.arm == T0 + 2 * SEC
    assert state.started == 1 and state.last_instance_id == "job@2025-06-01T12:00:01Z"


def test_a_tick_never_starts_a_slot_early_and_is_idempotent() -> None:
    state = make()
    tick(state, T0 + 400)
    # the slot's timer fired (Redis clock), even if this worker's estimate lags a little behind
    assert ids(tick(state, T0 + SEC - 5, T0 + SEC)) == ["job@2025-06-01T12:00:01Z"]
    again = tick(state, T0 + SEC + 10, T0 + SEC)  # a repeated tick for the same slot
    assert again.starts == [] and again.skipped == 0


def test_skip_counts_the_overlapping_slots() -> None:
    state = make()
    tick(state, T0 + SEC, T0 + SEC)
    effects = tick(state, T0 + 3 * SEC, T0 + 3 * SEC)
    assert effects.starts == [] and effects.skipped == 2 and state.skipped == 2
    state.ended("job@2025-06-01T12:00:01Z", T0 + 3 * SEC + 100, Effects())
    assert ids(tick(state, T0 + 4 * SEC, T0 + 4 * SEC)) == ["job@2025-06-01T12:00:04Z"]


def test_buffer_one_runs_the_buffered_slot_when_the_running_one_ends() -> None:
    state = make(overlap="buffer_one")
    tick(state, T0 + SEC, T0 + SEC)
    effects = tick(state, T0 + 4 * SEC, T0 + 4 * SEC)
    assert effects.starts == [] and state.buffered_ms == T0 + 2 * SEC and effects.skipped == 2
    ended = Effects()
    state.ended("job@2025-06-01T12:00:01Z", T0 + 4 * SEC + 500, ended)
    assert ids(ended) == ["job@2025-06-01T12:00:02Z"]
    assert ended.starts[0][1] == pytest.approx(2.5)  # it started late, after the long run
    assert state.buffered_ms is None and state.running == ["job@2025-06-01T12:00:02Z"]


def test_allow_all_overlaps() -> None:
    state = make(overlap="allow_all")
    tick(state, T0 + SEC, T0 + SEC)
    assert ids(tick(state, T0 + 2 * SEC, T0 + 2 * SEC)) == ["job@2025-06-01T12:00:02Z"]
    assert len(state.running) == 2


def test_catch_up_starts_the_slots_inside_the_window_oldest_first_and_skips_older() -> None:
    state = make(overlap="allow_all", catchup_window=dt.timedelta(seconds=3))
    tick(state, T0 + 400)
    # the only worker was down from 12:00:00.5 until 12:00:10.2
    effects = tick(state, T0 + 10 * SEC + 200, T0 + SEC)
    assert ids(effects) == [slot_id("job", T0 + s * SEC) for s in (8, 9, 10)]
    assert effects.skipped == 7 and state.skipped == 7  # 12:00:01 .. 12:00:07
    assert [lateness for _, lateness in effects.starts] == pytest.approx([2.2, 1.2, 0.2])
    assert effects.arm == T0 + 11 * SEC


def test_a_zero_window_runs_only_what_is_on_time() -> None:
    state = make(overlap="allow_all")
    tick(state, T0 + 400)
    effects = tick(state, T0 + 10 * SEC + 200, T0 + SEC)
    # slots at most ON_TIME_MS (2 s) late still count as on time
    assert ids(effects) == [slot_id("job", T0 + s * SEC) for s in (9, 10)]
    assert effects.skipped == 8


def test_a_long_outage_is_skipped_in_bulk() -> None:
    state = make()
    tick(state, T0 + 400)
    effects = tick(state, T0 + 86_400 * SEC + 500, T0 + SEC)
    # 86,398 missed slots, then two on time of which "skip" runs the first only
    assert ids(effects) == [slot_id("job", T0 + 86_399 * SEC)]
    assert effects.skipped == 86_398 + 1
    assert state.next_ms == T0 + 86_401 * SEC


def test_pause_drops_the_buffered_run_and_resume_continues_from_the_next_slot() -> None:
    state = make(overlap="buffer_one")
    tick(state, T0 + SEC, T0 + SEC)
    tick(state, T0 + 2 * SEC, T0 + 2 * SEC)
    assert state.buffered_ms == T0 + 2 * SEC
    assert state.pause("maintenance") and not state.pause("again")
    assert state.describe().next_run_at is None and state.paused_reason == "maintenance"
    ended = Effects()
    state.ended("job@2025-06-01T12:00:01Z", T0 + 3 * SEC, ended)
    assert ended.starts == []  # nothing starts while paused
    assert tick(state, T0 + 3 * SEC, T0 + 3 * SEC).skipped == 1 and state.buffered_ms is None
    assert state.resume(T0 + 9 * SEC + 500) and not state.resume(T0 + 10 * SEC)
    assert state.next_ms == T0 + 10 * SEC and state.status == ScheduleStatus.ACTIVE
    assert ids(tick(state, T0 + 10 * SEC, T0 + 10 * SEC)) == ["job@2025-06-01T12:00:10Z"]


def test_end_at_completes_the_schedule() -> None:
    state = make(end_at=dt.datetime(2025, 6, 1, 12, 0, 2, tzinfo=dt.UTC), overlap="allow_all")
    tick(state, T0 + 2 * SEC + 50, T0 + SEC)
    assert state.started == 2 and state.status == ScheduleStatus.COMPLETED and state.next_ms is None
    assert make(end_at=dt.datetime(2025, 6, 1, tzinfo=dt.UTC), now=T0).status == ScheduleStatus.COMPLETED


def test_trigger_ignores_the_calendar_and_overlap_once_per_id() -> None:
    state = make()
    tick(state, T0 + SEC, T0 + SEC)
    effects = Effects()
    state.trigger("job@2025-06-01T12:00:01.500Z", T0 + 1500, effects)
    state.trigger("job@2025-06-01T12:00:01.500Z", T0 + 1500, effects)
    assert effects.starts == [("job@2025-06-01T12:00:01.500Z", None)]
    assert len(state.running) == 2 and state.started == 2


def test_update_changes_only_what_is_given() -> None:
    state = make()
    same = updated_state(state, T0 + 500, input_data=encode(2), overlap="allow_all")
    assert (same.next_ms, same.interval_s, decode(same.input)) == (state.next_ms, 1, 2)
    cron = updated_state(state, T0 + 500, cron="0 9 * * MON-FRI", timezone="Europe/Amsterdam")
    assert cron.interval_s is None and cron.timezone == "Europe/Amsterdam"
    assert cron.describe().next_run_at == dt.datetime(2025, 6, 2, 7, tzinfo=dt.UTC)  # Monday 09:00 CEST
    back = updated_state(cron, T0 + 500, interval=dt.timedelta(minutes=1))
    assert back.cron is None and back.next_ms == T0 + 60 * SEC
    with pytest.raises(ValueError, match="exactly one"):
        updated_state(state, T0, cron="* * * * *", interval=dt.timedelta(seconds=5))
    with pytest.raises(ValueError, match="needs a cron expression"):
        updated_state(state, T0, interval=None)
    with pytest.raises(ValueError, match="unknown overlap policy"):
        updated_state(state, T0, overlap="queue")
    assert state.interval_s == 1 and state.overlap == "skip"  # the original is untouched


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"cron": "* * * * *"}, "both were given"),
        ({"interval": None}, "neither was given"),
        ({"interval": None, "cron": "0 9 * * XYZ"}, "bad day-of-week field"),
        ({"interval": dt.timedelta(milliseconds=10)}, "at least 1 second"),
        ({"timezone": "Europe/Atlantis"}, "unknown time zone"),
        ({"overlap": "queue"}, "unknown overlap policy"),
        ({"catchup_window": dt.timedelta(seconds=-1)}, "must not be negative"),
        ({"start_at": "2025-01-01"}, "start_at must be a datetime"),
        (
            {
                "start_at": dt.datetime(2025, 1, 2, tzinfo=dt.UTC),
                "end_at": dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
            },
            "end_at must be later",
        ),
    ],
)
def test_invalid_input(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(**kw)


def test_invalid_ids() -> None:
    for bad in ("", "a b", "a/b", "a@b", "-x", "x" * 201):
        with pytest.raises(ValueError, match="invalid schedule id"):
            new_state(
                bad,
                "work",
                cron=None,
                interval=dt.timedelta(seconds=1),
                input_data=b"\xc0",
                timezone="UTC",
                start_at=None,
                end_at=None,
                overlap="skip",
                catchup_window=dt.timedelta(0),
                paused=False,
                now_ms=T0,
            )
    assert issubclass(ScheduleAlreadyExistsError, ValueError)


def _run_entity(record: EntityRecord, msgs: list[dict[str, Any]], now: int) -> Any:
    batch = EntityBatch(EntityId(SCHEDULE_ENTITY, "job"), schedule_entity, record, now)
    return batch.run(msgs)


def _signal(op: str, value: Any) -> dict[str, Any]:
    return {"kind": ev.MSG_SIGNAL, "target": "@durable.schedule@job", "op": op, "input": encode(value)}


def test_the_entity_starts_runs_that_notify_it_and_arms_its_timer() -> None:
    record = EntityRecord(state=encode(make().to_record()))
    result = _run_entity(record, [_signal("tick", {"slot": T0 + SEC})], T0 + SEC + 5)
    start, arm = result.out
    assert start["kind"] == ev.MSG_START and start["target"] == "job@2025-06-01T12:00:01Z"
    assert start["name"] == "work" and decode(start["input"]) == {"n": 1}
    assert start["notify"] == {"entity": "@durable.schedule@job", "op": "ended"}
    assert arm["op"] == "tick" and arm["at"] == T0 + 2 * SEC and arm["target"] == "@durable.schedule@job"
    assert result.notes == [(NOTE_RUN, ("job", "started", pytest.approx(0.005)))]
    state = ScheduleState.from_record(decode(record.state))
    assert state.running == ["job@2025-06-01T12:00:01Z"] and state.armed_ms == T0 + 2 * SEC
    ended = _signal("ended", {"instance_id": "job@2025-06-01T12:00:01Z", "status": "COMPLETED"})
    _run_entity(record, [ended], T0 + SEC + 50)
    assert ScheduleState.from_record(decode(record.state)).running == []


def test_a_deleted_schedule_ignores_late_ticks() -> None:
    record = EntityRecord()
    result = _run_entity(record, [_signal("tick", {"slot": T0})], T0)
    assert result.out == [] and record.state is None and result.failed == 0
