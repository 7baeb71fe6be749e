"""The operator commands of the ``durable`` CLI against a real Redis and a real in-process worker.

One worker (and one hub) serves the whole module, so the tests stay fast; each test uses its own
instance ids and keys. The CLI runs through ``durable.cli.main`` with stdout captured, and as a
real ``python -m durable`` subprocess. The JSON output is compared with the ops HTTP API's
(``OpsApp`` from ``durable._ops.server``, called without a socket).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import anyio
import pytest
from _redis import RedisServer, free_port
from anyio.from_thread import start_blocking_portal

from durable import AsyncClient, Worker, WorkerConfig
from durable._ops.server import OpsApp, Request, serve_ops
from durable.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4

# -- the application -------------------------------------------------------------------------------


def greet(ctx: Any, name: str) -> str:
    return f"Hello {name}!"


def greetings(ctx: Any, names: list[str]) -> Any:
    out = []
    for name in names:
        out.append((yield ctx.call_activity(greet, input=name)))
        ctx.set_custom_status({"done": len(out)})
    return out


def approval(ctx: Any, request: Any) -> Any:
    ctx.set_custom_status("waiting for approval")
    decision = yield ctx.wait_for_external_event("approve")
    return {"request": request, "decision": decision}


def broken(ctx: Any, _: Any) -> Any:
    if False:  # a generator that fails on its first step
        yield None
    raise ValueError("boom: the order is invalid")


def counter(ctx: Any, value: Any) -> Any:
    if ctx.operation == "add":
        ctx.set_state(ctx.get_state(0) + value)
    return ctx.get_state(0)


@pytest.fixture(scope="module")
def env(redis_url: str) -> Iterator[tuple[str, str]]:
    """(redis_url, hub) with a balanced worker running the application above."""
    hub = f"t-{uuid.uuid4().hex[:8]}"
    worker = Worker(
        redis_url, hub, config=WorkerConfig(balance_interval_ms=100, poll_ms=200, partitions=PARTITIONS)
    )
    for orchestrator in (greetings, approval, broken):
        worker.add_orchestrator(orchestrator)
    worker.add_activity(greet)
    worker.add_entity(counter)
    with worker:
        _until(lambda: len(worker.owned_partitions) == PARTITIONS, "the worker owns every partition")
        yield redis_url, hub


def _until(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


# -- running the CLI ---------------------------------------------------------------------------------

Result = tuple[int, str, str]


@pytest.fixture
def cli(env: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run ``durable ARGS --redis-url URL --hub HUB``; (exit code, stdout, stderr)."""
    redis_url, hub = env

    def run(*args: str, target: bool = True) -> Result:
        capsys.readouterr()
        argv = [*args, "--redis-url", redis_url, "--hub", hub] if target else list(args)
        code = main(argv)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def _json(result: Result) -> Any:
    code, out, err = result
    assert code == 0, f"exit {code}: {err}"
    return json.loads(out)


def _http(redis_url: str, hub: str, path: str, query: dict[str, list[str]] | None = None) -> tuple[int, Any]:
    """``GET path`` of the ops HTTP API (handled in process, no socket)."""

    async def get() -> tuple[int, Any]:
        client = AsyncClient(redis_url, hub)
        try:
            app = OpsApp(None, client, None)
            segments = [unquote(s) for s in path.strip("/").split("/")]
            response = await app.handle(Request("GET", path, segments, query or {}, {}))
            return response.status, json.loads(response.body)
        finally:
            await client.close()

    return anyio.run(get)


def _assert_aligned(lines: list[str]) -> None:
    """Every cell of a table starts in its header's column (cells hold no double blanks)."""
    header = lines[0]
    starts = [i for i, c in enumerate(header) if c != " " and (i == 0 or header[i - 2 : i] == "  ")]
    assert len(starts) > 1, header
    for line in lines[1:]:
        for start in starts[1:]:
            assert line[start - 2 : start] == "  " and line[start] != " ", (header, line)


def _subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_")}
    env.update(extra)
    return env


def _wait_completed(cli: Callable[..., Result], iid: str, status: str = "COMPLETED") -> dict[str, Any]:
    state: dict[str, Any] = {}

    def done() -> bool:
        nonlocal state
        state = _json(cli("orchestration", "describe", iid, "--output", "json"))
        return bool(state["runtime_status"] == status)

    _until(done, f"{iid} is {status}")
    return state


# -- help and usage ----------------------------------------------------------------------------------

COMMANDS = [
    ["orchestration"],
    *(
        ["orchestration", c]
        for c in (
            "start",
            "list",
            "describe",
            "history",
            "raise-event",
            "terminate",
            "suspend",
            "resume",
            "purge",
            "rewind",
            "restart",
        )
    ),
    ["entity"],
    ["entity", "signal"],
    ["entity", "get"],
    ["entity", "list"],
    ["partitions"],
    ["workers"],
    ["doctor"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_everywhere(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"usage: durable {' '.join(command)}" in out
    assert "exit codes:" in out and "3  Redis unreachable" in out
    if len(command) == 2 or command[0] in ("partitions", "workers", "doctor"):
        assert "--redis-url" in out and "--hub" in out and "--format" in out


def test_top_level_help_lists_commands_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("orchestration", "entity", "partitions", "workers", "doctor", "worker", "demo"):
        assert command in out
    assert "2  usage error" in out and "3  Redis unreachable" in out


def test_group_without_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["orchestration"]) == 2
    assert "usage: durable orchestration" in capsys.readouterr().err
    assert main(["entity"]) == 2


def test_usage_errors_exit_2(cli: Callable[..., Result]) -> None:
    cases: list[tuple[list[str], str]] = [
        (["orchestration", "start", "greetings", "--input", "{not json"], "invalid JSON"),
        (["orchestration", "raise-event", "x", "ev", "--data", "[1,"], "invalid JSON"),
        (["orchestration", "terminate", "x", "--output", "json"], "--format json"),
        (["orchestration", "start", "greetings", "--start-at", "tomorrow"], "ISO-8601"),
        (["orchestration", "start", "greetings", "--timeout", "5"], "--timeout requires --wait"),
        (["orchestration", "list", "--status", "DONE"], "unknown status"),
        (["orchestration", "list", "--limit", "0"], "positive integer"),
        (["orchestration", "describe"], "required"),
        (["entity", "get", "bad@name", "k"], "'@'"),
        (["entity", "signal", "counter", "k", "add", "--input", "five"], "invalid JSON"),
        (["entity", "signal", "counter", "k", "add", "--input", "NaN"], "NaN is not valid JSON"),
        (["orchestration", "start", "greetings", "--input", "[1e400]"], "out of range"),
        (["partitions", "--output", "yaml"], "invalid choice"),
    ]
    for args, message in cases:
        code, out, err = cli(*args)
        assert code == 2, (args, code, err)
        assert message in err, (args, err)
        assert out == "", (args, out)
    code, out, err = cli("orchestration", "list", "--hub", "bad:hub", target=False)
    assert code == 2 and "invalid hub name" in err and out == ""
    # usage errors win over an unreachable Redis
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    code, _, err = cli(
        "orchestration", "start", "g", "--timeout", "5", "--redis-url", unreachable, target=False
    )
    assert code == 2 and "--timeout requires --wait" in err


def test_unreachable_redis_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    for args in (
        ["orchestration", "describe", "x"],
        ["orchestration", "start", "greetings"],
        ["entity", "list"],
        ["partitions"],
        ["workers"],
        ["doctor", "--output", "json"],
    ):
        assert main([*args, "--redis-url", url, "--hub", "h"]) == 3, args
        captured = capsys.readouterr()
        assert "unreachable" in captured.err and captured.out == ""
    # the password never shows
    assert main(["workers", "--redis-url", f"redis://:s3cret@127.0.0.1:{free_port()}/0"]) == 3
    err = capsys.readouterr().err
    assert "unreachable" in err and "s3cret" not in err and ":***@" in err


def test_real_subprocess(env: tuple[str, str], cli: Callable[..., Result]) -> None:
    redis_url, hub = env
    iid = f"sub-{uuid.uuid4().hex[:8]}"
    assert cli("orchestration", "start", "greetings", "--id", iid, "--input", '["sub"]')[0] == 0
    _wait_completed(cli, iid)
    # the target comes from the environment, as for the worker
    res = subprocess.run(
        [sys.executable, "-m", "durable", "orchestration", "describe", iid, "--output", "json"],
        cwd=REPO_ROOT,
        env=_subprocess_env(DURABLE_REDIS_URL=redis_url, DURABLE_HUB=hub),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["output"] == ["Hello sub!"]
    res = subprocess.run(
        [sys.executable, "-m", "durable", "orchestration", "describe", "no-such-id"],
        cwd=REPO_ROOT,
        env=_subprocess_env(DURABLE_REDIS_URL=redis_url, DURABLE_HUB=hub),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1 and "no orchestration with id 'no-such-id'" in res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "durable", "workers", "--redis-url", f"redis://127.0.0.1:{free_port()}/0"],
        cwd=REPO_ROOT,
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 3, res.stderr


def test_environment_provides_the_defaults(
    env: tuple[str, str], cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    redis_url, hub = env
    monkeypatch.setenv("DURABLE_REDIS_URL", redis_url)
    monkeypatch.setenv("DURABLE_HUB", hub)
    code, out, _ = cli("workers", "--output", "json", target=False)
    assert code == 0 and len(json.loads(out)) == 1


# -- orchestrations ----------------------------------------------------------------------------------


def test_start_wait_describe_history(env: tuple[str, str], cli: Callable[..., Result]) -> None:
    redis_url, hub = env
    iid = f"greet-{uuid.uuid4().hex[:8]}"
    state = _json(
        cli(
            "orchestration",
            "start",
            "greetings",
            "--id",
            iid,
            "--input",
            '["Ada", "Bob"]',
            "--wait",
            "--timeout",
            "30",
            "--output",
            "json",
        )
    )
    assert state["instance_id"] == iid
    assert state["runtime_status"] == "COMPLETED"
    assert state["output"] == ["Hello Ada!", "Hello Bob!"]
    assert state["custom_status"] == {"done": 2}

    # describe: JSON identical to GET /v1/orchestrations/{id}; table with aligned fields
    described = _json(cli("orchestration", "describe", iid, "--output", "json"))
    status, http = _http(redis_url, hub, f"/v1/orchestrations/{iid}")
    assert status == 200 and described == http
    code, out, _ = cli("orchestration", "describe", iid)
    assert code == 0
    assert f"Instance ID:      {iid}" in out
    assert "Status:           COMPLETED" in out
    assert 'Output:           ["Hello Ada!","Hello Bob!"]' in out

    # history: JSON identical to the HTTP API's; table with eid, kind, time, name/tid, summary
    events = _json(cli("orchestration", "history", iid, "--output", "json"))
    status, http = _http(redis_url, hub, f"/v1/orchestrations/{iid}/history")
    assert status == 200 and events == http
    kinds = [e["kind"] for e in events]
    assert "ExecutionStarted" in kinds and kinds.count("TaskScheduled") == 2
    assert {"event_id", "kind", "timestamp"} <= set(events[0])
    code, out, _ = cli("orchestration", "history", iid)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["EID", "KIND", "TIME", "NAME/TID", "SUMMARY"]
    scheduled = [line for line in lines if " TaskScheduled " in line]
    assert len(scheduled) == 2 and "greet #0" in scheduled[0] and 'input="Ada"' in scheduled[0]
    completed = next(line for line in lines if " TaskCompleted " in line)
    assert 'result="Hello Ada!"' in completed
    _assert_aligned(lines)


def test_start_table_and_failures(cli: Callable[..., Result]) -> None:
    iid = f"tbl-{uuid.uuid4().hex[:8]}"
    code, out, _ = cli("orchestration", "start", "greetings", "--id", iid, "--input", '["x"]')
    assert code == 0 and out.strip() == f"Started orchestration 'greetings': {iid}"
    assert _json(cli("orchestration", "start", "greetings", "--output", "json")).keys() == {"instance_id"}
    _wait_completed(cli, iid)
    # a failed orchestration awaited with --wait: its state, and exit code 1
    code, out, err = cli("orchestration", "start", "broken", "--wait", "--timeout", "30", "--output", "json")
    assert code == 1, err
    state = json.loads(out)
    assert state["runtime_status"] == "FAILED"
    assert state["failure_details"]["error_type"] == "ValueError"
    assert "ended FAILED" in err
    code, out, err = cli("orchestration", "describe", state["instance_id"])
    assert code == 0 and "Failure:          ValueError: boom: the order is invalid" in out
    # --wait that times out: exit 1, the current state is printed
    waiting = f"wait-{uuid.uuid4().hex[:8]}"
    code, out, err = cli("orchestration", "start", "approval", "--id", waiting, "--wait", "--timeout", "0.5")
    assert code == 1 and "did not finish within 0.5s" in err
    assert f"Instance ID:      {waiting}" in out
    cli("orchestration", "terminate", waiting)


def test_start_at_and_list(env: tuple[str, str], cli: Callable[..., Result]) -> None:
    redis_url, hub = env
    since = _dt.datetime.now(_dt.UTC) - _dt.timedelta(seconds=1)
    tag = uuid.uuid4().hex[:6]
    later = (_dt.datetime.now(_dt.UTC) + _dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    done = f"l-done-{tag}"
    scheduled = f"l-later-{tag}"
    cli("orchestration", "start", "greetings", "--id", done, "--input", '["l"]', "--wait", "--timeout", "30")
    code, _, err = cli("orchestration", "start", "approval", "--id", scheduled, "--start-at", later)
    assert code == 0, err
    state = _json(cli("orchestration", "describe", scheduled, "--output", "json"))
    assert state["runtime_status"] == "PENDING"
    assert state["scheduled_start_at"].startswith(later[:16])

    window = ["--created-from", since.isoformat()]
    rows = _json(cli("orchestration", "list", *window, "--output", "json"))
    ids = [r["instance_id"] for r in rows]
    assert ids.index(scheduled) < ids.index(done)  # newest first
    only_done = _json(
        cli(
            "orchestration",
            "list",
            *window,
            "--status",
            "completed",
            "--name",
            "greetings",
            "--output",
            "json",
        )
    )
    assert done in [r["instance_id"] for r in only_done]
    assert all(r["runtime_status"] == "COMPLETED" and r["name"] == "greetings" for r in only_done)
    both = _json(cli("orchestration", "list", *window, "--status", "PENDING,COMPLETED", "--output", "json"))
    assert {done, scheduled} <= {r["instance_id"] for r in both}
    assert len(_json(cli("orchestration", "list", "--limit", "1", "--output", "json"))) == 1
    assert (
        _json(cli("orchestration", "list", "--created-to", "2000-01-01T00:00:00", "--output", "json")) == []
    )
    # the same rows as GET /v1/orchestrations
    status, http = _http(
        redis_url, hub, "/v1/orchestrations", {"status": ["PENDING"], "created_from": [since.isoformat()]}
    )
    cli_rows = _json(cli("orchestration", "list", *window, "--status", "PENDING", "--output", "json"))
    assert status == 200 and cli_rows == http

    code, out, _ = cli("orchestration", "list", *window)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["INSTANCE", "ID", "NAME", "STATUS", "CREATED", "UPDATED"]
    _assert_aligned(lines)
    row = next(line for line in lines if line.startswith(scheduled))
    assert row.split()[1:3] == ["approval", "PENDING"]
    status_col = lines[0].index("STATUS")
    assert row[status_col:].startswith("PENDING")
    code, out, err = cli("orchestration", "list", "--created-to", "2000-01-01T00:00:00")
    assert code == 0 and out == "" and "no orchestrations found" in err
    cli("orchestration", "terminate", scheduled)


def test_raise_event_suspend_resume_terminate_purge(cli: Callable[..., Result]) -> None:
    iid = f"appr-{uuid.uuid4().hex[:8]}"
    assert cli("orchestration", "start", "approval", "--id", iid, "--input", '{"order": 7}')[0] == 0
    _wait_completed(cli, iid, "RUNNING")

    # a running instance cannot be purged
    code, _, err = cli("orchestration", "purge", iid)
    assert code == 1 and "still running" in err

    assert _json(cli("orchestration", "suspend", iid, "--reason", "audit", "--output", "json")) == {
        "instance_id": iid,
        "action": "suspend",
    }
    _wait_completed(cli, iid, "SUSPENDED")
    code, out, _ = cli("orchestration", "resume", iid, "--reason", "done")
    assert code == 0 and "resumption" in out
    _wait_completed(cli, iid, "RUNNING")

    assert _json(
        cli("orchestration", "raise-event", iid, "approve", "--data", '{"ok": true}', "--output", "json")
    ) == {"instance_id": iid, "event": "approve"}
    state = _wait_completed(cli, iid)
    assert state["output"] == {"request": {"order": 7}, "decision": {"ok": True}}
    events = _json(cli("orchestration", "history", iid, "--output", "json"))
    kinds = [e["kind"] for e in events]
    assert "ExecutionSuspended" in kinds and "ExecutionResumed" in kinds and "EventRaised" in kinds

    # terminate with an output (the format is --format here: --output is the termination output)
    other = f"term-{uuid.uuid4().hex[:8]}"
    cli("orchestration", "start", "approval", "--id", other)
    code, out, _ = cli("orchestration", "terminate", other, "--output", '{"why": "test"}')
    assert code == 0 and "termination" in out
    state = _wait_completed(cli, other, "TERMINATED")
    assert state["output"] == {"why": "test"}
    third = f"term-{uuid.uuid4().hex[:8]}"
    cli("orchestration", "start", "approval", "--id", third)
    assert _json(cli("orchestration", "terminate", third, "--format", "json")) == {
        "instance_id": third,
        "action": "terminate",
    }
    _wait_completed(cli, third, "TERMINATED")

    code, out, _ = cli("orchestration", "purge", iid)
    assert code == 0 and out.strip() == f"Purged orchestration {iid!r}."
    assert _json(cli("orchestration", "purge", other, "--output", "json")) == {
        "instance_id": other,
        "purged": True,
    }
    code, _, err = cli("orchestration", "purge", iid)
    assert code == 1 and "no orchestration" in err
    assert cli("orchestration", "describe", iid)[0] == 1


def test_rewind_restart_and_purge_by_filter(cli: Callable[..., Result]) -> None:
    failed = f"broken-{uuid.uuid4().hex[:8]}"
    cli("orchestration", "start", "broken", "--id", failed)
    _wait_completed(cli, failed, "FAILED")
    code, out, _ = cli("orchestration", "rewind", failed, "--reason", "try again")
    assert code == 0 and "Rewound" in out  # applied (the broken code fails again by itself)
    kinds = [e["kind"] for e in _json(cli("orchestration", "history", failed, "--output", "json"))]
    assert kinds.count("ExecutionRewound") == 1

    done = f"greet-{uuid.uuid4().hex[:8]}"
    cli("orchestration", "start", "greetings", "--id", done, "--input", '["Ada"]', "--wait")
    code, _, err = cli("orchestration", "rewind", done)
    assert code == 1 and "only a FAILED" in err
    assert _json(cli("orchestration", "restart", done, "--output", "json")) == {
        "instance_id": done,
        "restarted": done,
    }
    _wait_completed(cli, done)
    copy = _json(cli("orchestration", "restart", done, "--new-id", "--output", "json"))["instance_id"]
    assert copy != done and _wait_completed(cli, copy)["input"] == ["Ada"]

    code, _, err = cli("orchestration", "purge")
    assert code == 2 and "filters" in err
    code, _, err = cli("orchestration", "purge", done, "--status", "COMPLETED")
    assert code == 2 and "not both" in err
    code, _, err = cli("orchestration", "purge", "--status", "RUNNING")
    assert code == 2 and "terminal" in err
    code, _, err = cli("orchestration", "purge", "--older-than", "soon")
    assert code == 2 and "duration" in err
    code, out, _ = cli(
        "orchestration", "purge", "--status", "FAILED", "--name", "broken", "--older-than", "1h"
    )
    assert code == 0 and out.strip() == "Purged 0 orchestrations."  # none is that old
    assert (
        _json(cli("orchestration", "purge", "--status", "FAILED", "--name", "broken", "--output", "json"))[
            "purged"
        ]
        >= 1
    )
    assert cli("orchestration", "describe", failed)[0] == 1
    assert cli("orchestration", "purge", done, "--no-recursive")[0] == 0


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_not_found_exits_1(cli: Callable[..., Result], fmt: str) -> None:
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    for args in (
        ["describe", missing],
        ["history", missing],
        ["raise-event", missing, "approve", "--data", "1"],
        ["suspend", missing],
        ["resume", missing],
        ["purge", missing],
        ["rewind", missing],
        ["restart", missing],
    ):
        code, out, err = cli("orchestration", *args, "--output", fmt)
        assert code == 1, args
        assert out == "" and f"no orchestration with id {missing!r}" in err, (args, err)
    code, out, err = cli("orchestration", "terminate", missing, "--format", fmt)
    assert code == 1 and out == ""
    code, out, err = cli("entity", "get", "counter", missing, "--output", fmt)
    assert code == 1 and out == "" and "no entity" in err


def test_read_commands_do_not_create_a_hub(env: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    redis_url, _ = env
    hub = f"t-{uuid.uuid4().hex[:8]}"
    target = ["--redis-url", redis_url, "--hub", hub]
    assert main(["orchestration", "describe", "x", *target]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["orchestration", "list", "--output", "json", *target]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["entity", "list", "--output", "json", *target]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["workers", "--output", "json", *target]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["partitions", *target]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["doctor", *target]) == 1  # the hub check FAILs
    assert "FAIL    hub" in capsys.readouterr().out


# -- entities ----------------------------------------------------------------------------------------


def test_entities(env: tuple[str, str], cli: Callable[..., Result]) -> None:
    redis_url, hub = env
    key = f"k-{uuid.uuid4().hex[:8]}"
    sent = _json(cli("entity", "signal", "counter", key, "add", "--input", "5", "--output", "json"))
    assert sent["entity_id"] == f"@counter@{key}" and sent["operation"] == "add" and sent["signal_id"]
    code, out, _ = cli("entity", "signal", "Counter", key, "add", "--input", "2")
    assert code == 0 and out.startswith(f"Signalled 'add' to entity '@counter@{key}'")

    def reached_seven() -> bool:
        code, out, _ = cli("entity", "get", "counter", key, "--output", "json")
        return code == 0 and json.loads(out)["state"] == 7

    _until(reached_seven, "the counter is 7")
    got = _json(cli("entity", "get", "counter", key, "--output", "json"))
    status, http = _http(redis_url, hub, f"/v1/entities/counter/{key}")
    assert status == 200 and got == http
    assert got["name"] == "counter" and got["key"] == key
    code, out, _ = cli("entity", "get", "counter", key)
    assert code == 0 and f"Entity ID:      @counter@{key}" in out and "State:          7" in out

    rows = _json(cli("entity", "list", "--name", "counter", "--output", "json"))
    status, http = _http(redis_url, hub, "/v1/entities", {"name": ["counter"]})
    assert status == 200 and rows == http
    assert f"@counter@{key}" in [r["entity_id"] for r in rows]
    assert set(rows[0]) == {"entity_id", "name", "key", "last_modified_at"}
    code, out, _ = cli("entity", "list", "--limit", "1")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2
    assert lines[0].split() == ["ENTITY", "ID", "NAME", "KEY", "LAST", "MODIFIED"]
    code, out, err = cli("entity", "list", "--name", "nosuchentity")
    assert code == 0 and out == "" and "no entities found" in err


def test_entity_methods_missing_from_the_client(
    cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(AsyncClient, "get_entity")
    monkeypatch.delattr(AsyncClient, "signal_entity")
    code, out, err = cli("entity", "get", "counter", "k")
    assert code == 1 and out == "" and "has no get_entity()" in err
    code, out, err = cli("entity", "signal", "counter", "k", "add", "--input", "1")
    assert code == 1 and "has no signal_entity()" in err


# -- hub state ---------------------------------------------------------------------------------------


def test_partitions(env: tuple[str, str], cli: Callable[..., Result]) -> None:
    redis_url, hub = env
    rows = _json(cli("partitions", "--output", "json"))
    assert [r["partition"] for r in rows] == list(range(PARTITIONS))
    status, http = _http(redis_url, hub, "/v1/partitions")
    assert status == 200 and [set(r) for r in rows] == [set(r) for r in http]
    assert all(r["owner"] and r["lease_ttl_ms"] > 0 for r in rows)
    code, out, _ = cli("partitions")
    lines = out.splitlines()
    assert code == 0 and len(lines) == PARTITIONS + 1
    assert lines[0].split()[:2] == ["PARTITION", "OWNER"]
    _assert_aligned(lines)
    for header in ("LEASE EXPIRES IN", "BACKLOG", "OLDEST AGE", "TIMERS"):
        assert header in lines[0]
    owner = rows[0]["owner"]
    assert lines[1].split()[:2] == ["0", owner]
    assert lines[1].split()[3].endswith("s")  # lease expires in N.Ns


def test_workers(env: tuple[str, str], cli: Callable[..., Result]) -> None:
    redis_url, hub = env
    rows = _json(cli("workers", "--output", "json"))
    status, http = _http(redis_url, hub, "/v1/workers")
    assert status == 200 and [set(r) for r in rows] == [set(r) for r in http]
    assert len(rows) == 1
    (worker,) = rows
    assert worker["partitions"] == list(range(PARTITIONS)) and worker["pid"] == os.getpid()
    assert worker["slots"] and worker["slots_used"] is not None
    code, out, _ = cli("workers")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2
    assert lines[0].split()[:3] == ["WORKER", "ID", "HOST"]
    _assert_aligned(lines)
    assert worker["worker_id"] in lines[1]
    assert f"{PARTITIONS}: 0-{PARTITIONS - 1}" in lines[1]
    assert f"/{worker['slots']}" in lines[1]


# -- doctor ------------------------------------------------------------------------------------------

DOCTOR_CHECKS = {
    "redis",
    "cluster",
    "xautoclaim",
    "waitaof",
    "maxmemory-policy",
    "appendonly",
    "appendfsync",
    "memory",
    "hub",
    "format",
    "leases",
    "ops-token",
}


def test_doctor_on_the_fixture_redis(cli: Callable[..., Result]) -> None:
    report = _json(cli("doctor", "--output", "json"))
    checks = {c["name"]: c for c in report["checks"]}
    assert set(checks) == DOCTOR_CHECKS
    assert report["ok"] is True and report["summary"]["FAIL"] == 0
    for name in ("maxmemory-policy", "appendonly", "xautoclaim", "hub", "format", "leases"):
        assert checks[name]["status"] == "OK", checks[name]
    assert (
        checks["hub"]["detail"].endswith(f"{PARTITIONS} partitions")
        or f"{PARTITIONS} partitions" in (checks["hub"]["detail"])
    )
    assert checks["leases"]["detail"].startswith(f"{PARTITIONS}/{PARTITIONS} partitions leased by 1 live")
    assert checks["waitaof"]["status"] in ("OK", "WARN")
    code, out, _ = cli("doctor")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["STATUS", "CHECK", "DETAIL"]
    _assert_aligned(lines[: lines.index("")])
    assert any(line.startswith("OK      maxmemory-policy  noeviction") for line in lines)
    assert lines[-1].endswith("0 FAIL")


@asynccontextmanager
async def _ops_server(redis_url: str, hub: str, host: str, token: str | None) -> AsyncIterator[int]:
    """An ops server (no worker) for the hub; yields its port."""
    async with AsyncClient(redis_url, hub) as client, anyio.create_task_group() as tg:
        port = await tg.start(serve_ops, None, client, host, 0, token)
        yield port
        tg.cancel_scope.cancel()


def test_doctor_warns_about_an_ops_server_without_a_token(
    env: tuple[str, str], cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    """doctor asks the ops server (GET /v1/hub without a token) whether it lets anyone in."""
    redis_url, hub = env
    monkeypatch.delenv("DURABLE_OPS_TOKEN", raising=False)
    with start_blocking_portal() as portal:
        for token, status, says in (
            (None, "WARN", "without a token"),
            ("doc-token", "OK", "requires a token"),
        ):
            with portal.wrap_async_context_manager(_ops_server(redis_url, hub, "127.0.0.1", token)) as port:
                url = f"http://127.0.0.1:{port}"
                report = _json(cli("doctor", "--output", "json", "--ops-url", url))
                check = {c["name"]: c for c in report["checks"]}["ops-token"]
                assert check["status"] == status, check
                assert url in check["detail"] and says in check["detail"]
                assert report["ok"] is True  # a WARN, not a FAIL
                code, out, _ = cli("doctor", "--ops-url", url)
                assert code == 0
                assert any(line.startswith(f"{status:<8}ops-token") for line in out.splitlines()), out

        # without --ops-url, doctor asks the live workers' hosts, on the port of $DURABLE_OPS_PORT
        host = socket.gethostname()
        try:
            socket.getaddrinfo(host, None)
        except OSError:
            pytest.skip(f"this machine's host name {host!r} does not resolve")
        with portal.wrap_async_context_manager(_ops_server(redis_url, hub, "0.0.0.0", None)) as port:
            monkeypatch.setenv("DURABLE_OPS_PORT", str(port))
            report = _json(cli("doctor", "--output", "json"))
            check = {c["name"]: c for c in report["checks"]}["ops-token"]
            assert check["status"] == "WARN", check
            assert f"http://{host}:{port}" in check["detail"]
    # nothing answers there any more: not judged
    report = _json(cli("doctor", "--output", "json", "--ops-url", f"http://127.0.0.1:{port}"))
    check = {c["name"]: c for c in report["checks"]}["ops-token"]
    assert check["status"] == "OK" and check["detail"].startswith("not checked")


@pytest.mark.standalone_only
def test_doctor_fails_on_an_evicting_redis(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with RedisServer(tmp_path / "lru", extra_args=["--maxmemory-policy", "allkeys-lru"]) as server:
        target = ["--redis-url", server.url, "--hub", "lru"]
        assert main(["orchestration", "start", "greetings", *target]) == 0  # creates the hub
        capsys.readouterr()
        assert main(["doctor", "--output", "json", *target]) == 1
        report = json.loads(capsys.readouterr().out)
        assert report["ok"] is False
        failed = [c["name"] for c in report["checks"] if c["status"] == "FAIL"]
        assert failed == ["maxmemory-policy"]
        assert main(["doctor", *target]) == 1
        out = capsys.readouterr().out
        assert "FAIL    maxmemory-policy  allkeys-lru" in out
        assert out.splitlines()[-1].endswith("1 FAIL")
