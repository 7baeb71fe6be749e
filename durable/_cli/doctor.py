"""``durable doctor``: checks the Redis server(s) and the hub for problems.

See :mod:`durable._cli_ops` for what every command shares.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio

from .._config import ENV_HUB, ENV_OPS_PORT, ENV_OPS_TOKEN
from .._core.model import ms_to_datetime
from .._store import queries as q
from .._store.keys import FORMAT_VERSION
from .._store.queries import NodeFacts
from .._store.store import Store
from .common import (
    EXIT_FAILURE,
    EXIT_OK,
    Commands,
    Outcome,
    Session,
    fmt_bytes,
    fmt_ranges,
    fmt_time,
    leaf,
    redact,
    render_table,
)

__all__ = ["Check", "doctor_checks", "register"]

#: Redis versions that bring features the engine uses.
XAUTOCLAIM_VERSION = (6, 2)
WAITAOF_VERSION = (7, 2)
#: Memory use (of maxmemory) from which doctor warns, and fails.
MEMORY_WARN_RATIO = 0.80
MEMORY_FAIL_RATIO = 0.95

#: Seconds allowed to one probe of an ops server, and the worker hosts probed at most.
OPS_PROBE_TIMEOUT_SECONDS = 2.0
MAX_OPS_PROBES = 16
#: Port of the workers' ops servers when $DURABLE_OPS_PORT does not say (the chart's default).
DEFAULT_OPS_PORT = 9464

OK, WARN, FAIL = "OK", "WARN", "FAIL"
_SEVERITY = {OK: 0, WARN: 1, FAIL: 2}


@dataclass
class Check:
    """One doctor finding."""

    name: str
    status: str
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail}


def _combine(name: str, nodes: list[NodeFacts], judge: Callable[[NodeFacts], tuple[str, str]]) -> Check:
    """One check over every node: the worst status; per-node details when they differ."""
    verdicts = [(node, *judge(node)) for node in nodes]
    worst = max((status for _, status, _ in verdicts), key=lambda s: _SEVERITY[s])
    details = {detail for _, _, detail in verdicts}
    if len(nodes) == 1 or len(details) == 1:
        detail = verdicts[0][2]
        if len(nodes) > 1:
            detail += f" (all {len(nodes)} primaries)"
        return Check(name, worst, detail)
    return Check(name, worst, "; ".join(f"{node.address}: {detail}" for node, _, detail in verdicts))


def _judge_version(node: NodeFacts) -> tuple[str, str]:
    return OK, f"Redis {q.text(node.info.get('redis_version')) or 'unknown'}"


def _judge_feature(minimum: tuple[int, int], missing: str) -> Callable[[NodeFacts], tuple[str, str]]:
    def judge(node: NodeFacts) -> tuple[str, str]:
        version = node.version
        wanted = ".".join(map(str, minimum))
        if version and version >= minimum:
            return OK, f"available (Redis {wanted}+)"
        return (FAIL if minimum == XAUTOCLAIM_VERSION else WARN), f"needs Redis {wanted}+: {missing}"

    return judge


def _judge_policy(node: NodeFacts) -> tuple[str, str]:
    policy = q.text(node.info.get("maxmemory_policy")) or "unknown"
    if policy == "noeviction":
        return OK, "noeviction"
    return FAIL, (
        f"{policy}: Redis may evict durable state (instances, history, leases) under memory "
        "pressure; set maxmemory-policy noeviction"
    )


def _judge_appendonly(node: NodeFacts) -> tuple[str, str]:
    if int(node.info.get("aof_enabled", 0) or 0) == 1:
        return OK, "yes"
    return WARN, "no: a Redis restart loses everything written since the last snapshot"


def _judge_appendfsync(node: NodeFacts) -> tuple[str, str]:
    value = node.appendfsync
    aof = int(node.info.get("aof_enabled", 0) or 0) == 1
    if value is None:
        return WARN, "unknown (CONFIG GET is not permitted)"
    if not aof:
        return OK, f"{value} (not in effect: appendonly is off)"
    if value == "always":
        return OK, "always"
    if value == "everysec":
        return OK, "everysec (a crash of the host may lose up to one second of writes)"
    return WARN, f"{value}: the OS decides when to flush; a host crash may lose many seconds of writes"


def _judge_memory(node: NodeFacts) -> tuple[str, str]:
    used = int(node.info.get("used_memory", 0) or 0)
    limit = int(node.info.get("maxmemory", 0) or 0)
    system = int(node.info.get("total_system_memory", 0) or 0)
    if limit <= 0:
        if system > 0 and used / system >= MEMORY_WARN_RATIO:
            return WARN, f"no maxmemory; {fmt_bytes(used)} used of {fmt_bytes(system)} system memory"
        return OK, f"{fmt_bytes(used)} used, no maxmemory limit"
    ratio = used / limit
    detail = f"{fmt_bytes(used)} used of maxmemory {fmt_bytes(limit)} ({ratio:.0%})"
    if ratio >= MEMORY_FAIL_RATIO:
        return FAIL, detail + ": writes will soon be refused (OOM)"
    if ratio >= MEMORY_WARN_RATIO:
        return WARN, detail
    return OK, detail


async def _lease_check(store: Store) -> Check:
    infos = await q.partitions_info(store)
    live = {w["worker_id"] for w in await q.live_workers(store)}
    total = len(infos)
    unowned = [p.partition for p in infos if p.owner is None]
    stale = [p.partition for p in infos if p.owner is not None and p.owner not in live]
    leased = total - len(unowned)
    workers_text = f"{len(live)} live worker{'s' if len(live) != 1 else ''}"
    if not live:
        return Check(
            "leases", WARN, f"{leased}/{total} partitions leased, no live workers: nothing processes the hub"
        )
    problems = []
    if unowned:
        problems.append(f"partitions {fmt_ranges(unowned)} have no lease holder")
    if stale:
        problems.append(f"partitions {fmt_ranges(stale)} are leased by workers without a live heartbeat")
    if problems:
        return Check(
            "leases",
            WARN,
            f"{leased}/{total} partitions leased, {workers_text}; "
            + "; ".join(problems)
            + " (normal for a few seconds after a worker joins or leaves)",
        )
    return Check("leases", OK, f"{total}/{total} partitions leased by {workers_text}")


def _probe_ops(url: str) -> tuple[str, str]:
    """Ask the ops server at ``url`` for ``/v1/hub`` without a token: ("open" | "token" |
    "unknown", what it answered)."""
    request = urllib.request.Request(f"{url.rstrip('/')}/v1/hub", headers={"Accept": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # straight to the worker
    try:
        with opener.open(request, timeout=OPS_PROBE_TIMEOUT_SECONDS) as response:
            body = json.loads(response.read(65536))
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 401:
            return "token", "requires a token"
        return "unknown", f"answered HTTP {exc.code}"
    except (OSError, ValueError) as exc:  # refused, unresolvable, timed out, not JSON
        reason = getattr(exc, "reason", None) or exc
        return "unknown", f"not reachable ({reason})"
    if isinstance(body, dict) and body.get("auth_required") is False:
        return "open", "answers without a token"
    return "unknown", "answered, but not like a durable ops server"


def _ops_targets(workers: list[dict[str, Any]]) -> list[str]:
    """``http://HOST:PORT`` of the live workers' hosts, on the port of $DURABLE_OPS_PORT."""
    raw = os.environ.get(ENV_OPS_PORT, "").strip()
    port = int(raw) if raw.isdigit() and 0 < int(raw) < 65536 else DEFAULT_OPS_PORT
    hosts = dict.fromkeys(w["host"] for w in workers if w.get("host"))
    return [f"http://{host}:{port}" for host in list(hosts)[:MAX_OPS_PROBES]]


async def _ops_token_check(workers: list[dict[str, Any]], urls: Sequence[str]) -> Check:
    """Whether the ops servers answer their API without a token, found by asking them: those
    at ``urls``, else those of the live workers' hosts. A server that cannot be reached is not
    judged (the check says so)."""
    targets = list(dict.fromkeys(urls)) or _ops_targets(workers)
    if not targets:
        return Check("ops-token", OK, "not checked: no live workers (give --ops-url URL to check a server)")
    verdicts: dict[str, tuple[str, str]] = {}

    async def probe(url: str) -> None:
        verdicts[url] = await anyio.to_thread.run_sync(_probe_ops, url)

    async with anyio.create_task_group() as tg:
        for url in targets:
            tg.start_soon(probe, url)
    open_ = [url for url in targets if verdicts[url][0] == "open"]
    protected = [url for url in targets if verdicts[url][0] == "token"]
    unknown = [url for url in targets if verdicts[url][0] == "unknown"]
    if open_:
        return Check(
            "ops-token",
            WARN,
            f"{', '.join(open_)} {'answers' if len(open_) == 1 else 'answer'} the ops API without a "
            "token: anyone who reaches it can start, terminate and purge orchestrations "
            f"(set ${ENV_OPS_TOKEN})",
        )
    if protected:
        detail = f"{', '.join(protected)} {'requires' if len(protected) == 1 else 'require'} a token"
        if unknown:
            detail += f"; not checked: {', '.join(unknown)} (not reachable from here)"
        return Check("ops-token", OK, detail)
    first = verdicts[unknown[0]][1]
    return Check(
        "ops-token",
        OK,
        f"not checked: no ops server answered at {', '.join(unknown)} ({first}); "
        "give --ops-url URL to check a server",
    )


async def doctor_checks(session: Session, ops_urls: Sequence[str] = ()) -> list[Check]:
    """Everything ``durable doctor`` checks, in order; ``ops_urls`` are ops servers to ask
    whether they require a token (default: the live workers' hosts)."""
    store = session.store
    checks: list[Check] = []
    # -- the servers
    if store.cluster:
        cluster_info, primaries = await q.cluster_overview(session.url)
        state = next(
            (
                line.split(":", 1)[1].strip()
                for line in cluster_info.splitlines()
                if line.startswith("cluster_state:")
            ),
            "unknown",
        )
        status = OK if state == "ok" and primaries else FAIL
        checks.append(Check("cluster", status, f"cluster mode, state {state}, {len(primaries)} primaries"))
        nodes = [await q.read_node(q.node_url(session.url, a), a) for a in primaries]
    else:
        parts = urlsplit(session.url)
        address = (
            f"{parts.hostname or 'localhost'}:{parts.port or 6379}" if parts.hostname else redact(session.url)
        )
        nodes = [await q.read_node(session.url, address)]
        checks.append(Check("cluster", OK, "standalone (cluster mode disabled)"))
    down = [n for n in nodes if n.error is not None]
    if down:
        checks.append(Check("nodes", FAIL, "; ".join(f"{n.address}: {n.error}" for n in down)))
    nodes = [n for n in nodes if n.error is None]
    if nodes:
        checks.insert(0, _combine("redis", nodes, _judge_version))
        checks.append(
            _combine(
                "xautoclaim",
                nodes,
                _judge_feature(XAUTOCLAIM_VERSION, "stale activity tasks of dead workers are not reclaimed"),
            )
        )
        checks.append(
            _combine(
                "waitaof",
                nodes,
                _judge_feature(
                    WAITAOF_VERSION, "durability 'strict' falls back to WAIT (replica acknowledgement only)"
                ),
            )
        )
        checks.append(_combine("maxmemory-policy", nodes, _judge_policy))
        checks.append(_combine("appendonly", nodes, _judge_appendonly))
        checks.append(_combine("appendfsync", nodes, _judge_appendfsync))
        checks.append(_combine("memory", nodes, _judge_memory))
    # -- the hub
    meta = session.meta
    if not meta:
        checks.append(
            Check(
                "hub",
                FAIL,
                f"hub {session.hub!r} has no metadata: no worker has started on it "
                f"(check --hub / ${ENV_HUB})",
            )
        )
        return checks
    if not session.hub_exists:
        checks.append(
            Check(
                "hub", FAIL, f"hub {session.hub!r} has an invalid partition count {meta.get('partitions')!r}"
            )
        )
        return checks
    created = meta.get("created", "")
    created_text = f", created {fmt_time(ms_to_datetime(int(created)))}" if created.isdigit() else ""
    checks.append(Check("hub", OK, f"hub {session.hub!r}: {store.partitions} partitions{created_text}"))
    fmt = meta.get("format")
    if fmt is None:
        checks.append(
            Check("format", WARN, f"no format version recorded (this build writes {FORMAT_VERSION})")
        )
    elif fmt == str(FORMAT_VERSION):
        checks.append(Check("format", OK, f"version {fmt}"))
    else:
        checks.append(
            Check(
                "format",
                FAIL,
                f"version {fmt}, but this build reads version {FORMAT_VERSION}: upgrade or migrate",
            )
        )
    checks.append(await _lease_check(store))
    checks.append(await _ops_token_check(await q.live_workers(store), ops_urls))
    return checks


async def doctor(session: Session, args: argparse.Namespace) -> Outcome:
    checks = await doctor_checks(session, args.ops_url or ())
    counts = {s: sum(1 for c in checks if c.status == s) for s in (OK, WARN, FAIL)}
    failed = counts[FAIL] > 0
    data = {
        "ok": not failed,
        "hub": session.hub,
        "redis_url": redact(session.url),
        "summary": counts,
        "checks": [c.to_json() for c in checks],
    }
    table = render_table(["status", "check", "detail"], [[c.status, c.name, c.detail] for c in checks])
    summary = f"{counts[OK]} OK, {counts[WARN]} WARN, {counts[FAIL]} FAIL"
    return Outcome(data, f"{table}\n\n{summary}", EXIT_FAILURE if failed else EXIT_OK)


def register(commands: Commands) -> None:
    """Add ``durable doctor``."""
    parser = leaf(
        commands,
        "doctor",
        doctor,
        "check Redis and the hub for problems",
        "Check the Redis server(s) and the hub: Redis version and features (XAUTOCLAIM needs "
        "6.2+, WAITAOF 7.2+), cluster mode, maxmemory-policy (must be noeviction), appendonly and "
        "appendfsync, memory headroom, hub metadata, partition count and format version, the "
        "partition leases, and whether the ops servers answer their API without a token (WARN): "
        "doctor asks those given with --ops-url, else the live workers' hosts on port "
        f"${ENV_OPS_PORT} (else {DEFAULT_OPS_PORT}), GET /v1/hub without a token; a server it "
        "cannot reach is not judged. Prints each check as OK, WARN or FAIL; exits 1 when any "
        "check FAILs.",
    )
    parser.add_argument(
        "--ops-url",
        action="append",
        metavar="URL",
        help="an ops server to check for a token, e.g. http://127.0.0.1:9464 (repeatable; "
        "default: the live workers' hosts)",
    )
