"""Durable entities against a real redis-server: operations, calls, critical sections, crashes."""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from _poll import wait_until
from _redis import connect

from durable import (
    AsyncClient,
    Client,
    Entity,
    EntityContext,
    EntityId,
    OrchestrationStatus,
    TaskFailedError,
    Worker,
    WorkerConfig,
)
from durable._runtime.entity_step import EntityHalf
from durable._runtime.metrics import REGISTRY
from durable._store.keys import HubKeys, partition_of
from durable._store.store import Store

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent


def counter(ctx: EntityContext, value: Any) -> Any:
    if ctx.operation == "add":
        ctx.set_state(ctx.get_state(0) + value)
    elif ctx.operation == "get":
        return ctx.get_state(0)
    elif ctx.operation == "fail_after_add":
        ctx.set_state(ctx.get_state(0) + value)
        raise ValueError(f"refusing to add {value}")
    elif ctx.operation == "delete":
        ctx.delete_state()
    elif ctx.operation == "fan":
        for key in value:
            ctx.signal_entity(EntityId("counter", key), "add", input=1)
        ctx.schedule_new_orchestration("report", input=value, instance_id=f"report-{ctx.entity_id.key}")
    return None


class Account(Entity):
    state = 0

    def deposit(self, amount: int) -> int:
        self.state += amount
        return int(self.state)

    def withdraw(self, amount: int) -> int:
        if amount > self.state:
            raise ValueError(f"insufficient funds: balance {self.state}, asked {amount}")
        self.state -= amount
        return int(self.state)

    def balance(self) -> int:
        return int(self.state)


def _value(client: Client, entity_id: str) -> Any:
    state = client.get_entity(entity_id)
    return None if state is None else state.state


@pytest.fixture
def worker(redis_url: str, hub: str) -> Worker:
    w = Worker(redis_url, hub=hub, config=WorkerConfig(balance_interval_ms=100, poll_ms=200))
    w.add_entity(counter)
    w.add_entity(Account)
    return w


@pytest.fixture
def client(redis_url: str, hub: str) -> Iterator[Client]:
    c = Client(redis_url, hub=hub)
    yield c
    c.close()


def test_counter_receives_1000_signals_from_4_concurrent_clients(
    worker: Worker, redis_url: str, hub: str, client: Client
) -> None:
    def storm() -> None:
        with Client(redis_url, hub=hub) as c:
            for _ in range(250):
                c.signal_entity("@counter@hits", "add", input=1)

    with worker:
        threads = [threading.Thread(target=storm) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_until(lambda: _value(client, "@counter@hits") == 1000, 30, "1000 signals applied")
    state = client.get_entity(EntityId("Counter", "hits"))
    assert state is not None and state.state == 1000 and state.entity_id == EntityId("counter", "hits")
    assert state.last_modified_at > dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)


def test_calls_results_errors_and_rollback(worker: Worker, client: Client) -> None:
    @worker.orchestrator
    def use_entities(ctx: Any, _: Any) -> Any:
        ctx.signal_entity("@counter@c1", "add", input=5)
        first = yield ctx.call_entity(EntityId("counter", "c1"), "get")
        try:
            yield ctx.call_entity("@counter@c1", "fail_after_add", input=100)
            error = None
        except TaskFailedError as exc:
            error = [str(exc), exc.details.error_type, exc.details.message]
        after = yield ctx.call_entity("@counter@c1", "get")
        deposited = yield ctx.call_entity("@Account@alice", "deposit", input=30)
        try:
            yield ctx.call_entity("@account@alice", "withdraw", input=50)
        except TaskFailedError as exc:
            overdraw = exc.details.message
        balance = yield ctx.call_entity("@account@alice", "balance")
        return {
            "first": first,
            "error": error,
            "after": after,
            "deposited": deposited,
            "overdraw": overdraw,
            "balance": balance,
        }

    with worker:
        iid = client.schedule_new_orchestration(use_entities)
        state = client.wait_for_orchestration_completion(iid, timeout=30)
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    out = state.output
    assert out["first"] == 5 and out["after"] == 5  # the failed operation's +100 was rolled back
    assert out["error"] == [
        "operation 'fail_after_add' on @counter@c1 failed: refusing to add 100",
        "ValueError",
        "refusing to add 100",
    ]
    assert out["deposited"] == 30 and out["balance"] == 30
    assert out["overdraw"] == "insufficient funds: balance 30, asked 50"
    assert _value(client, "@counter@c1") == 5 and _value(client, "@account@alice") == 30
    names = {str(s.entity_id) for s in client.list_entities()}
    assert names == {"@counter@c1", "@account@alice"}
    assert [str(s.entity_id) for s in client.list_entities(name="ACCOUNT")] == ["@account@alice"]


def test_delete_removes_the_entity(worker: Worker, client: Client, redis_url: str, hub: str) -> None:
    with worker:
        client.signal_entity("@counter@gone", "add", input=3)
        wait_until(lambda: _value(client, "@counter@gone") == 3, 20, "the entity to exist")
        client.signal_entity("@counter@gone", "delete")
        wait_until(lambda: client.get_entity("@counter@gone") is None, 20, "the entity to be deleted")
        assert client.list_entities(name="counter") == []
        r = connect(redis_url)
        for pattern in (":e:*", ":entities"):  # the hash and its index entry are gone
            assert list(r.scan_iter(match=f"durable:{{{hub}:*}}{pattern}")) == []
        # what is left is the control hash with the recent signal ids (until they expire)
        [control] = list(r.scan_iter(match=f"durable:{{{hub}:*}}:ec:*"))
        assert set(r.hkeys(control)) == {b"r", b"v"}
        client.signal_entity("@counter@gone", "add", input=1)  # and it can be created again
        wait_until(lambda: _value(client, "@counter@gone") == 1, 20, "the entity to be recreated")


def test_duplicate_signal_ids_apply_once_then_expire(
    worker: Worker, client: Client, redis_url: str, hub: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(EntityHalf, "dedup_seconds", 1)
    target = "@counter@dup"
    control = HubKeys(hub).partition(partition_of(target, 32)).entity_control(target)
    r = connect(redis_url)
    with worker:
        for i in range(20):
            sid = client.signal_entity(target, "add", input=1, signal_id=f"sig-{i}")
            client.signal_entity(target, "add", input=1, signal_id=sid)  # a client retry
        client.signal_entity(target, "add", input=100, signal_id="last")
        wait_until(lambda: (_value(client, target) or 0) >= 100, 20, "the last signal")
        assert _value(client, target) == 120
        assert r.exists(control)  # the recent ids
        wait_until(lambda: not r.exists(control), 20, "the expired ids to be swept")
        client.signal_entity(target, "add", input=1000, signal_id="last")  # forgotten: a new signal
        wait_until(lambda: _value(client, target) == 1120, 20, "the reused id")


def test_entities_signal_entities_and_start_orchestrations(worker: Worker, client: Client) -> None:
    @worker.orchestrator
    def report(ctx: Any, keys: list[str]) -> Any:
        values = []
        for key in keys:
            values.append((yield ctx.call_entity(EntityId("counter", key), "get")))
        return values

    with worker:
        client.signal_entity("@counter@hub", "fan", input=["x", "y"])
        wait_until(lambda: client.get_orchestration_state("report-hub"), 20, "the entity's orchestration")
        state = client.wait_for_orchestration_completion("report-hub", timeout=30)
    assert state.runtime_status == OrchestrationStatus.COMPLETED
    assert state.output in ([1, 1], [0, 1], [1, 0], [0, 0])  # signals and start race; all arrive
    assert _value(client, "@counter@x") == 1 and _value(client, "@counter@y") == 1


def test_scheduled_signal_waits_for_its_time(worker: Worker, client: Client) -> None:
    with worker:
        at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1.5)
        client.signal_entity("@counter@later", "add", input=7, signal_at=at)
        client.signal_entity("@counter@marker", "add", input=1)
        wait_until(lambda: _value(client, "@counter@marker") == 1, 20, "the marker")
        assert client.get_entity("@counter@later") is None  # not yet
        state = wait_until(lambda: client.get_entity("@counter@later"), 20, "the scheduled signal")
    assert state.state == 7 and state.last_modified_at >= at - dt.timedelta(milliseconds=50)


def test_unknown_entity_is_dead_lettered(worker: Worker, client: Client, redis_url: str, hub: str) -> None:
    metric = {"kind": "dead_letter_unknown_entity"}
    before = REGISTRY.get_sample_value("durable_redeliveries_total", metric) or 0
    with worker:
        client.signal_entity("@nobody@k", "add", input=1)
        client.signal_entity("@counter@after", "add", input=1)
        wait_until(lambda: _value(client, "@counter@after") == 1, 20, "the next signal")
        dlq = HubKeys(hub).partition(partition_of("@nobody@k", 32)).dlq
        r = connect(redis_url)
        [(_, fields)] = wait_until(lambda: r.xrange(dlq), 20, "the dead letter")
    assert b"no entity named 'nobody' is registered" in fields[b"dlq_reason"]
    assert (REGISTRY.get_sample_value("durable_redeliveries_total", metric) or 0) >= before + 1


# -- critical sections -------------------------------------------------------------------------------
def test_concurrent_transfers_in_critical_sections_conserve_the_total(
    worker: Worker, client: Client, redis_url: str, hub: str
) -> None:
    accounts = [f"@account@a{i}" for i in range(4)]

    @worker.orchestrator
    def transfer(ctx: Any, plan: dict[str, Any]) -> Any:
        src, dst, extra, amount = plan["src"], plan["dst"], plan["extra"], plan["amount"]
        lock = yield ctx.lock_entities(src, dst, *extra)
        with lock:
            balance = yield ctx.call_entity(src, "balance")
            if balance < amount:
                return "skipped"
            # check-then-act across entities: the withdraw cannot fail (which would fail the
            # orchestration) because nobody else can interleave while the section holds the locks
            yield ctx.call_entity(src, "withdraw", input=amount)
            yield ctx.call_entity(dst, "deposit", input=amount)
            for e in extra:
                yield ctx.call_entity(e, "balance")
        return "moved"

    rng = random.Random(7)
    plans = []
    for _ in range(20):
        src, dst = rng.sample(accounts, 2)
        rest = [a for a in accounts if a not in (src, dst)]
        plans.append(
            {
                "src": src,
                "dst": dst,
                "amount": rng.randint(10, 60),
                "extra": rng.sample(rest, rng.randint(0, 2)),
            }
        )
    with worker:
        for a in accounts:
            client.signal_entity(a, "deposit", input=100)
        wait_until(lambda: all(_value(client, a) == 100 for a in accounts), 20, "initial deposits")
        iids = [client.schedule_new_orchestration(transfer, input=p) for p in plans]
        results = [client.wait_for_orchestration_completion(i, timeout=60) for i in iids]
        assert all(r.runtime_status == OrchestrationStatus.COMPLETED for r in results), [
            r.failure_details for r in results
        ]
        balances = [_value(client, a) for a in accounts]
    assert sum(balances) == 400 and min(balances) >= 0
    assert any(r.output == "moved" for r in results)
    r = connect(redis_url)
    for control in list(
        r.scan_iter(match=f"durable:{{{hub}:*}}:ec:*")
    ):  # every lock released, no queue left behind
        assert r.hget(control, "l") in (None, b"") and r.hget(control, "q") in (None, b"")
    assert all(s.locked_by is None and s.backlog == 0 for s in client.list_entities(name="account"))


def test_locks_are_released_when_the_holder_fails_or_is_terminated(worker: Worker, client: Client) -> None:
    @worker.orchestrator
    def hold_and_wait(ctx: Any, target: str) -> Any:
        lock = yield ctx.lock_entities(target)
        with lock:
            yield ctx.call_entity(target, "deposit", input=1)
            yield ctx.wait_for_external_event("go")
        return "done"

    @worker.orchestrator
    def hold_and_return(ctx: Any, target: str) -> Any:
        yield ctx.lock_entities(target)  # never released explicitly
        return "kept the lock"

    @worker.orchestrator
    def hold_and_crash(ctx: Any, target: str) -> Any:
        lock = yield ctx.lock_entities(target)
        yield ctx.call_entity(target, "deposit", input=1)
        assert lock.entities  # no `with`: the lock is still held when the orchestration fails
        raise RuntimeError("crash inside the critical section")

    @worker.orchestrator
    def outsider(ctx: Any, target: str) -> Any:
        lock = yield ctx.lock_entities(target, "@account@zz")
        with lock:
            yield ctx.call_entity("@counter@not-locked", "get")

    @worker.orchestrator
    def next_holder(ctx: Any, target: str) -> Any:
        lock = yield ctx.lock_entities(target)
        with lock:
            return (yield ctx.call_entity(target, "balance"))

    with worker:
        held = client.schedule_new_orchestration(hold_and_wait, input="@account@t1")
        wait_until(lambda: _value(client, "@account@t1") == 1, 20, "the first holder's deposit")
        waiting = client.schedule_new_orchestration(next_holder, input="@account@t1")
        wait_until(lambda: (e := client.get_entity("@account@t1")) and e.backlog == 1, 20, "a waiting lock")
        client.signal_entity("@account@t1", "deposit", input=10)  # queued behind the lock request
        wait_until(lambda: (e := client.get_entity("@account@t1")) and e.backlog == 2, 20, "two waiting")
        st = client.get_entity("@account@t1")
        assert st is not None and st.locked_by == held and st.state == 1
        client.terminate_orchestration(held)
        assert client.wait_for_orchestration_completion(waiting, timeout=20).output == 1
        wait_until(lambda: _value(client, "@account@t1") == 11, 20, "the queued signal")

        for fn, expected in (
            (hold_and_return, OrchestrationStatus.COMPLETED),
            (hold_and_crash, OrchestrationStatus.FAILED),
        ):
            target = f"@account@{fn.__name__}"
            first = client.schedule_new_orchestration(fn, input=target)
            assert client.wait_for_orchestration_completion(first, timeout=20).runtime_status == expected
            second = client.schedule_new_orchestration(next_holder, input=target)
            done = client.wait_for_orchestration_completion(second, timeout=20)
            assert done.runtime_status == OrchestrationStatus.COMPLETED

        bad = client.schedule_new_orchestration(outsider, input="@account@t2")
        failed = client.wait_for_orchestration_completion(bad, timeout=20)
        assert failed.runtime_status == OrchestrationStatus.FAILED
        assert failed.failure_details is not None
        assert "may only call the locked entities" in failed.failure_details.message
        after = client.schedule_new_orchestration(next_holder, input="@account@t2")
        assert client.wait_for_orchestration_completion(after, timeout=20).output == 0


# -- scale -------------------------------------------------------------------------------------------
def test_backlog_of_10000_signals_drains_in_batches(
    worker: Worker, client: Client, redis_url: str, hub: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = "@counter@backlog"
    key = HubKeys(hub).partition(partition_of(target, 32)).entity(target)
    loads: list[int] = []
    writes: list[int] = []
    real_load, real_commit = EntityHalf.load, Store.commit

    async def load(self: EntityHalf, step: Any, entity_ids: list[str]) -> None:
        if target in entity_ids:
            loads.append(entity_ids.count(target))
        await real_load(self, step, entity_ids)

    async def commit(self: Store, index: int, lease: str, plan: Any) -> Any:
        n = sum(1 for rec in plan.records if rec.hash_key == key)
        out = await real_commit(self, index, lease, plan)
        if n:
            writes.append(n)
        return out

    monkeypatch.setattr(EntityHalf, "load", load)
    monkeypatch.setattr(Store, "commit", commit)

    async def fill() -> None:
        async with AsyncClient(redis_url, hub=hub) as c:

            async def send(n: int) -> None:
                for _ in range(n):
                    await c.signal_entity(target, "add", input=1)

            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(send, 500)

    anyio.run(fill)
    with worker:
        wait_until(lambda: _value(client, target) == 10_000, 60, "the backlog to drain")
    assert all(n == 1 for n in loads) and all(n == 1 for n in writes)  # loaded and written once per step
    assert len(writes) == len(loads)
    assert 10_000 / worker.config.batch_size <= len(writes) <= 200, len(writes)


# -- a worker process killed mid-storm ---------------------------------------------------------------
class _Workers:
    def __init__(self, url: str, hub: str) -> None:
        self.url, self.hub = url, hub
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self) -> subprocess.Popen[bytes]:
        env = dict(
            os.environ,
            DURABLE_REDIS_URL=self.url,
            DURABLE_HUB=self.hub,
            PYTHONPATH=os.pathsep.join([str(TESTS), str(REPO)]),
        )
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "durable",
                "worker",
                "fixtures.entity_app:worker",
                "--log-level",
                "warning",
            ],
            env=env,
            cwd=str(TESTS),
        )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)


@pytest.fixture
def workers(redis_url: str, hub: str) -> Iterator[_Workers]:
    w = _Workers(redis_url, hub)
    yield w
    w.close()


def test_sigkill_mid_signal_storm_loses_and_repeats_nothing(
    workers: _Workers, redis_url: str, hub: str, client: Client
) -> None:
    entities = [f"@sequence@s{i}" for i in range(4)]
    senders, per_sender = 3, 400
    resume = threading.Event()  # set just before the kill: the storm goes on while the worker dies

    def applied() -> int:
        return sum((_value(client, e) or {"n": 0})["n"] for e in entities)

    def storm(sender: int) -> None:
        numbers = dict.fromkeys(entities, 0)
        with Client(redis_url, hub=hub) as c:
            for i in range(per_sender):
                if i == per_sender // 3:
                    resume.wait(60)
                target = entities[i % len(entities)]
                numbers[target] += 1
                sid = f"{sender}-{target}-{numbers[target]}"
                c.signal_entity(target, "next", input=[str(sender), numbers[target]], signal_id=sid)
                if i % 10 == 0:  # a client that retries a send it is unsure of: same signal id
                    c.signal_entity(target, "next", input=[str(sender), numbers[target]], signal_id=sid)
                if i > per_sender // 3 and i % 20 == 0:
                    time.sleep(0.01)  # spread the rest over the takeover

    first = workers.spawn()
    threads = [threading.Thread(target=storm, args=(s,)) for s in range(senders)]
    for t in threads:
        t.start()
    wait_until(lambda: applied() >= 150, 60, "the first worker to apply signals")
    resume.set()
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    before = applied()
    workers.spawn()
    for t in threads:
        t.join()
    total = senders * per_sender
    assert before < total, "the kill should land mid-storm"
    wait_until(lambda: applied() >= total, 90, "every signal to be applied")
    states = [_value(client, e) for e in entities]
    assert sum(s["n"] for s in states) == total
    assert all(s["bad"] == 0 for s in states), states  # nothing repeated, nothing out of order
    for s in states:
        assert s["last"] == {str(k): per_sender // len(entities) for k in range(senders)}
