"""What a burst of work costs: CPU per step on each side, and Redis commands and bytes per step
(INFO commandstats and stats deltas), the figures the model of the limit is built from; and the
Redis Cluster the benchmark compares standalone Redis with.

The cluster mirrors ``tests/_cluster.py``: three cluster-enabled primaries on loopback without
replicas, joined by ``redis-cli --cluster create`` (slots split evenly, in node order).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from benchlib import cpu_seconds, spawn, stop, wait_port

from durable._embedded import find_redis_server


def find_redis_cli() -> str:
    """``redis-cli`` beside the redis-server in use, else from PATH."""
    beside = Path(find_redis_server()).with_name("redis-cli")
    if beside.exists():
        return str(beside)
    found = shutil.which("redis-cli")
    if not found:
        raise RuntimeError("redis-cli not found (needed to create a Redis Cluster)")
    return found


def _cluster_port() -> int:
    """A free port below 55536 whose bus port (port + 10000) is free too."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class ClusterRedis:
    """``nodes`` cluster-enabled redis-servers (primaries only) forming one Redis Cluster."""

    def __init__(
        self, data_dir: Path, nodes: int = 3, *, appendonly: bool = True, appendfsync: str = "everysec"
    ):
        self.dir = data_dir
        self.count = nodes
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[Any]] = []

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{p}/0" for p in self.ports]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def start(self) -> ClusterRedis:
        server = find_redis_server()
        for i in range(self.count):
            port = _cluster_port()
            node_dir = (self.dir / f"node{i}").resolve()
            node_dir.mkdir(parents=True, exist_ok=True)
            args = [server, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(node_dir)]
            args += ["--appendonly", "yes" if self.appendonly else "no", "--appendfsync", self.appendfsync]
            args += ["--save", "", "--maxmemory-policy", "noeviction", "--cluster-enabled", "yes"]
            args += ["--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000"]
            proc = spawn(args, node_dir / "redis.log", cwd=node_dir)
            self.procs.append(proc)
            self.ports.append(port)
            wait_port(port, 10, proc=proc)
        addresses = [f"127.0.0.1:{p}" for p in self.ports]
        subprocess.run(
            [find_redis_cli(), "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self._wait_ok()
        return self

    def _wait_ok(self, timeout: float = 30.0) -> None:
        """Poll until every node reports cluster_state:ok (there is no event to wait on)."""
        deadline = time.monotonic() + timeout
        while True:
            states = []
            for url in self.urls:
                with redis.Redis.from_url(url) as r:
                    states.append(r.cluster("info").get("cluster_state"))
            if all(s == "ok" for s in states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not ready: {states}")
            time.sleep(0.1)

    def stop(self) -> None:
        for proc in self.procs:
            stop(proc, timeout=10)
        self.procs.clear()

    def kill(self) -> None:
        self.stop()


# -- server-side counters -------------------------------------------------------------------------
#: commands the benchmark itself sends to read the counters; not part of the engine's cost
_OWN = {"info", "cluster|info", "cluster|nodes", "client|list"}


@dataclass
class Counters:
    """INFO commandstats calls and usec per command, and network bytes, summed over servers."""

    calls: dict[str, int] = field(default_factory=dict)
    usec: dict[str, int] = field(default_factory=dict)
    net_in: int = 0
    net_out: int = 0

    def __sub__(self, other: Counters) -> Counters:
        return Counters(
            {k: v - other.calls.get(k, 0) for k, v in self.calls.items() if k not in _OWN},
            {k: v - other.usec.get(k, 0) for k, v in self.usec.items() if k not in _OWN},
            self.net_in - other.net_in,
            self.net_out - other.net_out,
        )


def read_counters(urls: list[str]) -> Counters:
    out = Counters()
    for url in urls:
        with redis.Redis.from_url(url) as r:
            stats = r.info("commandstats")
            net = r.info("stats")
        for name, row in stats.items():
            cmd = name.removeprefix("cmdstat_")
            out.calls[cmd] = out.calls.get(cmd, 0) + int(row["calls"])
            out.usec[cmd] = out.usec.get(cmd, 0) + int(row["usec"])
        out.net_in += int(net["total_net_input_bytes"])
        out.net_out += int(net["total_net_output_bytes"])
    return out


def measure_burst(
    workers: list[int],
    servers: list[int],
    urls: list[str],
    burst: Callable[[], tuple[float, float, float]],
    n: int,
) -> dict[str, float]:
    """One burst of ``n`` steps (``burst`` runs it: steps/s, p50 ms, p99 ms), with CPU per step
    on each side and Redis commands and bytes per step.

    CPU is user + system time from /proc over the burst, of all worker processes, of every
    redis-server (and the busiest one alone), and of this process (the client); the Redis
    counters are INFO commandstats and INFO stats deltas summed over the servers.
    """
    before = read_counters(urls)
    w0, r0, c0 = (
        [cpu_seconds(p) for p in workers],
        [cpu_seconds(p) for p in servers],
        cpu_seconds(os.getpid()),
    )
    steps_s, p50, p99 = burst()
    w1, r1, c1 = (
        [cpu_seconds(p) for p in workers],
        [cpu_seconds(p) for p in servers],
        cpu_seconds(os.getpid()),
    )
    delta = read_counters(urls) - before
    per = lambda seconds: seconds * 1000 / n  # noqa: E731 - ms per step
    out = {
        "steps_s": steps_s,
        "p50_ms": p50,
        "p99_ms": p99,
        "worker_cpu_ms_per_step": per(sum(w1) - sum(w0)),
        "redis_cpu_ms_per_step": per(sum(r1) - sum(r0)),
        "redis_max_node_cpu_ms_per_step": per(max(b - a for a, b in zip(r0, r1, strict=True))),
        "client_cpu_ms_per_step": per(c1 - c0),
        "commands_per_step": sum(delta.calls.values()) / n,
        "scripts_per_step": sum(v for k, v in delta.calls.items() if k in ("evalsha", "eval", "fcall")) / n,
        "net_in_bytes_per_step": delta.net_in / n,
        "net_out_bytes_per_step": delta.net_out / n,
    }
    out["cpu_ms_per_step"] = out["worker_cpu_ms_per_step"] + out["redis_cpu_ms_per_step"]
    for cmd, calls in delta.calls.items():
        if calls > 0:
            out[f"cmd:{cmd}"] = calls / n
            out[f"usec:{cmd}"] = delta.usec.get(cmd, 0) / n
    return out
