"""The entity patterns' part of ``durable demo``: each pattern as a short script against the
in-process worker, with the result it should produce.

``durable demo`` (:mod:`durable._cli.demo`) imports this module, registers the samples on its
in-process worker with :func:`register` and runs :func:`cases`. Every entity a script uses has a
key unique to the run, and is deleted when the demo ends (unless ``--keep``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import anyio
import redis.asyncio as aredis

from durable import OrchestrationState, OrchestrationStatus
from durable._cli.demo_cases import Case, DemoRun, DemoSettings, Outcome, ScriptCase, expect

from . import register
from .bank import ACCOUNT, transfer
from .counter import COUNTER
from .reminder import REMINDER
from .scores import LEADERBOARD, PLAYER
from .telemetry import TELEMETRY, summary, wire_entry

__all__ = ["GROUP", "cases", "register"]

#: The name of these patterns in the demo's summary.
GROUP = "Entities"

OPENING_BALANCE = 100
REMINDER_DELAY_S = 1.5
#: (player, points) in the order the games are recorded
GAMES = [("alice", 12), ("bob", 30), ("alice", 41), ("carol", 25), ("bob", 18), ("carol", 33)]
#: (device, value) sent with XADD, as devices outside Python would
READINGS = [
    ("t-1", 21.5),
    ("t-2", 19.0),
    ("t-3", 23.25),
    ("t-1", 22.0),
    ("t-2", 18.5),
    ("t-3", 24.0),
    ("t-1", 22.5),
    ("t-2", 19.5),
]


def _completed(state: OrchestrationState) -> Any:
    if state.runtime_status != OrchestrationStatus.COMPLETED:
        details = state.failure_details
        raise RuntimeError(
            f"{state.name} ended {state.runtime_status.value}: {details.message if details else ''}"
        )
    return state.output


async def counter_script(run: DemoRun) -> dict[str, Any]:
    """Five ``add`` signals to one counter; they are applied once each, in order."""
    counter = run.entity(COUNTER, "visits")
    for amount in range(1, 6):
        await run.client.signal_entity(counter, "add", input=amount)
    run.progress("5 signals sent")
    value = await run.wait_for_entity(counter, lambda v: (v or 0) >= 15)
    return {"value": value, "signals": 5}


async def rollback_script(run: DemoRun) -> dict[str, Any]:
    """An overdrawing withdrawal raises after taking the money out: the change is rolled back."""
    savings, checking = run.entity(ACCOUNT, "savings"), run.entity(ACCOUNT, "checking")
    await run.client.signal_entity(savings, "deposit", input=OPENING_BALANCE)
    await run.wait_for_entity(savings, lambda v: v == OPENING_BALANCE)
    run.progress(f"transferring 250 out of {OPENING_BALANCE}")
    request = {"from": savings.key, "to": checking.key, "amount": 250}
    result = _completed(await run.run_orchestration(transfer, request, "overdraw"))
    return {
        "result": result,
        "balance": await run.entity_state(savings),
        "other": await run.entity_state(checking),
    }


async def transfers_script(run: DemoRun) -> dict[str, Any]:
    """Twelve transfers at once between three accounts, each in a critical section."""
    keys = ["alice", "bob", "carol"]
    accounts = [run.entity(ACCOUNT, key) for key in keys]
    for account in accounts:
        await run.client.signal_entity(account, "deposit", input=OPENING_BALANCE)
    for account in accounts:
        await run.wait_for_entity(account, lambda v: v == OPENING_BALANCE)
    plans = [
        {
            "from": accounts[i % 3].key,
            "to": accounts[(i + 1 + (i // 3) % 2) % 3].key,
            "amount": 20 + (i * 37) % 90,
        }
        for i in range(12)
    ]
    run.progress(f"{len(plans)} transfers running")
    results: list[Any] = []

    async def one(i: int, plan: dict[str, Any]) -> None:
        results.append(_completed(await run.run_orchestration(transfer, plan, f"transfer-{i}")))

    async with anyio.create_task_group() as tg:
        for i, plan in enumerate(plans):
            tg.start_soon(one, i, plan)
    balances = {key: await run.entity_state(account) for key, account in zip(keys, accounts, strict=True)}
    moved = sum(1 for r in results if r["transferred"])
    return {
        "transfers": len(results),
        "moved": moved,
        "refused": len(results) - moved,
        "balances": balances,
        "total": sum(balances.values()),
    }


async def reminder_script(run: DemoRun) -> dict[str, Any]:
    """A reminder schedules a signal to itself; it arrives no earlier than its time."""
    reminder = run.entity(REMINDER, "stand-up")
    await run.client.signal_entity(reminder, "set", input={"message": "stand-up", "in_s": REMINDER_DELAY_S})
    run.progress(f"'ring' scheduled {REMINDER_DELAY_S}s ahead")
    state = await run.wait_for_entity(reminder, lambda s: bool(s) and s["rings"] >= 1)
    due, rang = dt.datetime.fromisoformat(state["due"]), dt.datetime.fromisoformat(state["rang_at"])
    return {"message": state["message"], "rings": state["rings"], "late_s": (rang - due).total_seconds()}


async def leaderboard_script(run: DemoRun) -> dict[str, Any]:
    """Players signal their leaderboard whenever they beat their best score."""
    board = run.entity(LEADERBOARD, "spring-cup")
    players = {name: run.entity(PLAYER, name) for name, _ in GAMES}
    for name, points in GAMES:
        await run.client.signal_entity(players[name], "record", input={"points": points, "board": board.key})
    run.progress(f"{len(GAMES)} games recorded")
    best = {name: max(p for n, p in GAMES if n == name) for name in players}
    expected = [[players[n].key, p] for n, p in sorted(best.items(), key=lambda item: -item[1])]
    state = await run.wait_for_entity(board, lambda s: bool(s) and s["top"] == expected)
    prefix = run.key("")
    return {"top": [[name.removeprefix(prefix), points] for name, points in state["top"]]}


async def _raw_redis(url: str) -> Any:
    """A bare redis-py client (a cluster client on Redis Cluster): no durable code on this path."""
    plain = aredis.Redis.from_url(url)
    info = await plain.info("cluster")
    if not info.get("cluster_enabled"):
        return plain
    await plain.aclose()
    return aredis.RedisCluster.from_url(url)


async def telemetry_script(run: DemoRun) -> dict[str, Any]:
    """Devices feed a site's aggregator with plain XADDs of the wire format; one is sent twice
    (a producer's retry) and counted once."""
    site = run.entity(TELEMETRY, "greenhouse")
    r = await _raw_redis(run.redis_url)
    try:
        partitions = int(await r.hget(f"durable:{{{run.hub}}}:meta", "partitions"))
        entries = [
            wire_entry(run.hub, partitions, site, "reading", {"device": device, "value": value})
            for device, value in READINGS
        ]
        for stream, fields in [*entries, entries[0]]:
            await r.xadd(stream, fields)
    finally:
        await r.aclose()
    run.progress(f"{len(entries) + 1} XADDs sent (one of them twice)")
    state = await run.wait_for_entity(site, lambda s: bool(s) and s["readings"] >= len(READINGS))
    return summary(state)


def cases(settings: DemoSettings) -> list[Case]:
    """The demo's entity scenarios."""
    values = [v for _, v in READINGS]
    expected_stats = {
        "readings": len(READINGS),
        "devices": len({d for d, _ in READINGS}),
        "min": min(values),
        "max": max(values),
        "mean": round(sum(values) / len(values), 3),
    }

    def rollback_check(o: Outcome) -> str | None:
        out = o.output
        return expect(
            out["result"]["transferred"] is False
            and out["balance"] == OPENING_BALANCE
            and out["other"] in (None, 0),
            f"got {out!r}",
        )

    def transfers_check(o: Outcome) -> str | None:
        out = o.output
        return expect(
            out["total"] == 3 * OPENING_BALANCE
            and min(out["balances"].values()) >= 0
            and out["transfers"] == 12,
            f"total not kept: {out!r}",
        )

    return [
        ScriptCase(
            "counter",
            "entity: counter",
            counter_script,
            check=lambda o: expect(o.output["value"] == 15, f"got {o.output!r}"),
            describe=lambda o: f"{o.output['signals']} signals applied once each: value {o.output['value']}",
            hint="function form: signals add 1..5",
        ),
        ScriptCase(
            "rollback",
            "entity: overdraw rolls back",
            rollback_script,
            check=rollback_check,
            describe=lambda o: (
                f"withdraw refused ({o.output['result']['reason']}); balance still {o.output['balance']}"
            ),
            hint="class form: an operation that raises changes nothing",
        ),
        ScriptCase(
            "transfers",
            "entity: transfers (locks)",
            transfers_script,
            check=transfers_check,
            describe=lambda o: (
                f"{o.output['transfers']} concurrent transfers ({o.output['moved']} moved, "
                f"{o.output['refused']} refused): total still {o.output['total']}"
            ),
            hint="orchestrations lock both accounts (ctx.lock_entities)",
        ),
        ScriptCase(
            "reminder",
            "entity: scheduled signal",
            reminder_script,
            check=lambda o: expect(
                o.output["rings"] == 1 and o.output["late_s"] >= 0, f"rang early or twice: {o.output!r}"
            ),
            describe=lambda o: f"'{o.output['message']}' rang {o.output['late_s']:.2f}s after its time",
            hint="signal_at: a signal applied no earlier than its time",
        ),
        ScriptCase(
            "leaderboard",
            "entity: signals an entity",
            leaderboard_script,
            check=lambda o: expect(len(o.output["top"]) == 3, f"got {o.output!r}"),
            describe=lambda o: "leaderboard " + ", ".join(f"{n} {p}" for n, p in o.output["top"]),
            hint="players signal their leaderboard",
        ),
        ScriptCase(
            "telemetry",
            "entity: IoT readings (XADD)",
            telemetry_script,
            check=lambda o: expect(o.output == expected_stats, f"got {o.output!r}"),
            describe=lambda o: (
                f"{o.output['readings']} readings from {o.output['devices']} devices: min {o.output['min']}, "
                f"mean {o.output['mean']}, max {o.output['max']}"
            ),
            hint="wire format: plain XADDs, no durable client",
        ),
    ]
