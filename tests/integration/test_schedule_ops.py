"""``durable schedule ...`` and ``/v1/schedules`` against a real Redis and an in-process worker.

The CLI runs through ``durable.cli.main`` with its output captured; the HTTP API through
``OpsApp.handle`` (no socket). Both print the same JSON view of a schedule.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import pytest
from _schedules import wait_until

from durable import AsyncClient, Client, Worker, WorkerConfig
from durable._ops.server import OpsApp, Request
from durable.cli import main

Result = tuple[int, str, str]


def job(ctx: Any, value: Any) -> Any:
    return value


@pytest.fixture(scope="module")
def env(redis_url: str) -> Iterator[tuple[str, str]]:
    hub = f"t-{uuid.uuid4().hex[:8]}"
    worker = Worker(redis_url, hub, config=WorkerConfig(balance_interval_ms=100, poll_ms=200))
    worker.add_orchestrator(job)
    with worker:
        yield redis_url, hub


@pytest.fixture
def cli(env: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    redis_url, hub = env

    def run(*args: str) -> Result:
        capsys.readouterr()
        code = main([*args, "--redis-url", redis_url, "--hub", hub])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def _json(result: Result) -> Any:
    code, out, err = result
    assert code == 0, f"exit {code}: {err}"
    return json.loads(out)


def _completed(env: tuple[str, str], iid: str) -> Any:
    with Client(*env) as client:
        return client.wait_for_orchestration_completion(iid, timeout=30).output


_ACTIONS = ("create", "list", "describe", "update", "pause", "resume", "trigger", "delete")


@pytest.mark.parametrize(
    "command",
    [["schedule"], *(["schedule", c] for c in _ACTIONS)],
    ids=" ".join,
)
def test_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"usage: durable {' '.join(command)}" in out and "exit codes:" in out


def test_cli_round_trip(cli: Callable[..., Result], env: tuple[str, str]) -> None:
    created = _json(
        cli(
            "schedule",
            "create",
            "cli-job",
            "job",
            "--interval",
            "60",
            "--input",
            '{"a": 1}',
            "--output",
            "json",
        )
    )
    assert (
        created["schedule_id"] == "cli-job" and created["interval"] == 60.0 and created["input"] == {"a": 1}
    )
    assert created["status"] == "ACTIVE" and created["overlap"] == "skip" and created["catchup_window"] == 0.0
    code, out, _ = cli("schedule", "list")
    assert code == 0 and "cli-job" in out and "every 60s" in out and "STARTED/SKIPPED" in out
    updated = _json(
        cli(
            "schedule",
            "update",
            "cli-job",
            "--cron",
            "0 9 * * MON-FRI",
            "--timezone",
            "Europe/Amsterdam",
            "--output",
            "json",
        )
    )
    assert (
        updated["cron"] == "0 9 * * MON-FRI" and updated["interval"] is None and updated["input"] == {"a": 1}
    )
    next_run = updated["next_run_at"]
    assert next_run is not None
    local = dt.datetime.fromisoformat(next_run).astimezone(ZoneInfo("Europe/Amsterdam"))
    assert (local.hour, local.minute) == (9, 0) and local.weekday() < 5
    paused = _json(cli("schedule", "pause", "cli-job", "--reason", "holiday", "--output", "json"))
    assert (
        paused["status"] == "PAUSED"
        and paused["paused_reason"] == "holiday"
        and paused["next_run_at"] is None
    )
    code, out, _ = cli("schedule", "describe", "cli-job")
    assert code == 0 and "PAUSED (holiday)" in out and "0 9 * * MON-FRI (Europe/Amsterdam)" in out
    assert (
        _json(cli("schedule", "list", "--status", "paused", "--output", "json"))[0]["schedule_id"]
        == "cli-job"
    )
    assert _json(cli("schedule", "resume", "cli-job", "--output", "json"))["status"] == "ACTIVE"
    triggered = _json(cli("schedule", "trigger", "cli-job", "--output", "json"))
    assert triggered["instance_id"].startswith("cli-job@")
    assert _completed(env, triggered["instance_id"]) == {"a": 1}
    assert _json(cli("schedule", "delete", "cli-job", "--output", "json")) == {
        "schedule_id": "cli-job",
        "deleted": True,
    }
    code, _, err = cli("schedule", "describe", "cli-job")
    assert code == 1 and "no schedule with id 'cli-job'" in err


def test_cli_errors(cli: Callable[..., Result]) -> None:
    code, _, err = cli("schedule", "create", "bad", "job", "--cron", "0 9 * * MON-FRY")
    assert code == 2 and "bad day-of-week field" in err
    code, _, err = cli("schedule", "create", "bad", "job")
    assert code == 2 and "exactly one of cron and interval" in err
    code, _, err = cli("schedule", "create", "bad", "job", "--interval", "5", "--timezone", "Nowhere/City")
    assert code == 2 and "unknown time zone" in err
    assert cli("schedule", "create", "twice", "job", "--interval", "60", "--paused")[0] == 0
    code, _, err = cli("schedule", "create", "twice", "job", "--interval", "60")
    assert code == 1 and "already exists" in err
    code, _, err = cli("schedule", "update", "twice")
    assert code == 2 and "nothing to change" in err
    for action in ("pause", "resume", "trigger", "delete"):
        code, _, err = cli("schedule", action, "missing")
        assert code == 1 and "no schedule with id 'missing'" in err, action


def _http(
    env: tuple[str, str],
    method: str,
    path: str,
    body: Any = None,
    query: str = "",
    content_type: str = "application/json",
) -> tuple[int, Any]:
    async def call() -> tuple[int, Any]:
        async with AsyncClient(*env) as client:
            app = OpsApp(None, client, None)
            segments = path.strip("/").split("/")
            params = {k: [v] for k, v in (p.split("=") for p in query.split("&") if p)}
            headers = {"content-type": content_type} if content_type else {}
            data = b"" if body is None else json.dumps(body).encode()
            response = await app.handle(Request(method, path, segments, params, headers, data))
            return response.status, json.loads(response.body)

    return anyio.run(call)


def test_http_routes(env: tuple[str, str]) -> None:
    body = {
        "schedule_id": "http-job",
        "orchestration": "job",
        "interval": 3600,
        "input": [1],
        "overlap": "allow_all",
    }
    status, created = _http(env, "POST", "/v1/schedules", body)
    assert status == 201 and created["schedule_id"] == "http-job" and created["overlap"] == "allow_all"
    assert _http(env, "POST", "/v1/schedules", body)[0] == 409
    status, listed = _http(env, "GET", "/v1/schedules", query="prefix=http-")
    assert status == 200 and [s["schedule_id"] for s in listed] == ["http-job"]
    assert _http(env, "GET", "/v1/schedules/http-job")[1]["interval"] == 3600.0
    status, patched = _http(env, "PATCH", "/v1/schedules/http-job", {"catchup_window": 30, "end_at": None})
    assert status == 200 and patched["catchup_window"] == 30.0 and patched["interval"] == 3600.0
    status, paused = _http(env, "POST", "/v1/schedules/http-job/pause", {"reason": "deploy"})
    assert status == 200 and paused["status"] == "PAUSED" and paused["paused_reason"] == "deploy"
    assert _http(env, "GET", "/v1/schedules", query="status=paused")[1][0]["schedule_id"] == "http-job"
    assert _http(env, "POST", "/v1/schedules/http-job/resume")[1]["status"] == "ACTIVE"
    status, triggered = _http(env, "POST", "/v1/schedules/http-job/trigger")
    assert status == 202 and _completed(env, triggered["instance_id"]) == [1]
    with Client(*env) as client:
        wait_until(lambda: (d := client.get_schedule("http-job")) and d.runs_started == 1, 30, "the trigger")
    assert _http(env, "DELETE", "/v1/schedules/http-job") == (
        200,
        {"schedule_id": "http-job", "deleted": True},
    )
    assert _http(env, "GET", "/v1/schedules/http-job")[0] == 404
    assert _http(env, "DELETE", "/v1/schedules/http-job")[0] == 404
    assert _http(env, "POST", "/v1/schedules/http-job/trigger")[0] == 404


def test_http_errors(env: tuple[str, str]) -> None:
    status, error = _http(
        env, "POST", "/v1/schedules", {"schedule_id": "e", "orchestration": "job", "cron": "99 * * * *"}
    )
    assert status == 400 and "bad minute field" in error["detail"]
    status, error = _http(
        env, "POST", "/v1/schedules", {"schedule_id": "e", "orchestration": "job", "interval": "1m"}
    )
    assert status == 400 and "interval must be a number of seconds" in error["detail"]
    status, error = _http(
        env, "POST", "/v1/schedules", {"schedule_id": "e", "orchestration": "job", "every": 5}
    )
    assert status == 400 and "unknown field(s) every" in error["detail"]
    status, error = _http(env, "POST", "/v1/schedules", {"orchestration": "job", "interval": 5})
    assert status == 400 and "schedule_id" in error["detail"]
    status, error = _http(env, "GET", "/v1/schedules", query="status=sleeping")
    assert status == 400 and error["error"] == "invalid_status"
    assert _http(env, "PATCH", "/v1/schedules/none-such", {"input": 1})[0] == 404
    assert _http(env, "PUT", "/v1/schedules/none-such", {"input": 1})[0] == 405
    # writes follow the ops server's rules: a declared JSON body
    body = {"schedule_id": "form", "orchestration": "job", "interval": 5}
    assert _http(env, "POST", "/v1/schedules", body, content_type="text/plain")[0] == 415
    assert _http(env, "POST", "/v1/schedules/form/trigger", content_type="")[0] == 415
    assert _http(env, "GET", "/v1/schedules/form")[0] == 404
