"""The README's example runs as written (against the test Redis)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

REPO = Path(__file__).resolve().parents[2]


def test_readme_example_runs(redis_url: str, hub: str, tmp_path: Path) -> None:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    example = next(b for b in blocks if "schedule_new_orchestration" in b)
    script = tmp_path / "example.py"
    script.write_text(example)
    env = dict(os.environ, DURABLE_REDIS_URL=redis_url, DURABLE_HUB=hub, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert "'approved': True" in out.stdout and "charged 42" in out.stdout


_ENTITY_DRIVER = """
import time
with worker:
    for n in ("a", "b"):
        client.signal_entity(f"@account@{n}", "deposit", input=10)
    ok = client.schedule_new_orchestration(transfer, input={"from": "a", "to": "b", "amount": 4})
    print(client.wait_for_orchestration_completion(ok, timeout=30).runtime_status)
    bad = client.schedule_new_orchestration(transfer, input={"from": "a", "to": "b", "amount": 100})
    print(client.wait_for_orchestration_completion(bad, timeout=30).runtime_status)
    deadline = time.monotonic() + 30
    while client.get_entity("@counter@visits") is None and time.monotonic() < deadline:
        time.sleep(0.05)  # a signal has no completion to wait for
    print("balances", client.get_entity("@account@a").state, client.get_entity("@account@b").state)
    print("visits", client.get_entity("@counter@visits").state)
client.close()
"""


def test_readme_entity_example_runs(redis_url: str, hub: str, tmp_path: Path) -> None:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    example = next(b for b in blocks if "lock_entities" in b)
    # the snippet's last line reads the counter right after signalling it; the driver below waits
    example = "\n".join(line for line in example.splitlines() if not line.startswith("client.get_entity("))
    script = tmp_path / "entities.py"
    script.write_text(
        "from durable import Client, Worker\nworker = Worker()\nclient = Client()\n"
        + example
        + _ENTITY_DRIVER
    )
    env = dict(os.environ, DURABLE_REDIS_URL=redis_url, DURABLE_HUB=hub, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:4] == ["COMPLETED", "FAILED", "balances 6 14", "visits 1"]


def _block(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    return next(b for b in blocks if marker in b)


def _run_block(marker: str, redis_url: str, hub: str, tmp_path: Path) -> list[str]:
    script = tmp_path / "example.py"
    script.write_text(_block(marker))
    env = dict(os.environ, DURABLE_REDIS_URL=redis_url, DURABLE_HUB=hub, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_readme_agent_example_runs(redis_url: str, hub: str, tmp_path: Path) -> None:
    assert _run_block("durable.agents", redis_url, hub, tmp_path) == [
        "Order 7 has shipped, and I refunded 5.00. ['ok', 'ok']",
        "5 messages in the session",
    ]


def test_readme_retry_and_timeout_example_runs(redis_url: str, hub: str, tmp_path: Path) -> None:
    lines = _run_block("heartbeat_details", redis_url, hub, tmp_path)
    assert len(lines) == 2 and lines[1] == "declined"
    assert "attempt 3" in lines[0] and ":0, attempt" in lines[0]  # one key: the call's first task
    assert "imported rows 1 to 1000" in lines[0]


def test_readme_lifecycle_example_runs(redis_url: str, hub: str, tmp_path: Path) -> None:
    assert _run_block("rewind_orchestration", redis_url, hub, tmp_path) == [
        "FAILED True",
        "courier booked with label for parcel-7",
        "courier booked with label for parcel-7",
        "0",
    ]


def test_readme_typed_payloads_example_runs(redis_url: str, hub: str, tmp_path: Path) -> None:
    assert _run_block("output_as", redis_url, hub, tmp_path) == [
        "Shirt(sku='TEE-1', size=<Size.L: 'l'>) {'shop': 'eu'}",
        "1 None",
        "1",
    ]


def test_readme_schedule_example_runs(redis_url: str, hub: str, tmp_path: Path) -> None:
    next_run, output, triggered = _run_block("create_schedule", redis_url, hub, tmp_path)[:3]
    when = datetime.fromisoformat(next_run).astimezone(ZoneInfo("Europe/Amsterdam"))
    assert (when.hour, when.minute) == (2, 0)
    assert output == "exported to logs"
    assert re.fullmatch(r"nightly-export@\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", triggered)


def test_readme_deploy_example_runs(redis_url: str, hub: str, tmp_path: Path) -> None:
    assert " ".join(_run_block("is_patched", redis_url, hub, tmp_path)).split() == ["v1", "v2"]


def test_readme_testing_example_passes(tmp_path: Path) -> None:
    example = _block("TestEnvironment")
    tests = re.findall(r"^def (test_\w+)\(", example, re.M)
    assert tests
    script = tmp_path / "test_example.py"
    script.write_text(example + "".join(f"\n{name}()" for name in tests) + '\nprint("passed")\n')
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "passed"
