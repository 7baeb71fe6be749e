"""Deploying new code against a real redis-server: two code versions serving one hub, instances
waiting for their version, patching across a code change, and the replay checker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _poll import wait_until
from _redis import connect, free_port
from fixtures import versions_app as app

from durable import Client, OrchestrationStatus, Worker, WorkerConfig
from durable._store.keys import HubKeys
from durable.cli import main

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent


class Apps:
    """``durable worker fixtures.versions_app:worker`` processes of either code version."""

    def __init__(self, url: str, hub: str) -> None:
        self.url, self.hub = url, hub
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, version: str, ops_port: int | None = None) -> subprocess.Popen[bytes]:
        env = dict(os.environ, APP_VERSION=version, PYTHONPATH=os.pathsep.join([str(TESTS), str(REPO)]))
        args = [sys.executable, "-m", "durable", "worker", "fixtures.versions_app:worker"]
        args += ["--redis-url", self.url, "--hub", self.hub, "--log-level", "warning"]
        if ops_port is not None:
            args += ["--ops-port", str(ops_port), "--ops-host", "127.0.0.1"]
        proc = subprocess.Popen(args, env=env, cwd=str(TESTS))
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def apps(redis_url: str, hub: str) -> Iterator[Apps]:
    running = Apps(redis_url, hub)
    yield running
    running.close()


def live_caps(redis_url: str, hub: str) -> set[str]:
    r = connect(redis_url)
    try:
        (sec, usec) = r.time()
        now = int(sec) * 1000 + int(usec) // 1000
        return {k.decode() for k, v in r.hgetall(HubKeys(hub).caps).items() if int(v) > now}
    finally:
        r.close()


def waiting_gauge(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith('durable_orchestrations_waiting_for_version{name="flow",version="1"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_two_code_versions_serve_one_hub_and_instances_wait_for_theirs(
    apps: Apps, redis_url: str, hub: str, capsys: pytest.CaptureFixture[str]
) -> None:
    v1 = apps.spawn("1")
    ops = free_port()
    apps.spawn("2", ops)
    wait_until(lambda: {"o|flow|1", "o|flow|2", "a|stamp"} <= live_caps(redis_url, hub), 20, "both workers")
    with Client(redis_url, hub) as client:
        pinned = {
            client.schedule_new_orchestration("flow", input=n, version=version): (version, n)
            for n in range(12)
            for version in ("1", "2")
        }
        unpinned = [client.schedule_new_orchestration("flow", input=100 + n) for n in range(4)]
        for iid, (version, n) in pinned.items():
            state = client.wait_for_orchestration_completion(iid, timeout=30)
            assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
            expected = f"hello v1 #{n}" if version == "1" else f"[hello v2 #{n}]"
            assert state.output == {"version": version, "result": expected}
            assert state.version == version
        for iid in unpinned:  # pinned at the first step to the newest version of the worker running it
            state = client.wait_for_orchestration_completion(iid, timeout=30)
            assert state.runtime_status == OrchestrationStatus.COMPLETED
            assert state.version in ("1", "2") and state.output["version"] == state.version

        v1.send_signal(signal.SIGTERM)
        assert v1.wait(timeout=20) == 0
        waiting = [client.schedule_new_orchestration("flow", input=200 + n, version="1") for n in range(3)]
        wait_until(lambda: waiting_gauge(ops) == 3, 20, "the gauge to count the waiting instances")
        assert main(["partitions", "--redis-url", redis_url, "--hub", hub, "--output", "json"]) == 0
        partitions = json.loads(capsys.readouterr().out)
        assert sum(p["waiting_for_version"] for p in partitions) == 3
        for iid in waiting:
            state = client.get_orchestration_state(iid)
            assert state is not None and state.runtime_status == OrchestrationStatus.PENDING

        apps.spawn("1")  # a worker with version "1" is back
        for n, iid in enumerate(waiting):
            state = client.wait_for_orchestration_completion(iid, timeout=30)
            assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
            assert state.output == {"version": "1", "result": f"hello v1 #{200 + n}"}
        wait_until(lambda: waiting_gauge(ops) == 0, 20, "the gauge to drop")


def variant(redis_url: str, hub: str, orchestrator: Callable[..., Any], **config: Any) -> Worker:
    worker = Worker(redis_url, hub=hub, config=WorkerConfig(**{**app.FAST, **config}))
    worker.add_activity(app.greet)
    worker.add_activity(app.stamp)
    worker.add_orchestrator(orchestrator, name="checkout")
    return worker


def waits_for_approval(client: Client, iid: str) -> bool:
    return any(e["k"] == "TaskCompleted" for e in client.get_orchestration_history(iid))


def test_is_patched_is_false_for_a_live_instance_of_old_code_and_true_for_new_ones(
    redis_url: str, hub: str
) -> None:
    with Client(redis_url, hub) as client:
        with variant(redis_url, hub, app.checkout_old):
            old = client.schedule_new_orchestration("checkout", input="old order")
            wait_until(lambda: waits_for_approval(client, old), 20, "the old instance to wait for approval")
        with variant(redis_url, hub, app.checkout_patched):  # the code changes under the live instance
            new = client.schedule_new_orchestration("checkout", input="new order")
            wait_until(lambda: waits_for_approval(client, new), 20, "the new instance to wait for approval")
            for iid in (old, new):
                client.raise_orchestration_event(iid, "approve", data=True)
            old_state = client.wait_for_orchestration_completion(old, timeout=20)
            new_state = client.wait_for_orchestration_completion(new, timeout=20)
        assert old_state.output == {"greeting": "hello old order", "approved": True, "patched": False}
        assert new_state.output == {"greeting": "[hello new order]", "approved": True, "patched": True}
        markers = {
            iid: [e for e in client.get_orchestration_history(iid) if e["k"] == "PatchMarker"]
            for iid in (old, new)
        }
        assert markers[old] == [] and [m["patch"] for m in markers[new]] == ["stamp-greeting"]


def test_replay_check_gates_a_deploy_from_the_hub_and_from_exported_histories(
    redis_url: str, hub: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Client(redis_url, hub) as client, variant(redis_url, hub, app.checkout_old):
        waiting = client.schedule_new_orchestration("checkout", input="w")
        done = client.schedule_new_orchestration("checkout", input="d")
        client.raise_orchestration_event(done, "approve", data=1)
        assert client.wait_for_orchestration_completion(done, timeout=20).output["approved"] == 1
        wait_until(lambda: waits_for_approval(client, waiting), 20, "the instance to wait for approval")

    def check(*args: str) -> tuple[int, Any]:
        code = main(["replay-check", *args, "--output", "json"])
        return code, json.loads(capsys.readouterr().out)

    hub_args = ["--redis-url", redis_url, "--hub", hub]
    code, report = check("fixtures.versions_app:compatible", *hub_args)
    assert code == 0 and report["replayed"] == 2 and report["failed"] == 0
    for bad in ("incompatible", "inserted"):
        code, report = check(f"fixtures.versions_app:{bad}", *hub_args)
        failed = {r["instance_id"]: r for r in report["results"] if not r["ok"]}
        assert code == 1 and set(failed) == {waiting, done}, report
    assert failed[waiting]["event_kind"] == "TaskCompleted"  # "inserted": the point it passed without it

    assert main(["orchestration", "history", waiting, *hub_args, "--output", "json"]) == 0
    exported = tmp_path / f"{waiting}.json"
    exported.write_text(capsys.readouterr().out)
    code, report = check("fixtures.versions_app:compatible", "--history-file", str(exported))
    assert code == 0 and report["replayed"] == 1
    code, report = check("fixtures.versions_app:incompatible", "--history-file", str(exported))
    [result] = report["results"]
    assert code == 1 and result["instance_id"] == waiting and not result["ok"]
    assert result["event_kind"] == "TaskScheduled" and "'greet'" in result["error"]

    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    assert main(["replay-check", "fixtures.versions_app:compatible", "--redis-url", unreachable]) == 3
    assert "unreachable" in capsys.readouterr().err
