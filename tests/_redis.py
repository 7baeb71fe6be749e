"""A real ``redis-server`` process for tests (never a fake).

Each :class:`RedisServer` listens on a free loopback port with its own data directory, so
tests can kill it (SIGKILL), stop it gracefully and restart it on the same port and data
directory to exercise crash recovery against the real append-only file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from durable._embedded import find_redis_server

_HOST = "127.0.0.1"
_POLL_INTERVAL = 0.02


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A ``redis-server`` subprocess for one test (or one test session)."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        appendonly: bool = True,
        appendfsync: str = "everysec",
        startup_timeout: float = 10.0,
        binary: str | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.startup_timeout = startup_timeout
        binary = binary or find_redis_server()
        # the server runs in its data directory: a relative path must not depend on that
        self.binary = os.path.abspath(binary) if os.sep in binary else binary
        self.log_path = self.data_dir / "redis.log"
        self.extra_args = list(extra_args or [])
        self._proc: subprocess.Popen[bytes] | None = None

    # -- info

    @property
    def url(self) -> str:
        return f"redis://{_HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new synchronous client for this server (the caller closes it)."""
        kwargs.setdefault("socket_timeout", 10.0)
        kwargs.setdefault("socket_connect_timeout", 10.0)
        return redis.Redis(host=_HOST, port=self.port, **kwargs)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_bytes()[-16384:].decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- lifecycle

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING with its data loaded."""
        if self.running:
            return self
        args = [
            self.binary,
            "--bind",
            _HOST,
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--daemonize",
            "no",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
            "--logfile",
            str(self.log_path),
            *self.extra_args,
        ]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                args,
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        try:
            self.wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def wait_ready(self) -> None:
        """Poll until PING works and ``INFO persistence`` reports ``loading:0``."""
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"redis-server exited with code {code} on port {self.port}:\n{self.log_tail()}"
                )
            client = self.client(socket_timeout=1.0, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0))
            try:
                if client.ping() and int(client.info("persistence").get("loading", 1)) == 0:
                    return
            except redis.RedisError:
                pass
            finally:
                client.close()
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"redis-server on port {self.port} not ready within {self.startup_timeout:g}s:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(_POLL_INTERVAL)

    def kill(self) -> None:
        """SIGKILL the server (no flush, like a crash) and reap it."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
        proc.wait()
        self._proc = None

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful ``SHUTDOWN`` (the AOF is flushed), then wait for the process."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            client = self.client(socket_timeout=timeout, retry=Retry(NoBackoff(), 0))
            try:
                client.shutdown()
            except redis.RedisError:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            finally:
                client.close()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None

    def restart(self, *, kill: bool = False) -> RedisServer:
        """Start again on the same port and data dir, waiting until the AOF is loaded.

        A running server is first stopped gracefully, or SIGKILLed with ``kill=True``
        (to simulate a crash); a server already killed or stopped is simply started.
        """
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()

    def __repr__(self) -> str:
        return f"RedisServer(port={self.port}, pid={self.pid}, data_dir={str(self.data_dir)!r})"


def connect(url: str) -> Any:
    """A synchronous client for ``url``: a RedisCluster client when the server is a cluster node."""
    probe = redis.Redis.from_url(url)
    try:
        enabled = int(probe.info("cluster").get("cluster_enabled", 0))
    finally:
        probe.close()
    # redis-py 8 reads with a 5 s socket timeout by default: too short for tests' blocking pops
    if enabled:
        return redis.RedisCluster.from_url(url, socket_timeout=120)
    return redis.Redis.from_url(url, socket_timeout=120)


def is_cluster(url: str) -> bool:
    client = connect(url)
    try:
        return isinstance(client, redis.RedisCluster)
    finally:
        client.close()
