"""Operator commands about the hub as a whole: ``durable partitions`` and ``durable workers``."""

from __future__ import annotations

import argparse

from .._core.registry import split_capability
from .._ops import views as views
from .._store import listing
from .._store import queries as q
from .common import (
    HubMissingError,
    Outcome,
    Session,
    fmt_cell,
    fmt_ranges,
    fmt_seconds,
    render_table,
)


async def partitions(session: Session, args: argparse.Namespace) -> Outcome:
    if not session.hub_exists:
        raise HubMissingError(f"hub {session.hub!r} does not exist (no metadata): no partitions")
    data = await views.partitions_view(session.store)  # the CLI is no worker: owns none
    rows = [
        [
            str(p["partition"]),
            fmt_cell(p["owner"], 50),
            q.text(p["epoch"]) or "-",
            fmt_seconds(p["lease_ttl_ms"] / 1000) if p["lease_ttl_ms"] is not None else "-",
            str(p["backlog"]),
            fmt_seconds(p["oldest_age_seconds"]) if p["oldest_message_id"] else "-",
            f"{p['timers']} ({p['timers_due_soon']} due soon)" if p["timers"] else "0",
            str(p["instances"]),
            str(p["entities"]),
            str(p["waiting_for_version"]),
        ]
        for p in data
    ]
    headers = ["partition", "owner", "epoch", "lease expires in", "backlog", "oldest age", "timers"]
    text = render_table([*headers, "instances", "entities", "waiting for version"], rows)
    return Outcome(data, text)


async def workers(session: Session, args: argparse.Namespace) -> Outcome:
    data = await views.workers_view(session.store)  # the CLI is no worker: this_worker is false
    rows = []
    for r in data:
        slots = "-"
        if r["slots"] is not None:
            used = r["slots_used"] if r["slots_used"] is not None else "?"
            slots = f"{used}/{r['slots']}"
        owned: list[int] = r["partitions"]
        rows.append(
            [
                fmt_cell(r["worker_id"], 50),
                fmt_cell(r["host"], 30),
                q.text(r["pid"]) or "-",
                slots,
                f"{len(owned)}: {fmt_ranges(owned)}" if owned else "0",
                fmt_seconds(r["expires_in_ms"] / 1000),
                fmt_cell(_versions(r.get("capabilities") or []), 50),
            ]
        )
    if not rows:
        return Outcome(data, "", note=f"no live workers in hub {session.hub!r}")
    headers = ["worker id", "host", "pid", "slots used", "partitions", "heartbeat expires in", "versions"]
    return Outcome(data, render_table(headers, rows))


async def reindex(session: Session, args: argparse.Namespace) -> Outcome:
    if not session.hub_exists:
        raise HubMissingError(f"hub {session.hub!r} does not exist (no metadata): nothing to index")
    store = session.store
    store.partitions = await q.partition_count(store)
    instances, entities, controls = await listing.reindex(store)
    data = {"instances": instances, "entities": entities, "entity_control_hashes": controls}
    text = f"Indexed {instances} instances, {entities} entities and {controls} entity control hashes."
    return Outcome(data, text)


def _versions(caps: list[str]) -> str:
    """The orchestrator versions a worker runs: ``flow@1,flow@2`` (unversioned: the bare name)."""
    out = []
    for cap in caps:
        kind, name, version = split_capability(cap)
        if kind == "o" and version is not None:
            out.append(f"{name}@{version}" if version else name)
    return ",".join(out)
