"""Redis Cluster: slots holding partitions move between nodes (redis-cli --cluster reshard) while
orchestrations run, and nothing is lost or applied twice."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from _cluster import RedisClusterServers, find_redis_cli
from test_faults import check_history

from durable import Client, OrchestrationStatus, Worker, WorkerConfig, when_all

pytestmark = pytest.mark.standalone_only  # it makes its own cluster; the cluster run skips it


def _owner_of(servers: RedisClusterServers, slot: int) -> int:
    for i, node in enumerate(servers.nodes):
        with node.client() as c:
            for start, end, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end and int(_[0][1]) == node.port:
                    return i
    raise AssertionError(f"no owner for slot {slot}")


def test_reshard_under_load_loses_nothing(tmp_path: Path, hub: str) -> None:
    servers = RedisClusterServers(tmp_path / "cluster").start()
    try:
        executions: dict[str, int] = {}
        lock = threading.Lock()
        worker = Worker(servers.url, hub=hub, config=WorkerConfig(balance_interval_ms=100, poll_ms=200))

        @worker.activity
        def step(ctx: Any, n: int) -> int:
            with lock:
                executions[ctx.idempotency_key] = executions.get(ctx.idempotency_key, 0) + 1
            time.sleep(0.03)
            return n + 1

        @worker.orchestrator
        def work(ctx: Any, n: int) -> Any:
            value = 0
            for _ in range(n):
                value = yield ctx.call_activity(step, input=value)
                yield ctx.create_timer(ctx.current_utc_datetime)
            fanned = yield when_all([ctx.call_activity(step, input=i) for i in range(n)])
            return value + sum(fanned)

        with servers.nodes[0].client() as c:
            slots = {p: int(c.execute_command("CLUSTER", "KEYSLOT", f"{{{hub}:{p:02d}}}")) for p in range(32)}
        before = {p: _owner_of(servers, s) for p, s in slots.items()}
        source = before[0]
        target = (source + 1) % 3
        ids = {}
        for i, node in enumerate(servers.nodes):
            with node.client() as c:
                ids[i] = c.execute_command("CLUSTER", "MYID").decode()
        with servers.nodes[source].client() as c:
            owned = sum(
                e - s + 1
                for s, e, *rest in c.execute_command("CLUSTER", "SLOTS")
                if int(rest[0][1]) == servers.nodes[source].port
            )
        with worker, Client(servers.url, hub=hub) as client:
            # move every slot of the source node to the target, and keep work flowing meanwhile
            reshard = subprocess.Popen(
                [
                    find_redis_cli(),
                    "--cluster",
                    "reshard",
                    f"127.0.0.1:{servers.nodes[0].port}",
                    "--cluster-from",
                    ids[source],
                    "--cluster-to",
                    ids[target],
                    "--cluster-slots",
                    str(owned),
                    "--cluster-yes",
                    "--cluster-pipeline",
                    "50",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            iids: list[str] = []
            while reshard.poll() is None:
                wave = [client.schedule_new_orchestration(work, input=4) for _ in range(5)]
                iids.extend(wave)
                client.wait_for_orchestration_completion(wave[-1], timeout=120)
            assert reshard.returncode == 0, reshard.stderr.read() if reshard.stderr else ""
            servers.wait_ok()
            moved = [p for p, s in slots.items() if _owner_of(servers, s) != before[p]]
            assert moved, "the reshard should have moved partitions"
            assert len(iids) >= 10, "work should have run during the reshard"
            for iid in iids:
                state = client.wait_for_orchestration_completion(iid, timeout=120)
                assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
                assert state.output == 4 + sum(range(1, 5))
                check_history(client.get_orchestration_history(iid))
        assert len(executions) == len(iids) * 8  # every activity ran (at least once)
    finally:
        servers.kill()
