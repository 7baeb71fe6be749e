"""The ``durable`` command line: ``demo`` and ``worker`` as real subprocesses, against real Redis."""

from __future__ import annotations

import fnmatch
import json
import os
import queue
import re
import shutil
import signal
import site
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from _redis import connect, free_port

from durable import Client, OrchestrationStatus, Worker, WorkerConfig
from durable._embedded import DEFAULT_DATA_DIR, embedded_redis_status, stop_embedded_redis
from durable.cli import main
from orchestrations import patterns

REPO_ROOT = Path(__file__).resolve().parents[2]
DRAIN_TIMEOUT = 10.0


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def _durable(*args: str, cwd: Path = REPO_ROOT, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "durable", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _keys(redis_url: str, pattern: str) -> list[bytes]:
    r = connect(redis_url)
    try:
        return list(r.scan_iter(match=pattern, count=1000))
    finally:
        r.close()


def _lease_keys(redis_url: str, hub: str) -> list[bytes]:
    return _keys(redis_url, f"durable:{{{hub}:*}}:lease")


# ------------------------------------------------------------------------------------------------
# help, version, usage errors


def test_python_m_durable_help() -> None:
    res = _durable("--help")
    assert res.returncode == 0, res.stderr
    assert "worker" in res.stdout and "demo" in res.stdout
    for command in ("worker", "demo"):
        sub = _durable(command, "--help")
        assert sub.returncode == 0, sub.stderr
        assert f"usage: durable {command}" in sub.stdout


def test_version() -> None:
    import durable

    res = _durable("--version")
    assert res.returncode == 0
    assert res.stdout.strip() == f"durable {durable.__version__}"
    assert _durable("demo", "--version").stdout.strip() == f"durable {durable.__version__}"


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "durable"
    if not script.exists():
        pytest.skip("the durable console script is not installed next to this interpreter")
    res = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, env=_env())
    assert res.returncode == 0, res.stderr
    assert "durable" in res.stdout


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["worker"],
        ["worker", "no_such_module_xyz:worker"],
        ["worker", "orchestrations.patterns:no_such_attr"],
        ["worker", "orchestrations.patterns:ORCHESTRATORS"],
        ["worker", "a:b:c"],
        ["worker", "orchestrations.patterns:worker", "--concurrency", "0"],
        ["worker", "orchestrations.patterns:worker", "--hub", "bad:hub"],
        ["demo", "--fan-out", "-1"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err


def test_bad_environment_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DURABLE_DRAIN_TIMEOUT", "soon")
    assert main(["worker", "orchestrations.patterns:worker"]) == 2


def test_unreachable_redis_exits_1(hub: str) -> None:
    res = _durable(
        "worker", "orchestrations.patterns:worker", "--redis-url", "redis://127.0.0.1:1/0", "--hub", hub
    )
    assert res.returncode == 1
    assert "worker failed" in res.stderr


# ------------------------------------------------------------------------------------------------
# durable demo


def test_demo_runs_every_pattern(redis_url: str, hub: str) -> None:
    started = time.monotonic()
    res = _durable("demo", "--redis-url", redis_url, "--hub", hub, timeout=120)
    took = time.monotonic() - started
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "Summary" in out
    for title in (
        "function chaining",
        "fan-out/fan-in (200)",
        "human interaction: approved",
        "human interaction: timeout",
        "monitor",
        "sub-orchestrations (5)",
        "retry: recovers",
        "retry: gives up",
        "AI agent: tools and approval",
    ):
        assert re.search(rf"^  {re.escape(title)}\s+(COMPLETED|FAILED)\s+ok\s", out, re.MULTILINE), title
    assert "activities/s" in out and "orchestrations/s" in out
    assert "All 9 patterns behaved as expected." in out
    assert "refund of 249.0 approved and paid" in out  # the agent's refund waited for the demo's approval
    # without a terminal the progress is plain lines, no cursor movement
    assert "\x1b[" not in out
    assert "waiting for approval" in out
    assert took < 60
    # the demo purges its instances
    assert _keys(redis_url, f"durable:{{{hub}:*}}:i:*") == []
    assert _lease_keys(redis_url, hub) == []


def test_demo_quiet_prints_only_the_summary(redis_url: str, hub: str) -> None:
    res = _durable("demo", "--redis-url", redis_url, "--hub", hub, "--quiet", "--fan-out", "20", "--keep")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.lstrip().startswith("Summary")
    assert "fan-out/fan-in (20)" in res.stdout
    # --keep leaves the instances for inspection
    with Client(redis_url, hub) as client:
        states = client.list_orchestrations(limit=100)
    assert {s.name for s in states} >= {f.__name__ for f in patterns.ORCHESTRATORS}


def test_demo_without_samples_explains_where_to_run_it(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "import durable._cli.demo as demo\n"
        "demo._sample_roots = lambda: []\n"
        "sys.exit(demo.run_demo(demo.DemoOptions(redis_url='redis://127.0.0.1:1/0')))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 1
    assert "repository" in res.stderr and "orchestrations" in res.stderr


# ------------------------------------------------------------------------------------------------
# durable worker


class _Lines:
    """Collects a stream's lines on a thread; lets the test wait for a line to appear."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        for seen in self.lines:
            if m := re.search(pattern, seen):
                return m
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matching {pattern!r} in:\n{self.text}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"stream closed without a line matching {pattern!r}:\n{self.text}")
            self.lines.append(line)
            if m := re.search(pattern, line):
                return m

    def rest(self) -> str:
        self._thread.join(timeout=10)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return self.text

    @property
    def text(self) -> str:
        return "".join(self.lines)


@pytest.fixture
def worker_process(redis_url: str, hub: str) -> Iterator[tuple[subprocess.Popen[str], _Lines, int]]:
    ops_port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "durable",
            "worker",
            "orchestrations.patterns:worker",
            "--redis-url",
            redis_url,
            "--hub",
            hub,
            "--drain-timeout",
            str(DRAIN_TIMEOUT),
            "--ops-port",
            str(ops_port),
            "--ops-host",
            "127.0.0.1",
        ],
        cwd=REPO_ROOT,
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines = _Lines(proc.stderr)
    try:
        yield proc, lines, ops_port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_worker_processes_orchestrations_and_drains_on_sigterm(
    worker_process: tuple[subprocess.Popen[str], _Lines, int], redis_url: str, hub: str
) -> None:
    proc, lines, _ = worker_process
    lines.wait_for(rf"worker \S+ started: hub={re.escape(hub)} ")
    with Client(redis_url, hub) as client:
        chain = client.schedule_new_orchestration(patterns.function_chaining, input=patterns.sample_order(3))
        fan = client.schedule_new_orchestration(patterns.fan_out_fan_in, input=100)
        for iid in (chain, fan):
            st = client.wait_for_orchestration_completion(iid, timeout=60)
            assert st.runtime_status == OrchestrationStatus.COMPLETED, st.failure_details
        assert client.get_orchestration_state(chain).output["status"] == "shipped"  # type: ignore[union-attr]
        # an orchestration left waiting when the worker stops
        waiting = client.schedule_new_orchestration(patterns.human_interaction, input={"timeout_s": 300})
        client.wait_for_orchestration_start(waiting, timeout=60)
    assert _lease_keys(redis_url, hub), "the worker should hold partition leases while it runs"

    proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert proc.wait(timeout=DRAIN_TIMEOUT) == 0, lines.rest()
    assert time.monotonic() - started < DRAIN_TIMEOUT
    # the leases were released on the way out, not left to expire
    assert _lease_keys(redis_url, hub) == []
    assert "SIGTERM: draining" in lines.rest()

    # another worker takes over the waiting orchestration at once
    config = WorkerConfig(balance_interval_ms=100, poll_ms=200)
    with patterns.register(Worker(redis_url, hub, config=config)), Client(redis_url, hub) as client:
        client.raise_orchestration_event(waiting, patterns.APPROVAL_EVENT, data=True)
        st = client.wait_for_orchestration_completion(waiting, timeout=60)
        assert st.output == "approved"


_SLOW_APP = """
import redis
from durable import Worker

worker = Worker()


@worker.activity
def slow_step(ctx, keys):
    r = redis.Redis.from_url(keys["url"], socket_timeout=120)
    try:
        r.rpush(keys["started"], ctx.orchestration_id)
        # blocks until the test releases it: the activity is in flight while the worker drains
        released = r.blpop([keys["release"]], timeout=60)
        return "released" if released else "timed out"
    finally:
        r.close()


@worker.orchestrator
def slow(ctx, keys):
    result = yield ctx.call_activity(slow_step, input=keys)
    return result
"""


@pytest.mark.standalone_only  # the app's activity talks to one standalone Redis
def test_sigterm_waits_for_in_flight_activities(tmp_path: Path, redis_url: str, hub: str) -> None:
    (tmp_path / "slow_app.py").write_text(_SLOW_APP)
    keys = {"url": redis_url, "started": f"{hub}-started", "release": f"{hub}-release"}
    argv = ["worker", "slow_app:worker", "--redis-url", redis_url, "--hub", hub]
    proc = subprocess.Popen(
        [sys.executable, "-m", "durable", *argv, "--drain-timeout", str(DRAIN_TIMEOUT)],
        cwd=tmp_path,
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines = _Lines(proc.stderr)
    r = connect(redis_url)
    try:
        lines.wait_for(r"worker \S+ started")
        with Client(redis_url, hub) as client:
            iid = client.schedule_new_orchestration("slow", input=keys)
            assert r.blpop([keys["started"]], timeout=30) is not None
            proc.send_signal(signal.SIGTERM)
            lines.wait_for(r"SIGTERM: draining")
            assert proc.poll() is None  # still draining: the activity has not finished
            r.rpush(keys["release"], "go")
            assert proc.wait(timeout=DRAIN_TIMEOUT) == 0, lines.rest()
            assert _lease_keys(redis_url, hub) == []
            # the activity's result was kept: a new worker completes the orchestration with it
            w = Worker(redis_url, hub, config=WorkerConfig(balance_interval_ms=100, poll_ms=200))
            w.add_orchestrator(_slow_orchestrator, name="slow")
            with w:
                st = client.wait_for_orchestration_completion(iid, timeout=60)
            assert st.runtime_status == OrchestrationStatus.COMPLETED, st.failure_details
            assert st.output == "released"
    finally:
        r.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _slow_orchestrator(ctx: Any, keys: Any) -> Any:
    result = yield ctx.call_activity("slow_step", input=keys)
    return result


def test_worker_serves_the_ops_endpoint(
    worker_process: tuple[subprocess.Popen[str], _Lines, int], redis_url: str, hub: str
) -> None:
    pytest.importorskip("durable._ops.server")
    proc, lines, port = worker_process
    lines.wait_for(r"ops server listening")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
        assert resp.status == 200
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=DRAIN_TIMEOUT) == 0, lines.rest()
    assert _lease_keys(redis_url, hub) == []


# ------------------------------------------------------------------------------------------------
# durable worker in-process: how the application is found and configured


def test_worker_loads_app_from_cwd_and_starts_the_ops_hook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str, hub: str
) -> None:
    """MODULE is imported from the cwd, ATTR may be a factory, options and env reach the worker."""
    (tmp_path / "my_cli_app.py").write_text(
        "import os\n"
        "from durable import Worker\n"
        "from orchestrations.patterns import register\n"
        "SEEN = {}\n"
        "def make_worker():\n"
        "    SEEN['url'] = os.environ.get('DURABLE_REDIS_URL')\n"
        "    SEEN['hub'] = os.environ.get('DURABLE_HUB')\n"
        "    return register(Worker())\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DURABLE_REDIS_URL", raising=False)
    monkeypatch.delenv("DURABLE_HUB", raising=False)
    monkeypatch.setenv("DURABLE_CONCURRENCY", "3")
    calls: list[dict[str, Any]] = []

    async def serve_ops(runtime: Any, client: Any, host: str, port: int, token: str | None) -> None:
        calls.append(
            {
                "hub": runtime.store.hub,
                "concurrency": runtime.config.concurrency,
                "client_hub": client.hub,
                "host": host,
                "port": port,
                "token": token,
                "owned": runtime.owned_partitions(),
            }
        )
        runtime.request_stop()  # as if SIGTERM arrived: the worker drains and main() returns

    import durable.cli

    monkeypatch.setattr(durable.cli, "_load_ops_server", lambda: serve_ops)
    monkeypatch.setenv("DURABLE_OPS_TOKEN", "s3cret")
    monkeypatch.syspath_prepend(str(REPO_ROOT))

    code = main(
        [
            "worker",
            "my_cli_app:make_worker",
            "--redis-url",
            redis_url,
            "--hub",
            hub,
            "--ops-port",
            "9999",
            "--ops-host",
            "127.0.0.1",
            "--drain-timeout",
            "5",
            "--log-level",
            "warning",
        ]
    )
    assert code == 0
    seen = sys.modules["my_cli_app"].SEEN
    assert seen == {"url": redis_url, "hub": hub}
    assert calls == [
        {
            "hub": hub,
            "concurrency": 3,
            "client_hub": hub,
            "host": "127.0.0.1",
            "port": 9999,
            "token": "s3cret",
            "owned": calls[0]["owned"],
        }
    ]
    # the CLI's environment changes do not outlive the command
    assert "DURABLE_REDIS_URL" not in os.environ and "DURABLE_HUB" not in os.environ
    assert _lease_keys(redis_url, hub) == []
    monkeypatch.delitem(sys.modules, "my_cli_app")


def test_serve_runs_the_ops_server_without_a_worker(redis_url: str, hub: str) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "durable",
            "serve",
            "--redis-url",
            redis_url,
            "--hub",
            hub,
            "--ops-port",
            str(port),
            "--ops-host",
            "127.0.0.1",
        ],
        cwd=REPO_ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines = _Lines(proc.stdout)
    try:
        lines.wait_for(r"ops server listening")
        body = json.dumps({"amount": 1}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/orchestrations/anything",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 202
            iid = json.loads(resp.read())["instance_id"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/orchestrations/{iid}", timeout=10) as resp:
            assert json.loads(resp.read())["runtime_status"] == "PENDING"  # no worker runs it
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, lines.rest()
    finally:
        if proc.poll() is None:
            proc.kill()


# ------------------------------------------------------------------------------------------------
# durable demo: the entity patterns, the embedded Redis, an installed wheel

ENTITY_TITLES = (
    "entity: counter",
    "entity: overdraw rolls back",
    "entity: transfers (locks)",
    "entity: scheduled signal",
    "entity: signals an entity",
    "entity: IoT readings (XADD)",
)


def test_demo_runs_the_entity_patterns_and_deletes_their_entities(redis_url: str, hub: str) -> None:
    res = _durable("demo", "--redis-url", redis_url, "--hub", hub, "--fan-out", "20", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    for title in ENTITY_TITLES:
        assert re.search(rf"^  {re.escape(title)}\s+COMPLETED\s+ok\s", out, re.MULTILINE), title
    assert "12 concurrent transfers" in out and "total still 300" in out
    assert "balance still 100" in out and "8 readings from 3 devices" in out
    assert "Orchestrations: All 9 patterns behaved as expected." in out
    assert "Entities: All 6 patterns behaved as expected." in out
    assert "Embedded Redis" not in out  # the given Redis is not the demo's to mention
    # the demo deletes the entities it used, and purges the orchestrations (transfers included)
    assert _keys(redis_url, f"durable:{{{hub}:*}}:e:*") == []
    assert _keys(redis_url, f"durable:{{{hub}:*}}:i:*") == []


def test_demo_on_the_embedded_redis_says_where_it_runs_and_how_to_stop_it(tmp_path: Path) -> None:
    data = tmp_path / DEFAULT_DATA_DIR
    try:
        res = _durable("demo", "--quiet", "--fan-out", "5", cwd=tmp_path, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        status = embedded_redis_status(data)
        assert status.running  # the demo leaves it running, by design ...
        out = res.stdout
        assert f"Embedded Redis: still running at {status.url} (pid {status.pid})" in out
        assert f"data in {data.resolve()}" in out  # ... and says where, why and how to stop it
        assert "durable serve" in out and "'durable redis stop'" in out
        assert _durable("redis", "status", cwd=tmp_path).returncode == 0
        stop = _durable("redis", "stop", cwd=tmp_path)
        assert stop.returncode == 0, stop.stderr
        assert not embedded_redis_status(data).running
        assert _durable("redis", "status", cwd=tmp_path).returncode == 1
    finally:
        stop_embedded_redis(data)


def _copy_sources(destination: Path) -> Path:
    """The files a wheel is built from (pyproject's package patterns) copied to ``destination``, so
    that the build neither writes into the checkout nor picks up a stale build/ folder."""
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["packages"]["find"]["include"]
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    destination.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, destination / name)
    packages = [
        p.name
        for p in REPO_ROOT.iterdir()
        if (p / "__init__.py").is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in patterns)
    ]
    assert {"durable", "orchestrations", "entities"} <= set(packages)
    for name in packages:
        shutil.copytree(REPO_ROOT / name, destination / name, ignore=ignore)
    return destination


def _dependency_dirs() -> list[str]:
    """Where this interpreter's installed packages (the wheel's dependencies) are."""
    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    return [d for d in dict.fromkeys(dirs) if Path(d).is_dir()]


@pytest.mark.slow
def test_demo_runs_from_an_installed_wheel_outside_the_checkout(
    tmp_path: Path, redis_url: str, hub: str
) -> None:
    sources = _copy_sources(tmp_path / "src")
    dist, target, elsewhere = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "-q", "-w", str(dist), "."],
        cwd=sources,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = dist.glob("durable-*.whl")
    installed = subprocess.run(
        [*pip, "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    script = target / "bin" / "durable"
    assert script.is_file()
    env = _env(PYTHONPATH=os.pathsep.join([str(target), *_dependency_dirs()]))
    # the installed copies are the ones imported: nothing comes from the checkout
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import durable, entities, orchestrations as o\n"
            "print(durable.__file__, entities.__file__, o.__file__)",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    assert all(Path(f).is_relative_to(target) for f in probe.stdout.split()), probe.stdout
    res = subprocess.run(
        [str(script), "demo", "--redis-url", redis_url, "--hub", hub, "--fan-out", "20"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Orchestrations: All 9 patterns behaved as expected." in res.stdout
    assert "Entities: All 6 patterns behaved as expected." in res.stdout
    assert not (elsewhere / ".durable").exists()  # the given Redis was used
