"""Durability profiles: 'strict' waits for replicas, so a failover to the replica loses nothing
that was acknowledged (starts, and completions announced to waiting clients)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from _redis import RedisServer

from durable import Client, OrchestrationStatus, Worker, WorkerConfig

pytestmark = pytest.mark.standalone_only


def _wait_replica_online(primary: RedisServer, replica: RedisServer) -> None:
    """Poll until the replica has synced (replication state has no event to wait on)."""
    deadline = time.monotonic() + 30
    with primary.client() as p, replica.client() as r:
        while not (
            int(p.info("replication").get("connected_slaves", 0)) == 1
            and r.info("replication").get("master_link_status") == "up"
        ):
            if time.monotonic() > deadline:
                raise AssertionError("replica did not come online")
            time.sleep(0.05)


def _app(url: str, hub: str, durability: str) -> Worker:
    config = WorkerConfig(
        durability=durability,
        replicas=1 if durability == "strict" else None,
        balance_interval_ms=100,
        poll_ms=200,
        drain_timeout=2,
        lease_ttl_ms=3000,
        renew_interval_ms=500,
    )
    worker = Worker(url, hub=hub, config=config)

    @worker.activity
    def add(ctx: Any, pair: list[int]) -> int:
        return pair[0] + pair[1]

    @worker.orchestrator
    def summing(ctx: Any, n: int) -> Any:
        total = 0
        for i in range(n):
            total = yield ctx.call_activity(add, input=[total, i])
        return total

    return worker


def test_strict_failover_to_replica_loses_no_acknowledged_work(tmp_path: Path, hub: str) -> None:
    primary = RedisServer(tmp_path / "primary", appendfsync="always").start()
    replica = RedisServer(
        tmp_path / "replica", appendfsync="always", extra_args=["--replicaof", "127.0.0.1", str(primary.port)]
    ).start()
    try:
        _wait_replica_online(primary, replica)
        acknowledged: list[str] = []
        observed: dict[str, Any] = {}
        with _app(primary.url, hub, "strict"), Client(primary.url, hub=hub, durability="strict") as client:
            for i in range(30):
                acknowledged.append(
                    client.schedule_new_orchestration("summing", input=3 + i % 5, instance_id=f"job-{i}")
                )
            for iid in acknowledged[:5]:
                state = client.wait_for_orchestration_completion(iid, timeout=30)
                observed[iid] = state.output
            primary.kill()  # kill -9 in the middle of the rest of the work
        with replica.client() as r:
            r.execute_command("REPLICAOF", "NO", "ONE")  # the replica takes over
        with _app(replica.url, hub, "fast"), Client(replica.url, hub=hub) as client:
            for iid in acknowledged:
                state = client.get_orchestration_state(iid)
                assert state is not None, f"acknowledged start of {iid} was lost"
            for iid, output in observed.items():
                state = client.get_orchestration_state(iid)
                assert state is not None and state.runtime_status == OrchestrationStatus.COMPLETED
                assert state.output == output
            for i, iid in enumerate(acknowledged):
                done = client.wait_for_orchestration_completion(iid, timeout=60)
                n = 3 + i % 5
                assert done.output == sum(range(n))
    finally:
        primary.kill()
        replica.kill()


def test_strict_needs_a_standalone_primary_and_a_valid_name(redis_url: str, hub: str) -> None:
    with pytest.raises(ValueError, match="durability"):
        Client(redis_url, hub=hub, durability="sometimes")
