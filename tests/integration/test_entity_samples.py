"""The sample entity applications of the ``entities`` package against a real Redis."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _redis import connect

import entities
from durable import (
    Client,
    EntityId,
    OrchestrationContext,
    OrchestrationStatus,
    TaskFailedError,
    Worker,
    WorkerConfig,
)
from durable._core.schedules import SCHEDULE_ENTITY
from entities.bank import ACCOUNT, Account, account, transfer
from entities.counter import COUNTER, counter
from entities.reminder import REMINDER, Reminder, reminder
from entities.scores import BOARD_SIZE, Leaderboard, Player, leaderboard, player
from entities.telemetry import TELEMETRY, site, summary, telemetry, wire_entry

TIMEOUT = 60
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def wait_until(cond: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    """Poll a condition only observable by reading Redis (entity state has no change event)."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def call(ctx: OrchestrationContext, request: dict[str, Any]) -> Any:
    """A test orchestration: one entity call; ``{"result": ...}``, or ``{"error": type, "message": ...}``
    when the operation raised."""
    try:
        result = yield ctx.call_entity(request["entity"], request["op"], input=request.get("input"))
    except TaskFailedError as failed:
        return {"error": failed.details.error_type, "message": failed.details.message}
    return {"result": result}


@pytest.fixture
def worker(redis_url: str, hub: str) -> Iterator[Worker]:
    w = entities.register(Worker(redis_url, hub, config=WorkerConfig(balance_interval_ms=100, poll_ms=200)))
    w.add_orchestrator(call)
    with w:
        yield w


@pytest.fixture
def client(redis_url: str, hub: str) -> Iterator[Client]:
    with Client(redis_url, hub) as c:
        yield c


def _state(client: Client, entity_id: EntityId | str) -> Any:
    found = client.get_entity(entity_id)
    return None if found is None else found.state


def _call(client: Client, entity_id: EntityId, op: str, input: Any = None) -> dict[str, Any]:
    """Apply ``op`` with ``ctx.call_entity`` from an orchestration; the output of :func:`call`."""
    iid = client.schedule_new_orchestration(call, input={"entity": str(entity_id), "op": op, "input": input})
    return _completed(client.wait_for_orchestration_completion(iid, timeout=TIMEOUT))  # type: ignore[no-any-return]


def _completed(state: Any) -> Any:
    assert state.runtime_status == OrchestrationStatus.COMPLETED, state.failure_details
    return state.output


# ------------------------------------------------------------------------------------------------
# the package


def test_module_worker_is_lazy_and_has_everything_registered() -> None:
    w = entities.worker
    assert isinstance(w, Worker)
    assert w._runtime is None  # constructing it connected to nothing
    # every worker also registers the built-in schedule entity
    assert set(w.registry.entities) == {
        COUNTER,
        ACCOUNT,
        REMINDER,
        "player",
        "leaderboard",
        TELEMETRY,
        SCHEDULE_ENTITY,
    }
    assert set(w.registry.orchestrators) == {"transfer"}
    assert w.registry.entities[ACCOUNT] is Account and w.registry.entities[COUNTER] is counter


def test_register_on_another_worker_returns_it() -> None:
    w = Worker("redis://127.0.0.1:1/0", "unused")
    assert entities.register(w) is w
    assert {Reminder, Player, Leaderboard, telemetry} <= set(w.registry.entities.values())
    assert w.registry.orchestrators["transfer"] is transfer


# ------------------------------------------------------------------------------------------------
# counter (function form)


def test_counter_applies_signals_in_order_and_answers_calls(worker: Worker, client: Client) -> None:
    visits = EntityId(COUNTER, "visits")
    for amount in range(1, 11):
        client.signal_entity(visits, "add", input=amount)
    client.signal_entity(visits, "add")  # no input: adds 1
    assert wait_until(lambda: _state(client, visits) == 56, "the signals")
    assert _call(client, visits, "get") == {"result": 56}
    assert _call(client, visits, "add", 4) == {"result": 60}  # a call answers with the new value
    assert _call(client, visits, "reset") == {"result": 0}
    bad = _call(client, visits, "add", "lots")
    assert bad["error"] == "TypeError" and "expects an integer" in bad["message"]
    unknown = _call(client, visits, "multiply", 2)
    assert unknown["error"] == "ValueError" and "no operation 'multiply'" in unknown["message"]
    assert _state(client, visits) == 0
    assert _call(client, visits, "delete") == {"result": None}
    assert client.get_entity(visits) is None
    assert _call(client, EntityId(COUNTER, "never-used"), "get") == {"result": 0}


# ------------------------------------------------------------------------------------------------
# bank account (class form) and transfers


def test_failing_operation_rolls_back_its_state_change(worker: Worker, client: Client) -> None:
    savings = account("savings")
    client.signal_entity(savings, "deposit", input=100)
    assert wait_until(lambda: _state(client, savings) == 100, "the deposit")
    # withdraw subtracts first, then raises: the subtraction must not survive
    refused = _call(client, savings, "withdraw", 250)
    assert refused == {
        "error": "InsufficientFundsError",
        "message": "insufficient funds: balance 100, asked 250",
    }
    assert _state(client, savings) == 100
    assert _call(client, savings, "balance") == {"result": 100}
    assert _call(client, savings, "withdraw", 30) == {"result": 70}
    assert _call(client, savings, "deposit", -5)["error"] == "ValueError"
    assert _state(client, savings) == 70


def test_transfer_moves_money_or_changes_nothing(worker: Worker, client: Client) -> None:
    alice, bob = account("alice"), account("bob")
    client.signal_entity(alice, "deposit", input=100)
    assert wait_until(lambda: _state(client, alice) == 100, "the deposit")
    iid = client.schedule_new_orchestration(transfer, input={"from": "alice", "to": "bob", "amount": 40})
    moved = _completed(client.wait_for_orchestration_completion(iid, timeout=TIMEOUT))
    assert moved == {"transferred": True, "balances": {"alice": 60, "bob": 40}}
    iid = client.schedule_new_orchestration(transfer, input={"from": "bob", "to": "alice", "amount": 41})
    refused = _completed(client.wait_for_orchestration_completion(iid, timeout=TIMEOUT))
    assert refused["transferred"] is False and "insufficient funds" in refused["reason"]
    assert (_state(client, alice), _state(client, bob)) == (60, 40)
    same = client.schedule_new_orchestration(transfer, input={"from": "bob", "to": "bob", "amount": 1})
    failed = client.wait_for_orchestration_completion(same, timeout=TIMEOUT)
    assert failed.runtime_status == OrchestrationStatus.FAILED


def test_concurrent_transfers_keep_the_total(worker: Worker, client: Client) -> None:
    keys = [f"a{i}" for i in range(4)]
    for key in keys:
        client.signal_entity(account(key), "deposit", input=100)
    wait_until(lambda: all(_state(client, account(k)) == 100 for k in keys), "the opening deposits")
    plans: list[dict[str, Any]] = [
        {"from": keys[i % 4], "to": keys[(i + 1 + i // 4) % 4], "amount": 15 + (i * 29) % 70}
        for i in range(24)
    ]
    plans = [p for p in plans if p["from"] != p["to"]]
    iids = [client.schedule_new_orchestration(transfer, input=p) for p in plans]
    results = [_completed(client.wait_for_orchestration_completion(i, timeout=TIMEOUT)) for i in iids]
    balances = [_state(client, account(k)) for k in keys]
    assert sum(balances) == 400 and min(balances) >= 0
    assert any(r["transferred"] for r in results)
    # each transfer either moved its amount or changed nothing: the balances are what moved
    net = dict.fromkeys(keys, 100)
    for plan, result in zip(plans, results, strict=True):
        if result["transferred"]:
            net[plan["from"]] -= plan["amount"]
            net[plan["to"]] += plan["amount"]
    assert balances == [net[k] for k in keys]
    accounts = client.list_entities(name=ACCOUNT)
    assert len(accounts) == 4
    assert all(s.locked_by is None and s.backlog == 0 for s in accounts)  # every lock released


# ------------------------------------------------------------------------------------------------
# scheduled signal


def test_scheduled_signal_arrives_after_its_time(worker: Worker, client: Client) -> None:
    standup = reminder("standup")
    client.signal_entity(standup, "set", input={"message": "stand-up", "in_s": 1.5})
    state = wait_until(lambda: _state(client, standup), "the reminder to be set")
    assert state["rings"] == 0 and state["rang_at"] is None  # set, not rung yet
    due = dt.datetime.fromisoformat(state["due"])
    rung = wait_until(lambda: (_state(client, standup) or {}).get("rings") == 1, "the ring")
    assert rung
    final = client.get_entity(standup)
    assert final is not None
    assert dt.datetime.fromisoformat(final.state["rang_at"]) >= due
    assert final.last_modified_at >= due  # applied by the Redis clock no earlier than due


def test_a_new_due_time_or_a_cancel_makes_earlier_rings_stale(worker: Worker, client: Client) -> None:
    moved = reminder("moved")
    client.signal_entity(moved, "set", input={"message": "first", "in_s": 0.3})
    client.signal_entity(moved, "set", input={"message": "second", "in_s": 1.0})
    state = wait_until(lambda: (s := _state(client, moved)) and s["rings"] == 1 and s, "the second ring")
    # the first ring, due earlier, arrived first and was ignored: it carries an old due time
    assert state["message"] == "second" and state["ignored"] == 1
    assert dt.datetime.fromisoformat(state["rang_at"]) >= dt.datetime.fromisoformat(state["due"])

    cancelled = reminder("cancelled")
    at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.5)
    client.signal_entity(cancelled, "set", input={"message": "never", "at": at.isoformat()})
    client.signal_entity(cancelled, "cancel")
    # the ring still arrives (a signal cannot be withdrawn), and is ignored
    state = wait_until(lambda: (s := _state(client, cancelled)) and s["ignored"] == 1 and s, "the stale ring")
    assert state["rings"] == 0 and state["due"] is None and state["rang_at"] is None
    assert client.get_entity(cancelled).last_modified_at >= at  # type: ignore[union-attr]


def test_client_signal_with_a_time(worker: Worker, client: Client) -> None:
    later, marker = EntityId(COUNTER, "later"), EntityId(COUNTER, "marker")
    at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1.0)
    client.signal_entity(later, "add", input=7, signal_at=at)
    client.signal_entity(marker, "add")
    wait_until(lambda: _state(client, marker) == 1, "the unscheduled signal")
    assert client.get_entity(later) is None  # not yet
    found = wait_until(lambda: client.get_entity(later), "the scheduled signal")
    assert found.state == 7 and found.last_modified_at >= at


# ------------------------------------------------------------------------------------------------
# entity signals entity


def test_players_signal_their_leaderboard(worker: Worker, client: Client) -> None:
    board = leaderboard("cup")
    games = [("alice", 12), ("bob", 30), ("alice", 41), ("carol", 25), ("bob", 18), ("carol", 33)]
    for name, points in games:
        client.signal_entity(player(name), "record", input={"points": points, "board": "cup"})
    expected = [["alice", 41], ["carol", 33], ["bob", 30]]
    wait_until(lambda: (_state(client, board) or {}).get("top") == expected, "the leaderboard")
    assert _state(client, player("alice")) == {"games": 2, "total": 53, "best": 41}
    assert _state(client, player("bob")) == {"games": 2, "total": 48, "best": 30}
    # a failing operation sends nothing: dave's bad game neither counts nor reaches the board
    client.signal_entity(player("dave"), "record", input={"points": "lots", "board": "cup"})
    client.signal_entity(player("dave"), "record", input={"points": 5, "board": "cup"})
    wait_until(lambda: len((_state(client, board) or {}).get("top", [])) == 4, "dave's entry")
    assert _state(client, board)["top"][-1] == ["dave", 5]
    assert _state(client, player("dave")) == {"games": 1, "total": 5, "best": 5}
    # the default board, and its size limit
    for i in range(BOARD_SIZE + 2):
        client.signal_entity(player(f"p{i:02d}"), "record", input={"points": i})
    top = wait_until(
        lambda: [
            e for e in (_state(client, leaderboard("global")) or {}).get("top", []) if e[1] == BOARD_SIZE + 1
        ],
        "the global board",
    )
    assert top == [["p11", BOARD_SIZE + 1]]
    assert len(_state(client, leaderboard("global"))["top"]) == BOARD_SIZE


# ------------------------------------------------------------------------------------------------
# IoT aggregator fed from outside Python


READINGS = [("t-1", 21.5), ("t-2", 19.0), ("t-3", 23.25), ("t-1", 22.0), ("t-2", 18.5)]


def _expected(readings: list[tuple[str, float]]) -> dict[str, Any]:
    values = [v for _, v in readings]
    return {
        "readings": len(values),
        "devices": len({d for d, _ in readings}),
        "min": min(values),
        "max": max(values),
        "mean": round(sum(values) / len(values), 3),
    }


@pytest.mark.standalone_only  # redis-cli speaks to one standalone Redis
@pytest.mark.skipif(
    shutil.which("redis-cli") is None or shutil.which("gzip") is None, reason="needs redis-cli and gzip"
)
def test_iot_aggregator_fed_by_redis_cli_xadd(
    worker: Worker, client: Client, redis_url: str, hub: str
) -> None:
    greenhouse = site("greenhouse-1")

    def xadd(message_id: str, device: str, value: float) -> str:
        data = json.dumps({"device": device, "value": value})
        done = subprocess.run(
            [
                "bash",
                str(FIXTURES / "signal.sh"),
                redis_url,
                hub,
                "signal",
                str(greenhouse),
                "reading",
                message_id,
                data,
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return done.stdout.strip()

    for i, (device, value) in enumerate(READINGS):
        assert xadd(f"reading-{i}", device, value)
    assert xadd("reading-0", *READINGS[0])  # a producer's retry: the same id is applied once
    wait_until(lambda: (_state(client, greenhouse) or {}).get("readings") == len(READINGS), "the readings")
    assert summary(_state(client, greenhouse)) == _expected(READINGS)
    assert _state(client, greenhouse)["devices"] == {"t-1": 22.0, "t-2": 18.5, "t-3": 23.25}
    # what a Python orchestration would read
    assert _call(client, greenhouse, "get") == {"result": _expected(READINGS)}


def test_iot_aggregator_fed_by_raw_xadd_of_wire_fields(
    worker: Worker, client: Client, redis_url: str, hub: str
) -> None:
    r = connect(redis_url)
    try:
        partitions = int(r.hget(f"durable:{{{hub}}}:meta", "partitions"))
        plant = site("plant-7/line-2")
        ids = [str(uuid.uuid4()) for _ in READINGS]
        for message_id, (device, value) in zip(ids, READINGS, strict=True):
            stream, fields = wire_entry(
                hub, partitions, plant, "reading", {"device": device, "value": value}, message_id
            )
            assert r.xadd(stream, fields)
        # a reading that is not a number fails its operation and changes nothing
        stream, fields = wire_entry(hub, partitions, plant, "reading", {"device": "t-9", "value": "hot"})
        r.xadd(stream, fields)
        # a reading sent ahead of time ("at": unix ms) is applied no earlier than that
        at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
        stream, fields = wire_entry(hub, partitions, plant, "reading", {"device": "t-4", "value": 30.0})
        r.xadd(stream, {**fields, "at": str(int(at.timestamp() * 1000))})
    finally:
        r.close()
    assert stream.startswith(f"durable:{{{hub}:") and stream.endswith("}:inbox")
    wait_until(lambda: (_state(client, plant) or {}).get("readings") == len(READINGS), "the readings")
    assert summary(_state(client, plant)) == _expected(READINGS)
    late = wait_until(
        lambda: (
            (e := client.get_entity(plant)) is not None and e.state["readings"] == len(READINGS) + 1 and e
        ),
        "the scheduled reading",
    )
    assert late.last_modified_at >= at
    assert summary(late.state) == _expected([*READINGS, ("t-4", 30.0)])
    assert "t-9" not in late.state["devices"]
