"""The ``durable sidecar`` command itself: a process serving the Durable Task protocol that SDK
workers and clients use, and that drains and releases its partitions on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _redis import connect, free_port
from durabletask import client as dt_client
from durabletask import entities
from fixtures import sdk_app

REPO = Path(__file__).resolve().parents[2]
DRAIN_TIMEOUT = 10.0
pytestmark = pytest.mark.standalone_only


def _lease_keys(redis_url: str, hub: str) -> list[bytes]:
    r = connect(redis_url)
    try:
        return list(r.scan_iter(match=f"durable:{{{hub}:*}}:lease"))
    finally:
        r.close()


def test_sidecar_command_serves_sdk_workers_and_drains_on_sigterm(redis_url: str, hub: str) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_")}
    env["PYTHONUNBUFFERED"] = "1"
    argv = ["sidecar", "--port", str(port), "--redis-url", redis_url, "--hub", hub, "--ops-port", "0"]
    argv += ["--partitions", "4", "--drain-timeout", str(DRAIN_TIMEOUT), "--log-level", "info"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "durable", *argv],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        for line in proc.stderr:  # until the server listens (or the process dies: the loop ends)
            seen.append(line)
            if "serving the Durable Task protocol on" in line:
                break
        assert re.search(rf"on 127\.0\.0\.1:{port} \(hub {re.escape(hub)}\)", seen[-1]), "".join(seen)
        pump = threading.Thread(target=lambda: seen.extend(proc.stderr or ()), daemon=True)
        pump.start()

        address = f"127.0.0.1:{port}"
        w = sdk_app.build(address)
        w.start()
        try:
            sdk = dt_client.TaskHubGrpcClient(host_address=address)
            iid = sdk.schedule_new_orchestration(sdk_app.sequence, input=["Quito"])
            state = sdk.wait_for_orchestration_completion(iid, timeout=30)
            assert state is not None and state.serialized_output == '["Hello Quito!"]'
            called = sdk.schedule_new_orchestration(sdk_app.entity_get, input="cli")
            state = sdk.wait_for_orchestration_completion(called, timeout=30)
            assert state is not None and state.serialized_output == "0"
            sdk.signal_entity(entities.EntityInstanceId("tally", "cli"), "add", input=2)
            assert _lease_keys(redis_url, hub), "the sidecar holds partition leases while it runs"

            proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            assert proc.wait(timeout=DRAIN_TIMEOUT + 5) == 0, "".join(seen)
            assert time.monotonic() - started < DRAIN_TIMEOUT
        finally:
            w.stop()
        pump.join(10)
        assert "SIGTERM: draining" in "".join(seen)
        assert _lease_keys(redis_url, hub) == []  # released on the way out, not left to expire
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
