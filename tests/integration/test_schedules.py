"""Recurring schedules against a real Redis, with an in-process worker: runs per slot, overlap
policies, pause and resume, trigger, delete, the calendar's next run, invalid input, metrics."""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import pytest
from _schedules import SECOND, run_id, slot_of, wait_until

from durable import (
    AsyncClient,
    Client,
    OrchestrationStatus,
    ScheduleAlreadyExistsError,
    ScheduleDescription,
    ScheduleNotFoundError,
    ScheduleStatus,
    Worker,
    WorkerConfig,
)
from durable._runtime import metrics


def job(ctx: Any, value: Any) -> Any:
    return value


def hold(ctx: Any, value: Any) -> Any:
    """A long run: it ends when it receives the event 'go'."""
    yield ctx.wait_for_external_event("go")
    return value


@pytest.fixture
def worker(redis_url: str, hub: str) -> Iterator[Worker]:
    w = Worker(redis_url, hub=hub, config=WorkerConfig(balance_interval_ms=100, poll_ms=200))
    w.add_orchestrator(job)
    w.add_orchestrator(hold)
    with w:
        yield w


@pytest.fixture
def client(redis_url: str, hub: str) -> Iterator[Client]:
    c = Client(redis_url, hub=hub)
    yield c
    c.close()


def runs_of(client: Client, schedule_id: str, name: str = "job") -> list[Any]:
    states = [
        s
        for s in client.list_orchestrations(name=name, limit=1000)
        if s.instance_id.startswith(f"{schedule_id}@")
    ]
    return sorted(states, key=lambda s: s.instance_id)


def test_interval_runs_are_slot_ids_once_each_never_early(worker: Worker, client: Client) -> None:
    desc = client.create_schedule("every-second", job, interval=SECOND, input={"n": 1})
    assert desc.status == ScheduleStatus.ACTIVE and desc.runs_started == 0
    assert desc.next_run_at is not None and desc.next_run_at > desc.created_at
    for k in range(3):
        state = client.wait_for_orchestration_completion(run_id(desc, k), timeout=30)
        assert state.output == {"n": 1} and state.name == "job"
    assert client.delete_schedule("every-second")
    runs = runs_of(client, "every-second")
    slots = [slot_of(r.instance_id) for r in runs]
    assert len(slots) == len(set(slots)) >= 3
    assert slots[0] == desc.next_run_at
    assert all((b - a) % SECOND == dt.timedelta(0) for a, b in itertools.pairwise(slots))
    for run, slot in zip(runs, slots, strict=True):
        assert run.created_at >= slot  # started on the Redis clock, never before its slot


def test_pause_stops_runs_and_resume_continues_from_the_next_slot(worker: Worker, client: Client) -> None:
    desc = client.create_schedule("paused", job, interval=SECOND)
    control = client.create_schedule("control", job, interval=SECOND)
    client.wait_for_orchestration_completion(run_id(desc), timeout=30)
    client.pause_schedule("paused", reason="maintenance")
    paused = client.get_schedule("paused")
    assert paused is not None and paused.status == ScheduleStatus.PAUSED
    assert paused.paused_reason == "maintenance" and paused.next_run_at is None
    assert paused.last_instance_id is not None
    last = slot_of(paused.last_instance_id)
    client.wait_for_orchestration_start(paused.last_instance_id, timeout=30)  # its start may travel
    # the control schedule's run two slots after the pause: the paused one's slots have passed
    ctl = client.get_schedule("control")
    assert ctl is not None and ctl.next_run_at is not None
    client.wait_for_orchestration_completion(run_id(ctl, 2), timeout=30)
    assert [slot_of(r.instance_id) for r in runs_of(client, "paused")][-1] == last
    client.resume_schedule("paused")
    resumed = client.get_schedule("paused")
    assert resumed is not None and resumed.status == ScheduleStatus.ACTIVE and resumed.paused_reason is None
    assert resumed.next_run_at is not None and resumed.next_run_at >= last + 3 * SECOND
    client.wait_for_orchestration_completion(run_id(resumed), timeout=30)
    slots = [slot_of(r.instance_id) for r in runs_of(client, "paused")]
    assert not [s for s in slots if last < s < resumed.next_run_at]  # nothing ran while paused
    assert resumed.next_run_at in slots
    assert control.schedule_id == "control"


def test_skip_never_runs_two_at_once_and_counts_the_skipped(worker: Worker, client: Client) -> None:
    desc = client.create_schedule("skipper", hold, interval=SECOND, input="x")
    first = run_id(desc)
    client.wait_for_orchestration_start(first, timeout=30)
    wait_until(lambda: (d := client.get_schedule("skipper")) and d.runs_skipped >= 2, 30, "two skipped slots")
    client.raise_orchestration_event(first, "go")
    ended = client.wait_for_orchestration_completion(first, timeout=30)
    second = wait_until(
        lambda: (d := client.get_schedule("skipper")) and d.last_instance_id != first and d.last_instance_id,
        30,
        "the next run",
    )
    client.wait_for_orchestration_start(second, timeout=30)
    client.pause_schedule("skipper")
    after = client.get_schedule("skipper")
    assert after is not None
    client.raise_orchestration_event(second, "go")
    state = client.wait_for_orchestration_completion(second, timeout=30)
    assert state.created_at >= ended.last_updated_at  # the second started after the first ended
    runs = runs_of(client, "skipper", "hold")
    assert [r.instance_id for r in runs] == [first, second]
    slots = [slot_of(first), slot_of(second)]
    assert after.runs_started == 2
    assert after.runs_skipped == (slots[1] - slots[0]) // SECOND - 1  # every slot in between


def test_buffer_one_runs_the_buffered_slot_after_the_long_run(worker: Worker, client: Client) -> None:
    desc = client.create_schedule("buffered", hold, interval=SECOND, overlap="buffer_one")
    first, buffered = run_id(desc), run_id(desc, 1)
    client.wait_for_orchestration_start(first, timeout=30)
    wait_until(
        lambda: (d := client.get_schedule("buffered")) and d.runs_skipped >= 1, 30, "a slot past the buffer"
    )
    assert client.get_orchestration_state(buffered) is None  # waits while the first runs
    client.raise_orchestration_event(first, "go")
    ended = client.wait_for_orchestration_completion(first, timeout=30)
    started = client.wait_for_orchestration_start(buffered, timeout=30)
    assert started.created_at >= ended.last_updated_at
    client.pause_schedule("buffered")
    client.raise_orchestration_event(buffered, "go")
    assert (
        client.wait_for_orchestration_completion(buffered, timeout=30).runtime_status
        == OrchestrationStatus.COMPLETED
    )


def test_trigger_starts_one_run_now(worker: Worker, client: Client) -> None:
    client.create_schedule("manual", job, cron="0 0 1 1 *", input=[1, 2])
    iid = client.trigger_schedule("manual")
    assert re.fullmatch(r"manual@\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", iid)
    state = client.wait_for_orchestration_completion(iid, timeout=30)
    assert state.output == [1, 2]
    desc = wait_until(
        lambda: (d := client.get_schedule("manual")) and d.runs_started == 1 and d, 30, "the count"
    )
    assert desc.last_instance_id == iid and desc.last_run_at is not None
    with pytest.raises(ScheduleNotFoundError):
        client.trigger_schedule("no-such-schedule")


def test_delete_schedule(worker: Worker, client: Client) -> None:
    desc = client.create_schedule("doomed", job, interval=SECOND)
    client.wait_for_orchestration_completion(run_id(desc), timeout=30)
    control = client.create_schedule("witness", job, interval=SECOND)
    assert client.delete_schedule("doomed") is True
    deleted_at = dt.datetime.now(dt.UTC)
    assert client.get_schedule("doomed") is None
    assert [d.schedule_id for d in client.list_schedules()] == ["witness"]
    assert client.delete_schedule("doomed") is False
    client.wait_for_orchestration_completion(run_id(control, 2), timeout=30)
    slots = [slot_of(r.instance_id) for r in runs_of(client, "doomed")]
    assert slots and max(slots) <= deleted_at  # its pending tick found no schedule
    # the id is free again
    assert client.create_schedule("doomed", job, cron="@daily").runs_started == 0


def test_list_and_update(worker: Worker, client: Client) -> None:
    client.create_schedule("nightly-export", job, cron="0 2 * * *", timezone="Europe/Amsterdam")
    client.create_schedule("nightly-report", job, cron="@daily", paused=True)
    client.create_schedule("hourly", job, cron="@hourly")
    assert [d.schedule_id for d in client.list_schedules(prefix="nightly-")] == [
        "nightly-export",
        "nightly-report",
    ]
    assert [d.schedule_id for d in client.list_schedules(status=ScheduleStatus.PAUSED)] == ["nightly-report"]
    assert [d.schedule_id for d in client.list_schedules(status="active")] == ["hourly", "nightly-export"]
    updated = client.update_schedule("hourly", interval=SECOND, input="new")
    assert updated.cron is None and updated.interval == SECOND and updated.input == "new"
    assert updated.overlap == "skip" and updated.timezone == "UTC"  # what was not given is kept
    assert client.wait_for_orchestration_completion(run_id(updated), timeout=30).output == "new"
    with pytest.raises(ScheduleNotFoundError):
        client.update_schedule("nope", input=1)
    with pytest.raises(ScheduleNotFoundError):
        client.pause_schedule("nope")
    with pytest.raises(ScheduleNotFoundError):
        client.resume_schedule("nope")
    with pytest.raises(ValueError, match="unknown schedule status"):
        client.list_schedules(status="sleeping")


def _next_weekday_nine(now: dt.datetime) -> dt.datetime:
    ams = ZoneInfo("Europe/Amsterdam")
    day = now.astimezone(ams).date()
    while True:
        candidate = dt.datetime.combine(day, dt.time(9), tzinfo=ams)
        if candidate.weekday() < 5 and candidate > now:
            return candidate
        day += dt.timedelta(days=1)


def _next_spring_forward(now: dt.datetime) -> dt.date:
    ams = ZoneInfo("Europe/Amsterdam")
    day = now.astimezone(ams).date() + dt.timedelta(days=1)
    while True:
        before = dt.datetime.combine(day, dt.time(1), tzinfo=ams).utcoffset()
        after = dt.datetime.combine(day, dt.time(4), tzinfo=ams).utcoffset()
        if before is not None and after is not None and after > before:
            return day
        day += dt.timedelta(days=1)


def test_next_run_at_follows_the_time_zone(client: Client) -> None:
    """No worker needed: the calendar is planned by the client's write."""
    before = dt.datetime.now(dt.UTC)
    desc = client.create_schedule("weekdays", job, cron="0 9 * * MON-FRI", timezone="Europe/Amsterdam")
    assert desc.next_run_at is not None
    assert desc.next_run_at in (_next_weekday_nine(before), _next_weekday_nine(before + 5 * SECOND))
    assert desc.next_run_at.astimezone(ZoneInfo("Europe/Amsterdam")).hour == 9
    stored = client.get_schedule("weekdays")
    assert stored is not None and stored.next_run_at == desc.next_run_at
    # a DST transition: 02:30 does not exist on the next spring-forward day; it runs at 03:00
    day = _next_spring_forward(before)
    midnight = dt.datetime.combine(day, dt.time(0), tzinfo=ZoneInfo("Europe/Amsterdam"))
    dst = client.create_schedule(
        "dst", job, cron="30 2 * * *", timezone="Europe/Amsterdam", start_at=midnight
    )
    assert dst.next_run_at is not None
    local = dst.next_run_at.astimezone(ZoneInfo("Europe/Amsterdam"))
    assert (local.date(), local.hour, local.minute) == (day, 3, 0)


def test_invalid_input_raises_value_errors(client: Client) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "neither was given"),
        ({"cron": "* * * * *", "interval": SECOND}, "both were given"),
        ({"cron": "0 9 * * MON-FRY"}, "bad day-of-week field"),
        ({"cron": "0 24 * * *"}, "bad hour field"),
        ({"cron": "0 9 * *"}, "expected 5 fields"),
        ({"interval": SECOND, "timezone": "Europe/Amsterdamm"}, "unknown time zone"),
        ({"interval": SECOND, "overlap": "queue"}, "unknown overlap policy"),
        ({"interval": dt.timedelta(milliseconds=100)}, "at least 1 second"),
    ]
    for kw, message in cases:
        with pytest.raises(ValueError, match=message):
            client.create_schedule("bad", job, **kw)
    assert client.get_schedule("bad") is None
    client.create_schedule("taken", job, interval=SECOND, paused=True)
    with pytest.raises(ScheduleAlreadyExistsError, match="already exists"):
        client.create_schedule("taken", job, cron="@daily")
    assert isinstance(ScheduleAlreadyExistsError("x"), ValueError)
    with pytest.raises(ValueError, match="invalid schedule id"):
        client.create_schedule("a/b", job, interval=SECOND)
    described = client.get_schedule("taken")
    assert described is not None and described.interval == SECOND  # unchanged by the failed create


def test_async_client_and_metrics(worker: Worker, redis_url: str, hub: str) -> None:
    async def main() -> tuple[ScheduleDescription, list[ScheduleDescription], bool]:
        async with AsyncClient(redis_url, hub=hub) as client:
            desc = await client.create_schedule("async", "job", interval=SECOND, input=5)
            state = await client.wait_for_orchestration_completion(run_id(desc), timeout=30)
            assert state.output == 5
            await client.pause_schedule("async")
            await client.resume_schedule("async")
            listed = await client.list_schedules(prefix="async")
            got = await client.get_schedule("async")
            assert got is not None and got.runs_started >= 1
            return desc, listed, await client.delete_schedule("async")

    desc, listed, deleted = anyio.run(main)
    assert [d.schedule_id for d in listed] == ["async"] and deleted
    started = metrics.REGISTRY.get_sample_value(
        "durable_schedule_runs_total", {"schedule": "async", "outcome": "started"}
    )
    assert started is not None and started >= 1
    lateness = metrics.REGISTRY.get_sample_value("durable_schedule_lateness_seconds_count")
    assert lateness is not None and lateness >= 1
    assert desc.input == 5
