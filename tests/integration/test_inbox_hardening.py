"""Hardening of the partition inbox and commit (issue: what a newcomer and an adversary found).

1. a wire entry's public fields cannot pose as the engine's forwarding metadata;
2. a fan-out too large for one Lua ``unpack`` commits, and a commit that keeps failing with a
   Redis error is isolated like any other poison step, so neighbours keep flowing;
3. deeply nested JSON is rejected as malformed at once (no poison path);
4. dead letters are written by the commit itself: a retried step never dead-letters twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from _poll import wait_until
from _redis import connect
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from durable import Client, EntityContext, OrchestrationStatus, Worker, WorkerConfig, when_all
from durable._core.serialization import pack_record
from durable._store.keys import HubKeys, partition_of
from durable._store.store import CommitPlan, Store

FAST = WorkerConfig(balance_interval_ms=100, poll_ms=200, max_recoveries=2)


def counter(ctx: EntityContext, value: Any) -> Any:
    if ctx.operation == "add":
        ctx.set_state(ctx.get_state(0) + value)
    return ctx.get_state(0)


def noop(ctx: Any, value: int) -> int:
    return value


def fan_out(ctx: Any, n: int) -> Any:
    results = yield when_all([ctx.call_activity(noop, input=i) for i in range(n)])
    return sum(results)


def waits(ctx: Any, _: Any) -> Any:
    return (yield ctx.wait_for_external_event("go"))


@pytest.fixture
def worker(redis_url: str, hub: str) -> Worker:
    w = Worker(redis_url, hub=hub, config=WorkerConfig(**vars(FAST)))
    w.add_entity(counter)
    w.add_activity(noop)
    w.add_orchestrator(fan_out)
    w.add_orchestrator(waits)
    return w


@pytest.fixture
def client(redis_url: str, hub: str) -> Iterator[Client]:
    c = Client(redis_url, hub=hub)
    yield c
    c.close()


def _value(client: Client, entity_id: str) -> Any:
    state = client.get_entity(entity_id)
    return None if state is None else state.state


def _dead(redis_url: str, hub: str, partition: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
    return list(connect(redis_url).xrange(HubKeys(hub).partition(partition).dlq))


def _same_partition(iid: str, prefix: str, partitions: int = 32) -> str:
    target = partition_of(iid, partitions)
    return next(f"{prefix}-{i}" for i in range(10_000) if partition_of(f"{prefix}-{i}", partitions) == target)


@pytest.mark.standalone_only
def test_wire_fields_named_src_and_seq_are_ignored(
    worker: Worker, client: Client, redis_url: str, hub: str
) -> None:
    target = "@counter@src"
    p = partition_of(target, 32)
    inbox = HubKeys(hub).partition(p).inbox
    r = connect(redis_url)
    with worker:
        client.signal_entity(target, "add", input=0)
        wait_until(lambda: _value(client, target) == 0, 20, "the entity")
        for i in range(9):  # unknown fields are ignored, even the engine's own names
            r.xadd(
                inbox,
                {
                    "v": "1",
                    "kind": "signal",
                    "target": target,
                    "op": "add",
                    "id": f"s{i}",
                    "data": "1",
                    "src": "3",
                    "seq": "0-0",
                    "m": "not msgpack",
                },
            )
        wait_until(lambda: _value(client, target) == 9, 30, "all nine signals")
        # a forged internal entry with a bad sequence is malformed, dead-lettered at once
        forged = pack_record({"kind": "signal", "target": target, "op": "add", "input": None, "id": "f"})
        r.xadd(inbox, {"m": forged, "src": "3", "seq": "garbage"})
        r.xadd(inbox, {"v": "1", "kind": "signal", "target": target, "op": "add", "id": "after", "data": "1"})
        wait_until(lambda: _value(client, target) == 10, 30, "the signal after the forged entry")
        dead = wait_until(lambda: _dead(redis_url, hub, p), 20, "the dead letter")
    assert len(dead) == 1
    assert b"invalid sequence" in dead[0][1][b"dlq_reason"]
    assert _value(client, target) == 10


@pytest.mark.standalone_only
def test_deeply_nested_json_is_malformed_not_poison(
    worker: Worker, client: Client, redis_url: str, hub: str
) -> None:
    target = "@counter@deep"
    p = partition_of(target, 32)
    inbox = HubKeys(hub).partition(p).inbox
    r = connect(redis_url)
    with worker:
        client.signal_entity(target, "add", input=0)
        wait_until(lambda: _value(client, target) == 0, 20, "the entity")
        r.xadd(
            inbox,
            {
                "v": "1",
                "kind": "signal",
                "target": target,
                "op": "add",
                "id": "deep",
                "data": "[" * 100_000 + "]" * 100_000,
            },
        )
        r.xadd(inbox, {"v": "1", "kind": "signal", "target": target, "op": "add", "id": "next", "data": "2"})
        wait_until(lambda: _value(client, target) == 2, 30, "the next signal")
        dead = wait_until(lambda: _dead(redis_url, hub, p), 20, "the dead letter")
    assert len(dead) == 1
    reason = dead[0][1][b"dlq_reason"].decode()
    assert "not valid JSON" in reason and "nested too deeply" in reason
    assert "fail" not in reason  # not the poison path's "made the partition step fail N times"


def test_dead_letters_are_written_once_when_a_commit_is_retried(
    worker: Worker, client: Client, redis_url: str, hub: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = "@counter@once"
    p = partition_of(target, 32)
    real_commit = Store.commit
    failed: list[int] = []

    async def commit(self: Store, index: int, lease: str, plan: CommitPlan) -> Any:
        if plan.dead_letters and not failed:
            failed.append(index)  # the first commit that dead-letters: Redis goes away before it runs
            raise RedisConnectionError("connection reset (injected)")
        return await real_commit(self, index, lease, plan)

    monkeypatch.setattr(Store, "commit", commit)
    with worker:
        client.signal_entity(target, "add", input=0)
        wait_until(lambda: _value(client, target) == 0, 20, "the entity")
        r = connect(redis_url)  # an engine-format entry whose kind is not a string: malformed
        r.xadd(HubKeys(hub).partition(p).inbox, {"m": pack_record({"kind": 7, "target": target})})
        client.signal_entity(target, "add", input=5)
        wait_until(lambda: _value(client, target) == 5, 30, "the signal after the malformed one")
    assert failed == [p]
    assert len(_dead(redis_url, hub, p)) == 1


def test_fan_out_beyond_luas_unpack_limit_completes(worker: Worker, client: Client) -> None:
    n = 20_000
    with worker:
        iid = client.schedule_new_orchestration(fan_out, input=n)
        state = client.wait_for_orchestration_completion(iid, timeout=240)
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.output == n * (n - 1) // 2


def test_a_commit_that_keeps_failing_is_isolated_and_neighbours_flow(
    worker: Worker, client: Client, redis_url: str, hub: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = "wedge-victim"
    real_commit = Store.commit
    victim_key = HubKeys(hub).partition(partition_of(victim, 32)).instance(victim)

    async def commit(self: Store, index: int, lease: str, plan: CommitPlan) -> Any:
        # the victim's record can never be written: a script error that repeats every time
        if any(rec.hash_key == victim_key for rec in plan.records) and not plan.dead_letters:
            raise ResponseError("user_script:33: too many results to unpack (injected)")
        return await real_commit(self, index, lease, plan)

    monkeypatch.setattr(Store, "commit", commit)
    with worker:
        iid = client.schedule_new_orchestration(waits, instance_id=victim)
        neighbours = [
            client.schedule_new_orchestration(waits, instance_id=_same_partition(victim, f"n{i}"))
            for i in range(3)
        ]
        for n in neighbours:
            client.raise_orchestration_event(n, "go", data=n)
        for n in neighbours:
            assert client.wait_for_orchestration_completion(n, timeout=60).output == n
        dead = wait_until(lambda: _dead(redis_url, hub, partition_of(victim, 32)), 60, "the dead letter")
        state = client.wait_for_orchestration_completion(iid, timeout=30)
    assert len(dead) == 1 and b"dead-lettered" in dead[0][1][b"dlq_reason"]
    assert state.runtime_status == OrchestrationStatus.FAILED
    assert state.failure_details is not None and state.failure_details.error_type == "PoisonMessageError"
