"""Schedules across worker processes: SIGKILL and restart, two workers, catch-up after the only
worker was down. The workers (``python -m durable worker``) register nothing schedule-specific."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _redis import connect, is_cluster
from _schedules import SECOND, slot_of, wait_until

from durable import Client, OrchestrationStatus, ScheduleDescription
from durable._core.schedules import entity_key
from durable._store.keys import partition_of

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent


def _ledger_url(url: str) -> str:
    return url if is_cluster(url) else url.rsplit("/", 1)[0] + "/1"


class Workers:
    def __init__(self, url: str, hub: str) -> None:
        self.url, self.hub = url, hub
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.update(
            DURABLE_REDIS_URL=self.url,
            DURABLE_HUB=self.hub,
            LEDGER_URL=_ledger_url(self.url),
            PYTHONPATH=os.pathsep.join([str(TESTS), str(REPO)]),
        )
        cmd = [
            sys.executable,
            "-m",
            "durable",
            "worker",
            "fixtures.schedule_app:worker",
            "--log-level",
            "warning",
        ]
        proc = subprocess.Popen(cmd, env=env, cwd=str(TESTS))
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)


@pytest.fixture
def workers(redis_url: str, hub: str) -> Iterator[Workers]:
    w = Workers(redis_url, hub)
    yield w
    w.close()


def _owner_pid(redis: Any, hub: str, schedule_id: str, partitions: int) -> int | None:
    """The pid of the worker holding the lease of the schedule entity's partition."""
    index = partition_of(entity_key(schedule_id), partitions)
    lease = redis.get(f"durable:{{{hub}:{index:02d}}}:lease")
    if not lease:
        return None
    worker = lease.decode().split("|")[1]  # host-pid-nonce
    return int(worker.rsplit("-", 2)[1])


def _settled(r: Any, hub: str, workers: int) -> bool:
    """Every partition is leased, by as many workers as are alive."""
    if r.zcard(f"durable:{{{hub}}}:workers") != workers:
        return False
    leases = [r.get(f"durable:{{{hub}:{i:02d}}}:lease") for i in range(32)]
    return all(leases) and len({v.split(b"|")[1] for v in leases}) == workers


def _started(client: Client, schedule_id: str, count: int) -> Any:
    return (d := client.get_schedule(schedule_id)) and d.runs_started >= count and d


def _finished_runs(client: Client, schedule_id: str) -> list[Any]:
    """The runs of a paused schedule, each finished. Its counts are final once it is paused, but
    a start may still be on its way to the run's partition (the outbox, on Redis Cluster)."""
    desc = client.get_schedule(schedule_id)
    assert desc is not None and desc.status.value == "PAUSED"

    def runs() -> list[Any]:
        return [
            s
            for s in client.list_orchestrations(name="scheduled_job", limit=1000)
            if s.instance_id.startswith(f"{schedule_id}@")
        ]

    states = wait_until(lambda: (r := runs()) and len(r) == desc.runs_started and r, 30, "every run to exist")
    for s in states:
        if not s.runtime_status.is_terminal:
            client.wait_for_orchestration_completion(s.instance_id, timeout=30)
    return sorted(states, key=lambda s: s.instance_id)


def _check_each_slot_once(
    client: Client, desc: ScheduleDescription, runs: list[Any], ledger: Any, hub: str
) -> None:
    slots = [slot_of(r.instance_id) for r in runs]
    assert len(slots) == len(set(slots)), "a slot ran twice"
    for run, slot in zip(runs, slots, strict=True):
        state = client.wait_for_orchestration_completion(run.instance_id, timeout=30)
        assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
        assert state.created_at >= slot  # never before its slot
    # one execution per run: every activity key of a run shares one execution id
    executions = Counter(key.decode().rsplit(":", 2)[0] for key in ledger.hkeys(f"runs:{hub}"))
    assert set(executions) == {r.instance_id for r in runs}
    assert set(executions.values()) == {1}
    # every slot from the first to the last was either run once or counted as skipped
    span = (slots[-1] - slots[0]) // SECOND + 1
    assert desc.runs_started == len(runs)
    assert desc.runs_started + desc.runs_skipped == span


def test_runs_each_slot_once_across_a_sigkill_and_two_workers(
    workers: Workers, redis_url: str, hub: str
) -> None:
    r = connect(redis_url)
    ledger = connect(_ledger_url(redis_url))
    first, second = workers.spawn(), workers.spawn()
    wait_until(lambda: _settled(r, hub, 2), 30, "two workers sharing the partitions")
    with Client(redis_url, hub=hub) as client:
        # allow_all: a slot is skipped only when missed, so each one is run or counted as missed
        client.create_schedule("survivor", "scheduled_job", interval=SECOND, input="x", overlap="allow_all")
        wait_until(lambda: _started(client, "survivor", 2), 30, "two runs")
        partitions = int(r.hget(f"durable:{{{hub}}}:meta", "partitions"))
        pid = wait_until(lambda: _owner_pid(r, hub, "survivor", partitions), 30, "the entity's owner")
        victim = next(p for p in (first, second) if p.pid == pid)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        workers.spawn()  # restarted; the survivor or the new one takes the partition over
        before = client.get_schedule("survivor")
        assert before is not None
        wait_until(lambda: _started(client, "survivor", before.runs_started + 3), 60, "three more runs")
        client.pause_schedule("survivor")
        runs = _finished_runs(client, "survivor")
        after = client.get_schedule("survivor")
        assert after is not None
        _check_each_slot_once(client, after, runs, ledger, hub)
        assert any(slot_of(run.instance_id) > slot_of(before.last_instance_id or "") for run in runs)


def test_catch_up_after_the_only_worker_was_down(workers: Workers, redis_url: str, hub: str) -> None:
    ledger = connect(_ledger_url(redis_url))
    only = workers.spawn()
    wait_until(lambda: _settled(connect(redis_url), hub, 1), 30, "the worker owning the partitions")
    with Client(redis_url, hub=hub) as client:
        client.create_schedule(
            "catch-up",
            "scheduled_job",
            interval=SECOND,
            overlap="allow_all",
            catchup_window=dt.timedelta(seconds=3),
        )
        wait_until(lambda: _started(client, "catch-up", 1), 30, "a first run")
        only.send_signal(signal.SIGKILL)
        only.wait(timeout=10)
        killed = dt.datetime.now(dt.UTC)
        time.sleep(6.5)  # the outage itself: no worker runs, slots are missed
        restarted = dt.datetime.now(dt.UTC)
        workers.spawn()
        wait_until(
            lambda: (
                (d := client.get_schedule("catch-up"))
                and d.last_run_at
                and d.last_run_at > restarted + SECOND
            ),
            60,
            "a run after the restart",
        )
        client.pause_schedule("catch-up")
        runs = _finished_runs(client, "catch-up")
        after = client.get_schedule("catch-up")
        assert after is not None
        _check_each_slot_once(client, after, runs, ledger, hub)
    slots = [slot_of(r.instance_id) for r in runs]
    lateness = {slot_of(r.instance_id): r.created_at - slot_of(r.instance_id) for r in runs}
    # slots of the outage inside the window were started late, when the worker came back ...
    caught_up = [s for s in slots if lateness[s] > SECOND]
    assert len(caught_up) >= 2 and all(s > killed for s in caught_up), lateness
    assert all(lateness[s] <= dt.timedelta(seconds=3) for s in slots)
    # ... and the older ones were skipped: every slot that did not run is older than those
    everything = [slots[0] + k * SECOND for k in range((slots[-1] - slots[0]) // SECOND + 1)]
    missing = [s for s in everything if s not in lateness]
    assert missing and after.runs_skipped == len(missing)
    assert max(missing) < min(caught_up)
