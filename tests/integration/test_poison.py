"""Poison and bad input: isolated, dead-lettered with the reason, and the partition keeps flowing."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import redis  # noqa: F401
from _redis import connect

from durable import Client, OrchestrationStatus, PayloadTooLargeError, Worker, WorkerConfig
from durable._core.serialization import pack_record
from durable._store.keys import HubKeys, partition_of

FAST = dict(balance_interval_ms=100, poll_ms=200)


def _same_partition(iid: str, prefix: str, partitions: int = 32) -> str:
    target = partition_of(iid, partitions)
    return next(f"{prefix}-{i}" for i in range(10_000) if partition_of(f"{prefix}-{i}", partitions) == target)


def test_message_that_crashes_the_step_is_dead_lettered(redis_url: str, hub: str) -> None:
    worker = Worker(redis_url, hub=hub, config=WorkerConfig(max_recoveries=2, **FAST))  # type: ignore[arg-type]

    @worker.orchestrator
    def waits(ctx: Any, _: Any) -> Any:
        return (yield ctx.wait_for_external_event("go"))

    r = connect(redis_url)
    with worker, Client(redis_url, hub=hub) as client:
        victim = client.schedule_new_orchestration(waits, instance_id="victim")
        client.wait_for_orchestration_start(victim, timeout=20)
        pk = HubKeys(hub).partition(partition_of(victim, 32))
        # an event whose payload is not valid msgpack: decoding it blows up inside the step
        bomb = pack_record({"kind": "event", "target": victim, "name": "go", "input": b"\xc1"})
        r.xadd(pk.inbox, {"m": bomb})
        neighbour = client.schedule_new_orchestration(waits, instance_id=_same_partition(victim, "n"))
        client.raise_orchestration_event(neighbour, "go", data="fine")
        state = client.wait_for_orchestration_completion(victim, timeout=30)
        assert state.runtime_status == OrchestrationStatus.FAILED
        assert state.failure_details is not None
        assert state.failure_details.error_type == "PoisonMessageError"
        assert client.wait_for_orchestration_completion(neighbour, timeout=30).output == "fine"
    dead = r.xrange(pk.dlq)
    assert len(dead) == 1
    assert b"dead-lettered" in dead[0][1][b"dlq_reason"]
    assert dead[0][1][b"m"] == bomb


def test_malformed_entries_are_dead_lettered_without_blocking(redis_url: str, hub: str) -> None:
    worker = Worker(redis_url, hub=hub, config=WorkerConfig(**FAST))  # type: ignore[arg-type]

    @worker.orchestrator
    def hello(ctx: Any, name: str) -> str:
        return f"hi {name}"
        yield  # pragma: no cover

    r = connect(redis_url)
    with worker, Client(redis_url, hub=hub) as client:
        iid = "after-garbage"
        pk = HubKeys(hub).partition(partition_of(iid, 32))
        r.xadd(pk.inbox, {"m": b"\xc1\xc1not msgpack"})
        r.xadd(pk.inbox, {"m": pack_record(["not", "a", "map"])})
        assert (
            client.wait_for_orchestration_completion(
                client.schedule_new_orchestration(hello, input="x", instance_id=iid), timeout=20
            ).output
            == "hi x"
        )
    reasons = [e[1][b"dlq_reason"].decode() for e in r.xrange(pk.dlq)]
    assert len(reasons) == 2
    assert "cannot decode" in reasons[0]
    assert "must be a map" in reasons[1]


def test_payload_over_the_cap_is_rejected_at_the_call_site(redis_url: str, hub: str) -> None:
    worker = Worker(redis_url, hub=hub, config=WorkerConfig(**FAST))  # type: ignore[arg-type]

    @worker.activity
    def echo(ctx: Any, data: Any) -> Any:
        return data

    @worker.orchestrator
    def too_big(ctx: Any, _: Any) -> Any:
        yield ctx.call_activity(echo, input="x" * (3 * 1024 * 1024))

    with worker, Client(redis_url, hub=hub) as client:
        with pytest.raises(PayloadTooLargeError, match="exceeds the limit"):
            client.schedule_new_orchestration(too_big, input=b"y" * (3 * 1024 * 1024))
        state = client.wait_for_orchestration_completion(
            client.schedule_new_orchestration(too_big), timeout=20
        )
    assert state.runtime_status == OrchestrationStatus.FAILED
    assert state.failure_details is not None and state.failure_details.error_type == "PayloadTooLargeError"


def test_history_limit_fails_with_a_clear_reason(redis_url: str, hub: str) -> None:
    config = WorkerConfig(history_warn_events=20, history_max_events=40, **FAST)  # type: ignore[arg-type]
    worker = Worker(redis_url, hub=hub, config=config)

    @worker.orchestrator
    def endless(ctx: Any, _: Any) -> Any:
        while True:
            yield ctx.create_timer(ctx.current_utc_datetime + dt.timedelta(milliseconds=1))

    with worker, Client(redis_url, hub=hub) as client:
        state = client.wait_for_orchestration_completion(
            client.schedule_new_orchestration(endless), timeout=30
        )
    assert state.runtime_status == OrchestrationStatus.FAILED
    assert state.failure_details is not None
    assert "history" in state.failure_details.message and "continue_as_new" in state.failure_details.message


@pytest.mark.standalone_only
def test_redis_oom_and_read_only_give_clear_errors_and_no_partial_state(tmp_path: Any, hub: str) -> None:
    from _redis import RedisServer
    from redis.exceptions import OutOfMemoryError, ReadOnlyError

    server = RedisServer(tmp_path / "r").start()
    try:
        worker = Worker(server.url, hub=hub, config=WorkerConfig(**FAST))  # type: ignore[arg-type]

        @worker.orchestrator
        def waits(ctx: Any, _: Any) -> Any:
            return (yield ctx.wait_for_external_event("go"))

        with server.client() as admin, worker, Client(server.url, hub=hub) as client:
            iid = client.schedule_new_orchestration(waits, instance_id="oom-victim")
            client.wait_for_orchestration_start(iid, timeout=20)
            history_before = client.get_orchestration_history(iid)
            used = int(admin.info("memory")["used_memory"])
            admin.config_set("maxmemory", used // 2)  # Redis is now out of memory
            with pytest.raises(OutOfMemoryError):
                client.schedule_new_orchestration(waits, instance_id="never-started")
            assert client.get_orchestration_state("never-started") is None
            # an event accepted before the OOM cannot be committed while Redis is full ...
            admin.config_set("maxmemory", 0)
            client.raise_orchestration_event(iid, "go", data=1)
            admin.config_set("maxmemory", used // 2)
            assert client.get_orchestration_history(iid)[: len(history_before)] == history_before
            # ... and goes through once memory is available again, exactly once
            admin.config_set("maxmemory", 0)
            assert client.wait_for_orchestration_completion(iid, timeout=30).output == 1
            assert sum(1 for e in client.get_orchestration_history(iid) if e["k"] == "EventRaised") == 1
            # a read-only replica refuses writes with a clear error and keeps nothing
            admin.config_set("replica-read-only", "yes")
            admin.execute_command("REPLICAOF", "127.0.0.1", "1")  # a primary that does not exist
            with pytest.raises(ReadOnlyError):
                client.schedule_new_orchestration(waits, instance_id="read-only")
            admin.execute_command("REPLICAOF", "NO", "ONE")
            assert client.get_orchestration_state("read-only") is None
    finally:
        server.kill()


def test_large_payloads_are_stored_once_outside_history_and_purged(redis_url: str, hub: str) -> None:
    worker = Worker(redis_url, hub=hub, config=WorkerConfig(**FAST))  # type: ignore[arg-type]

    @worker.activity
    def size(ctx: Any, data: bytes) -> int:
        return len(data)

    @worker.activity
    def make(ctx: Any, n: int) -> bytes:
        return b"z" * n

    @worker.orchestrator
    def big(ctx: Any, data: bytes) -> Any:
        first = yield ctx.call_activity(size, input=data)
        again = yield ctx.call_activity(size, input=data)  # the same payload: one stored copy
        made = yield ctx.call_activity(make, input=300_000)
        ctx.set_custom_status(made)
        return [first, again, len(made), made[:3]]

    payload = b"p" * 1_500_000  # near the 2 MB cap
    r = connect(redis_url)
    with worker, Client(redis_url, hub=hub) as client:
        iid = client.schedule_new_orchestration(big, input=payload, instance_id="big-1")
        state = client.wait_for_orchestration_completion(iid, timeout=60)
        assert state.output == [1_500_000, 1_500_000, 300_000, b"zzz"]
        assert state.input == payload and state.custom_status == b"z" * 300_000
        pk = HubKeys(hub).partition(partition_of(iid, 32))
        history_bytes = sum(len(x) for x in r.lrange(pk.history(iid), 0, -1))
        assert history_bytes < 10_000, "large payloads must not be inlined in the history"
        blobs = r.smembers(pk.blobs(iid))
        assert len(blobs) == 2  # the input once (used three times) and the activity's result once
        assert len(r.hget(pk.instance(iid), "input")) < 200
        events = client.get_orchestration_history(iid)
        assert next(e for e in events if e["k"] == "ExecutionStarted")["input"] == payload
        assert client.purge_orchestration(iid)
        assert not any(r.exists(b) for b in blobs) and not r.exists(pk.blobs(iid))


def test_redis_trouble_while_fetching_a_large_input_is_not_the_activitys_failure(
    redis_url: str, hub: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    from durable._store.store import Store

    real = Store.resolve
    failures = {"left": 3}

    async def flaky(self: Store, data: Any) -> Any:
        if failures["left"] > 0 and data is not None and data.startswith(b"\xc1blob:"):
            failures["left"] -= 1
            raise RedisConnectionError("Connection closed by server.")
        return await real(self, data)

    monkeypatch.setattr(Store, "resolve", flaky)
    worker = Worker(redis_url, hub=hub, config=WorkerConfig(**FAST))  # type: ignore[arg-type]

    @worker.activity
    def size(ctx: Any, data: bytes) -> int:
        return len(data)

    @worker.orchestrator
    def big_input(ctx: Any, data: bytes) -> Any:
        return (yield ctx.call_activity(size, input=data))

    with worker, Client(redis_url, hub=hub) as client:
        iid = client.schedule_new_orchestration(big_input, input=b"q" * 200_000)
        state = client.wait_for_orchestration_completion(iid, timeout=60)
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    assert state.output == 200_000 and failures["left"] == 0
