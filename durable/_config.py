"""Settings shared by every layer: the environment variables, where a worker or client finds its
Redis and hub, and the worker's tuning knobs (:class:`WorkerConfig`).

A leaf of the package: it imports only :mod:`durable._embedded` (which knows nothing of the rest).
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field

from ._embedded import ENV_REDIS_SERVER, ENV_REDIS_URL, resolve_redis_url

__all__ = [
    "DEFAULT_HUB",
    "ENV_AUDIT",
    "ENV_CONCURRENCY",
    "ENV_DRAIN_TIMEOUT",
    "ENV_DURABILITY",
    "ENV_HUB",
    "ENV_LOG_LEVEL",
    "ENV_OPS_HOST",
    "ENV_OPS_PORT",
    "ENV_OPS_TOKEN",
    "ENV_PARTITIONS",
    "ENV_REDIS_SERVER",
    "ENV_REDIS_URL",
    "VERSION",
    "WorkerConfig",
    "resolve_hub",
    "resolve_url",
]

#: the package version (``durable.__version__``)
VERSION = "0.1.0"

DEFAULT_HUB = "default"

#: every environment variable the package reads, named once
ENV_HUB = "DURABLE_HUB"
ENV_CONCURRENCY = "DURABLE_CONCURRENCY"
ENV_PARTITIONS = "DURABLE_PARTITIONS"
ENV_DRAIN_TIMEOUT = "DURABLE_DRAIN_TIMEOUT"
ENV_LOG_LEVEL = "DURABLE_LOG_LEVEL"
ENV_OPS_PORT = "DURABLE_OPS_PORT"
ENV_OPS_HOST = "DURABLE_OPS_HOST"
ENV_OPS_TOKEN = "DURABLE_OPS_TOKEN"
ENV_DURABILITY = "DURABLE_DURABILITY"
ENV_AUDIT = "DURABLE_AUDIT"


def resolve_hub(hub: str | None) -> str:
    """``hub``, else ``$DURABLE_HUB``, else ``"default"``; validated for use in key names."""
    value = hub or os.environ.get(ENV_HUB) or DEFAULT_HUB
    if not value or any(c in value for c in "{}: \t\n"):
        raise ValueError(f"invalid hub name {value!r}: use letters, digits, '-', '_' or '.'")
    return value


def resolve_url(url: str | None) -> str:
    """``url``, else ``$DURABLE_REDIS_URL``, else an embedded Redis started on demand."""
    return resolve_redis_url(url)


@dataclass
class WorkerConfig:
    """Tuning knobs of a worker; the defaults suit production, tests shorten the timings."""

    partitions: int | None = None
    concurrency: int = 16
    lease_ttl_ms: int = 15_000
    renew_interval_ms: int = 3_000
    balance_interval_ms: int = 1_000
    heartbeat_ttl_ms: int = 10_000
    poll_ms: int = 1_000
    batch_size: int = 200
    activity_visibility_ms: int = 30_000
    max_deliveries: int = 5
    cache_size: int = 10_000
    drain_timeout: float = 30.0
    #: on standalone Redis, write cross-partition messages inside the commit (no outbox hop);
    #: False forces the outbox path that Redis Cluster always uses
    direct_delivery: bool = True
    #: 'fast' (the server's own persistence settings) or 'strict' (after every commit, wait until
    #: ``replicas`` replicas have it before anything leaves the partition; WAITAOF on Redis 7.2+,
    #: WAIT before). Default: $DURABLE_DURABILITY, else 'fast'.
    durability: str = field(default_factory=lambda: os.environ.get(ENV_DURABILITY, "fast"))
    #: replicas to wait for in 'strict'; None: those connected when the worker starts
    replicas: int | None = None
    replication_timeout_ms: int = 5_000
    #: attempts to reach Redis at startup (Redis restarting or loading) before giving up
    startup_retries: int = 20
    #: a step that fails (or whose worker dies) this many times at one inbox position is retried
    #: one message at a time; the message that still fails alone is dead-lettered
    max_recoveries: int = 3
    #: past this many history events an instance is warned about (use continue_as_new) ...
    history_warn_events: int = 10_000
    #: ... and past this many it is failed with a clear reason
    history_max_events: int = 100_000
    #: an activity task (or entity operation) for code this worker has not registered waits for a
    #: worker that has it; it fails only once no live worker of the hub has had it for this long
    #: (orchestration versions never fail for it: their instances wait)
    missing_code_grace_ms: int = 300_000
    #: terminal instances that finished longer ago than this are purged automatically, in
    #: bounded batches by their partition's owner; None keeps them until purged explicitly
    retention: _dt.timedelta | None = None

    def __post_init__(self) -> None:
        if self.retention is not None and self.retention <= _dt.timedelta(0):
            raise ValueError("retention must be a positive timedelta (or None to keep instances)")
