"""Processes the chaos harness owns: redis-server instances and worker processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_binary() -> str:
    from durable._embedded import find_redis_server

    return find_redis_server()


class RedisProc:
    """A redis-server on a free loopback port with its own data directory; kill -9 and restart."""

    def __init__(self, data_dir: Path, *, appendonly: bool, appendfsync: str = "always") -> None:
        self.data_dir = data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen[bytes] | None = None
        self.binary = redis_binary()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 120.0) -> None:
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--maxmemory-policy", "noeviction",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.proc.returncode}; see {self.data_dir}/redis.log"
                )
            client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
            try:
                if client.ping() and int(client.info("persistence").get("loading", 1)) == 0:
                    return
            except redis.RedisError:
                pass
            finally:
                client.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} not ready within {timeout}s")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None


@dataclass
class WorkerProc:
    number: int
    proc: subprocess.Popen[bytes]
    log: Path
    state: str = "up"  # up | paused | terminating | killed | exited


@dataclass
class WorkerPool:
    """Worker processes of the chaos app; every signal goes to one process id we started."""

    env: dict[str, str]
    log_dir: Path
    workers: list[WorkerProc] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    unreachable_exits: int = 0  # died at startup because Redis was down or loading (then restarted)
    spawned: int = 0

    def spawn(self) -> WorkerProc:
        self.spawned += 1
        log = self.log_dir / f"worker-{self.spawned:03d}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "durable", "worker", "ops.chaos.app:worker", "--log-level", "info"],
                env=self.env,
                cwd=str(ROOT),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        worker = WorkerProc(self.spawned, proc, log)
        self.workers.append(worker)
        return worker

    def up(self) -> list[WorkerProc]:
        return [w for w in self.workers if w.state == "up"]

    def reap(self) -> None:
        """Notice workers that exited on their own (a crash unless we asked them to stop)."""
        for w in self.workers:
            code = w.proc.poll()
            if code is None:
                continue
            if w.state in ("up", "paused"):
                if _redis_unreachable(w.log):
                    self.unreachable_exits += 1  # like a pod that fails to connect: it is restarted
                else:
                    self.crashes.append(
                        f"worker {w.number} (pid {w.proc.pid}) exited with {code}; see {w.log.name}"
                    )
                w.state = "exited"
            elif w.state == "terminating":
                if code != 0:
                    self.crashes.append(
                        f"worker {w.number} exited with {code} after SIGTERM; see {w.log.name}"
                    )
                w.state = "exited"

    def kill(self, w: WorkerProc) -> None:
        with contextlib.suppress(ProcessLookupError):
            w.proc.send_signal(signal.SIGKILL)
        w.proc.wait()
        w.state = "killed"

    def pause(self, w: WorkerProc) -> None:
        w.proc.send_signal(signal.SIGSTOP)
        w.state = "paused"

    def resume(self, w: WorkerProc) -> None:
        with contextlib.suppress(ProcessLookupError):
            w.proc.send_signal(signal.SIGCONT)
        if w.state == "paused":
            w.state = "up"

    def terminate(self, w: WorkerProc) -> None:
        w.proc.send_signal(signal.SIGTERM)
        w.state = "terminating"

    def close(self) -> None:
        for w in self.workers:
            if w.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signal.SIGCONT)
                    w.proc.send_signal(signal.SIGKILL)
                w.proc.wait()


def _redis_unreachable(log: Path) -> bool:
    """True when the process died at startup of a Redis connection error (it started while
    Redis was down or loading): ``durable worker`` logged no start and then a connection error."""
    try:
        tail = log.read_bytes()[-30000:].decode(errors="replace")
    except OSError:
        return False
    failed = tail.rfind("worker failed: ")
    if failed < 0 or " started: hub=" in tail:
        return False
    markers = ("ConnectionError", "BusyLoadingError", "TimeoutError")
    return any(tail.startswith(m, failed + len("worker failed: ")) for m in markers)


def worker_env(redis_url: str, hub: str, ledger_url: str, partitions: int, entities: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DURABLE_REDIS_URL=redis_url,
        DURABLE_HUB=hub,
        LEDGER_URL=ledger_url,
        CHAOS_PARTITIONS=str(partitions),
        CHAOS_ENTITIES="1" if entities else "0",
        PYTHONUNBUFFERED="1",
        DURABLE_AUDIT="1",  # the commit script records every accepted commit for the audit check
    )
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env
