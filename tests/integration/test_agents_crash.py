"""A worker SIGKILLed in the middle of an agent's turn: completed tools never run again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from fixtures.agent_app import agent

from durable import Client

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent


def _spawn(redis_url: str, hub: str, ledger: Path, block: bool) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        DURABLE_REDIS_URL=redis_url,
        DURABLE_HUB=hub,
        LEDGER_FILE=str(ledger),
        BLOCK_SECOND_TOOL="1" if block else "0",
        PYTHONPATH=os.pathsep.join([str(TESTS), str(REPO)]),
    )
    command = [
        sys.executable,
        "-m",
        "durable",
        "worker",
        "fixtures.agent_app:worker",
        "--log-level",
        "warning",
    ]
    return subprocess.Popen(command, env=env, cwd=str(TESTS))


def _lines(ledger: Path) -> list[list[str]]:
    return [line.split() for line in ledger.read_text().splitlines()] if ledger.exists() else []


def _poll_ledger(ledger: Path, event: str, name: str, timeout: float = 60) -> None:
    """The ledger is a file written by another process: it can only be polled."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while not any(line[:2] == [event, name] for line in _lines(ledger)):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for '{event} {name}' in the ledger")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def test_a_worker_killed_during_the_second_tool_resumes_without_rerunning_the_first(
    redis_url: str, hub: str, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    procs = [_spawn(redis_url, hub, ledger, block=True)]
    try:
        with Client(redis_url, hub) as client:
            turn = agent.start_turn(client, "s-crash", "Run the three steps for order 7")
            _poll_ledger(ledger, "start", "step_two")
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait(timeout=10)
            assert [line[:2] for line in _lines(ledger)] == [
                ["start", "step_one"],
                ["end", "step_one"],
                ["start", "step_two"],
            ]
            procs.append(_spawn(redis_url, hub, ledger, block=False))
            reply = agent.wait_turn(client, turn, timeout=90)
            # the same turn on a worker that never crashes gives the same answer
            reference = agent.ask(client, "s-reference", "Run the three steps for order 7", timeout=60)
            history = agent.history(client, "s-crash")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)

    assert reply.text == "All three steps are done for order 7."
    assert reply == reference
    assert [(c["name"], c["result"], c["status"]) for c in reply.tool_calls] == [
        ("step_one", "one done for 7", "ok"),
        ("step_two", "two done for 7", "ok"),
        ("step_three", "three done for 7", "ok"),
    ]
    crash_run = [line for line in _lines(ledger) if line[2].startswith(turn)]
    starts = Counter(line[1] for line in crash_run if line[0] == "start")
    ends = Counter(line[1] for line in crash_run if line[0] == "end")
    assert starts == Counter({"step_one": 1, "step_two": 2, "step_three": 1})  # the first never again
    assert ends == Counter({"step_one": 1, "step_two": 1, "step_three": 1})
    # the interrupted call ran again with the same idempotency key, on the new worker
    second = [line for line in crash_run if line[1] == "step_two"]
    assert len({line[2] for line in second}) == 1
    assert second[0][3] == str(procs[0].pid) and second[-1][3] == str(procs[1].pid)
    assert [m["role"] for m in history] == ["user", *["assistant", "tool"] * 3, "assistant"]
    assert history[-1] == {"role": "assistant", "content": "All three steps are done for order 7."}
