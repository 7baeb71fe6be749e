"""A real Redis Cluster for tests: three primaries on loopback, joined by ``redis-cli --cluster create``."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis
from _redis import RedisServer

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


class RedisClusterServers:
    """Three cluster-enabled redis-server processes forming one cluster."""

    def __init__(self, data_dir: Path, nodes: int = 3, appendfsync: str = "everysec") -> None:
        self.nodes = [
            RedisServer(
                data_dir / f"node{i}",
                port=_cluster_port(),
                appendfsync=appendfsync,
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                ],
            )
            for i in range(nodes)
        ]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> RedisClusterServers:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [find_redis_cli(), "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ok()
        return self

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Poll until every node reports cluster_state:ok (there is no event to wait on)."""
        deadline = time.monotonic() + timeout
        while True:
            states = []
            for node in self.nodes:
                with node.client() as c:
                    states.append(c.cluster("info").get("cluster_state"))
            if all(s == "ok" for s in states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster not ready: {states}")
            time.sleep(0.1)

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster.from_url(self.url)

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()
