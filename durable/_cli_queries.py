"""Read-only Redis queries of the operator CLI that :mod:`durable._ops_queries` does not have:
the hub's metadata and facts about the Redis server(s) themselves (for ``durable doctor``).

Server facts are read over a plain connection to one server (never a cluster client, which
cannot route keyless commands such as INFO), with short timeouts and no retries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import redis.asyncio as aredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from ._store import Store

#: Seconds allowed to connect to a server, and for each reply.
CONNECT_TIMEOUT_SECONDS = 5.0


def text(value: Any) -> str:
    """A Redis reply value as text (bytes decoded, None as "")."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def plain_client(url: str) -> Any:
    """A client of the one server at ``url`` (never a cluster client): short timeouts, no retries."""
    return aredis.Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        socket_timeout=CONNECT_TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 0),
    )


async def hub_meta(store: Store) -> dict[str, str]:
    """The hub's metadata hash (partitions, format, created); empty when the hub does not exist."""
    raw = await store.redis.hgetall(store.keys.meta)
    return {text(k): text(v) for k, v in raw.items()}


async def cluster_overview(url: str) -> tuple[str, list[str]]:
    """``CLUSTER INFO`` text and the healthy primaries (``host:port``) seen by the node at ``url``."""
    probe = plain_client(url)
    try:
        info = text(await probe.execute_command("CLUSTER", "INFO"))
        primaries = cluster_primaries(text(await probe.execute_command("CLUSTER", "NODES")))
    finally:
        with anyio.CancelScope(shield=True):
            await probe.aclose()
    return info, primaries


@dataclass
class NodeFacts:
    """What doctor reads from one Redis server (a cluster primary, or the standalone server)."""

    address: str
    info: dict[str, Any] = field(default_factory=dict)
    appendfsync: str | None = None
    error: str | None = None

    @property
    def version(self) -> tuple[int, ...]:
        return version_tuple(text(self.info.get("redis_version")))


def version_tuple(value: str) -> tuple[int, ...]:
    """``"7.2.4"`` -> ``(7, 2, 4)``; stops at the first part without digits."""
    out: list[int] = []
    for part in value.split("."):
        digits = "".join(c for c in part if c.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def node_url(url: str, address: str) -> str:
    """``url`` pointed at ``host:port`` (credentials, scheme and database kept)."""
    parts = urlsplit(url)
    host, _, port = address.rpartition(":")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@{host}:{port}" if auth else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def cluster_primaries(nodes_text: str) -> list[str]:
    """``host:port`` of the healthy primaries in ``CLUSTER NODES`` output."""
    out: list[str] = []
    for line in nodes_text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        flags = fields[2].split(",")
        if "master" not in flags or "fail" in flags or "noaddr" in flags:
            continue
        address = fields[1].split("@", 1)[0]
        if address.rpartition(":")[0]:
            out.append(address)
    return sorted(out)


async def read_node(url: str, address: str) -> NodeFacts:
    """INFO and ``appendfsync`` of the server at ``url``; a failure is recorded, not raised."""
    facts = NodeFacts(address)
    client = plain_client(url)
    try:
        facts.info = dict(await client.info())
        try:
            config: Any = await client.config_get("appendfsync")
            value = config.get("appendfsync", config.get(b"appendfsync"))
            facts.appendfsync = text(value) or None
        except RedisError:
            facts.appendfsync = None  # CONFIG renamed or not permitted (managed Redis)
    except (RedisError, OSError) as exc:
        facts.error = str(exc) or type(exc).__name__
    finally:
        with anyio.CancelScope(shield=True):
            await client.aclose()
    return facts
