"""The entity batch executor and the orchestration side of entities, fed directly (no Redis)."""

from __future__ import annotations

from typing import Any

import pytest

from durable import Entity, EntityContext, EntityId, OrchestrationStatus
from durable._core import events as ev
from durable._core.entities import (
    MSG_SWEEP,
    EntityRecord,
    fingerprint,
    has_recent,
    held_locks,
    recent_since,
    sort_entities,
)
from durable._core.entity_batch import EntityBatch
from durable._core.executor import OrchestrationExecutor
from durable._core.registry import name_of
from durable._core.serialization import decode, encode

NOW = 1_700_000_000_000


def counter(ctx: EntityContext, value: Any) -> Any:
    if ctx.operation == "add":
        ctx.set_state(ctx.get_state(0) + value)
    elif ctx.operation == "get":
        return ctx.get_state(0)
    elif ctx.operation == "add_then_fail":
        ctx.set_state(ctx.get_state(0) + value)
        ctx.signal_entity("@counter@other", "add", input=1)
        raise ValueError("no luck")
    elif ctx.operation == "delete":
        ctx.delete_state()
    elif ctx.operation == "forward":
        ctx.signal_entity(EntityId("Counter", "other"), "add", input=value)
        return ctx.schedule_new_orchestration("report", input=value, instance_id="r1")
    return None


class Account(Entity):
    state = 0

    def deposit(self, amount: int) -> None:
        self.state += amount

    def withdraw(self, amount: int) -> int:
        if amount > self.state:
            raise ValueError(f"insufficient funds: {self.state} < {amount}")
        self.state -= amount
        return int(self.state)

    def balance(self) -> int:
        return int(self.state)


class Cart(Entity):
    def initial_state(self) -> Any:
        return {"items": []}

    def add(self, item: str) -> None:
        self.state["items"].append(item)

    def add_and_fail(self, item: str) -> None:
        self.state["items"].append(item)
        raise RuntimeError("changed my mind")


def signal(target: str, op: str, value: Any = None, **extra: Any) -> dict[str, Any]:
    return {"kind": ev.MSG_SIGNAL, "target": target, "op": op, "input": encode(value), **extra}


def call(target: str, op: str, value: Any = None, rid: str = "r", **extra: Any) -> dict[str, Any]:
    return {
        "kind": ev.MSG_CALL,
        "target": target,
        "op": op,
        "input": encode(value),
        "rid": rid,
        "orch": "o1",
        **extra,
    }


def run(
    impl: Any, msgs: list[dict[str, Any]], record: EntityRecord | None = None, target: str = "@counter@k"
) -> tuple[EntityRecord, Any]:
    rec = record or EntityRecord()
    result = EntityBatch(EntityId.parse(target), impl, rec, NOW).run(msgs)
    return rec, result


# -- ids -------------------------------------------------------------------------------------------
def test_entity_id_forms() -> None:
    eid = EntityId("Counter", "User@42")
    assert eid.name == "counter" and str(eid) == "@counter@User@42"
    assert EntityId.parse("@COUNTER@User@42") == eid
    assert EntityId.of(str(eid)) is not eid and EntityId.of(eid) is eid
    for bad in ("counter@k", "@counter", "@@k", "@counter@", ""):
        with pytest.raises(ValueError):
            EntityId.parse(bad)
    with pytest.raises(ValueError):
        EntityId("a@b", "k")
    assert sort_entities(["@b@1", EntityId("A", "2"), "@a@2"]) == ["@a@2", "@b@1"]


# -- operations ------------------------------------------------------------------------------------
def test_function_entity_applies_in_order_and_answers_calls() -> None:
    rec, result = run(
        counter,
        [signal("@counter@k", "add", 2), signal("@counter@k", "add", 3), call("@counter@k", "get", rid="r1")],
    )
    assert decode(rec.state) == 5
    assert result.completed == 3 and result.failed == 0
    assert result.out == [{"kind": ev.MSG_ENTITY_RESPONSE, "target": "o1", "rid": "r1", "result": encode(5)}]


def test_get_on_a_new_entity_does_not_create_it() -> None:
    rec, result = run(counter, [call("@counter@k", "get")])
    assert rec.state is None and decode(result.out[0]["result"]) == 0


def test_failed_operation_rolls_back_state_and_messages() -> None:
    rec, result = run(
        counter,
        [
            signal("@counter@k", "add", 10),
            call("@counter@k", "add_then_fail", 5, rid="x"),
            signal("@counter@k", "add", 1),
        ],
    )
    assert decode(rec.state) == 11  # the failed +5 left no trace, later operations still apply
    assert result.failed == 1 and result.completed == 2
    [response] = result.out  # the failed operation's signal was discarded
    failure = response["failure"]
    assert failure["error_type"] == "ValueError" and failure["message"] == "no luck"
    assert "add_then_fail" in failure["stack_trace"] or "counter" in failure["stack_trace"]


def test_signal_failures_are_reported_not_answered() -> None:
    rec, result = run(counter, [signal("@counter@k", "add", "not a number")])
    assert rec.state is None and result.out == []
    [(op, details)] = result.signal_failures
    assert op == "add" and details.error_type == "TypeError"


def test_actions_signal_and_start() -> None:
    _, result = run(counter, [call("@counter@k", "forward", 7, rid="f")])
    sig, start, response = result.out
    assert sig["target"] == "@counter@other" and sig["kind"] == ev.MSG_SIGNAL and decode(sig["input"]) == 7
    assert start["kind"] == ev.MSG_START and start["target"] == "r1" and start["name"] == "report"
    assert decode(response["result"]) == "r1"


def test_delete_removes_state() -> None:
    rec = EntityRecord(state=encode(3))
    rec, result = run(counter, [signal("@counter@k", "delete")], rec)
    assert rec.state is None and result.deleted
    rec, result = run(
        counter,
        [signal("@counter@k", "delete"), signal("@counter@k", "add", 1)],
        EntityRecord(state=encode(3)),
    )
    assert decode(rec.state) == 1 and not result.deleted


def test_class_entity_operations_and_initial_state() -> None:
    target = "@account@a"
    rec, result = run(
        Account,
        [
            call(target, "balance", rid="b0"),
            signal(target, "deposit", 50),
            call(target, "WITHDRAW", 20, rid="w"),
            call(target, "withdraw", 100, rid="w2"),
            call(target, "nope", rid="n"),
        ],
        target=target,
    )
    assert decode(rec.state) == 30
    b0, w, w2, n = result.out
    assert decode(b0["result"]) == 0 and decode(w["result"]) == 30
    assert "insufficient funds" in w2["failure"]["message"]
    assert "no operation 'nope'" in n["failure"]["message"]
    rec, _ = run(Account, [signal(target, "delete")], rec, target=target)
    assert rec.state is None


def test_class_entity_mutable_state_is_isolated_per_operation() -> None:
    target = "@cart@c"
    rec, result = run(
        Cart,
        [
            signal(target, "add", "apple"),
            signal(target, "add_and_fail", "plum"),
            signal(target, "add", "pear"),
        ],
        target=target,
    )
    assert decode(rec.state) == {"items": ["apple", "pear"]}  # the failed append left nothing behind
    assert result.failed == 1


def test_async_operations_are_rejected() -> None:
    async def bad(ctx: EntityContext, value: Any) -> None:
        ctx.set_state(1)

    rec, result = run(bad, [call("@counter@k", "x", rid="a")])
    assert rec.state is None and "synchronous" in result.out[0]["failure"]["message"]


# -- de-duplication --------------------------------------------------------------------------------
def test_duplicate_request_ids_apply_once() -> None:
    msgs = [signal("@counter@k", "add", 1, id=f"s{i}") for i in range(20)]
    msgs.insert(5, signal("@counter@k", "add", 1, id="s3"))
    rec, result = run(counter, msgs)
    assert decode(rec.state) == 20 and result.duplicates == 1
    assert [ts for ts, _ in rec.recent] == [NOW // 1000] * 20
    rec, result = run(counter, [signal("@counter@k", "add", 1, id="s19")], rec)  # a later batch
    assert decode(rec.state) == 20 and result.duplicates == 1


def test_request_id_window_is_bounded_by_count_and_age() -> None:
    rec = EntityRecord()
    batch = EntityBatch(EntityId("counter", "k"), counter, rec, NOW, window=5, dedup_seconds=60)
    batch.run([signal("@counter@k", "add", 1, id=f"s{i}") for i in range(12)])
    assert len(rec.recent) == 5 and decode(rec.state) == 12
    _, result = run(counter, [signal("@counter@k", "add", 1, id="s0")], rec)  # forgotten: applied again
    assert result.duplicates == 0 and decode(rec.state) == 13
    later = NOW + 61_000
    EntityBatch(EntityId("counter", "k"), counter, rec, later, dedup_seconds=60).run(
        [{"kind": MSG_SWEEP, "target": "@counter@k"}]
    )
    assert rec.recent == [] and rec.control_fields() == {"l": b"", "q": b"", "r": b"", "x": b""}


def test_record_round_trip() -> None:
    rec = EntityRecord(
        state=encode({"a": 1}),
        lock=["rid", "orch"],
        queue=[signal("@x@y", "op")],
    )
    rec.recent = [(NOW // 1000, b"12345678"), (NOW // 1000 + 1, b"abcdefgh")]
    raw = {k.encode(): v for k, v in rec.main_fields().items()}
    raw_control = {k.encode(): v for k, v in rec.control_fields().items()}
    assert len(raw_control[b"r"]) == 24
    back = EntityRecord.from_fields(raw, raw_control)
    assert (back.state, back.lock, back.queue, back.recent) == (rec.state, rec.lock, rec.queue, rec.recent)
    state = back.to_state(EntityId("x", "y"))
    assert state is not None and state.state == {"a": 1} and state.locked_by == "orch" and state.backlog == 1
    assert EntityRecord.from_fields({}, {}).to_state(EntityId("x", "y")) is None


# -- scheduling, unknown entities, bad messages -----------------------------------------------------
def test_scheduled_signal_is_parked_until_due() -> None:
    rec, result = run(
        counter,
        [
            signal("@counter@k", "add", 1, id="later", at=NOW + 5000),
            signal("@counter@k", "add", 2, id="now", at=NOW - 1),
        ],
    )
    assert decode(rec.state) == 2
    [(due, member, parked)] = result.timers
    assert due == NOW + 5000 and member == "s|@counter@k|later" and "at" not in parked


def test_unknown_entity_dead_letters_signals_and_fails_calls() -> None:
    rec, result = run(
        None, [signal("@ghost@k", "add", 1), call("@ghost@k", "get", rid="g")], target="@ghost@k"
    )
    [(msg, reason, kind)] = result.dead
    assert kind == "unknown_entity" and "no entity named 'ghost'" in reason and msg["op"] == "add"
    assert result.out[0]["failure"]["error_type"] == "EntityNotFoundError"
    assert rec.state is None


def test_unexpected_message_kind_is_dead_lettered() -> None:
    _, result = run(counter, [{"kind": "start", "target": "@counter@k"}])
    assert result.dead[0][2] == "bad_message"


# -- critical sections -----------------------------------------------------------------------------
def lock(target: str, rid: str, locks: list[str], pos: int, orch: str = "o1") -> dict[str, Any]:
    return {"kind": ev.MSG_LOCK, "target": target, "rid": rid, "orch": orch, "locks": locks, "pos": pos}


def unlock(target: str, rid: str, **extra: Any) -> dict[str, Any]:
    return {"kind": ev.MSG_UNLOCK, "target": target, "rid": rid, "orch": "o1", **extra}


def test_lock_request_travels_the_chain_and_the_last_answers() -> None:
    locks = ["@counter@a", "@counter@b"]
    rec_a, result = run(counter, [lock(locks[0], "cs1", locks, 0)], target=locks[0])
    assert rec_a.lock == ["cs1", "o1"]
    [forward] = result.out
    assert forward["target"] == "@counter@b" and forward["pos"] == 1 and forward["kind"] == ev.MSG_LOCK
    rec_b, result = run(counter, [forward], target=locks[1])
    assert rec_b.lock == ["cs1", "o1"]
    assert result.out == [{"kind": ev.MSG_ENTITY_RESPONSE, "target": "o1", "rid": "cs1"}]


def test_locked_entity_serves_only_the_holder_then_drains_its_queue_in_order() -> None:
    t = "@counter@k"
    rec, result = run(
        counter,
        [
            lock(t, "cs1", [t], 0),
            signal(t, "add", 1, id="x1"),
            lock(t, "cs2", [t], 0, orch="o2"),
            call(t, "add", 10, rid="c", cs="cs1"),
            signal(t, "add", 100, id="x2"),
        ],
    )
    assert decode(rec.state) == 10  # only the holder's (tagged) call applied
    assert [m.get("id") or m["kind"] for m in rec.queue] == ["x1", ev.MSG_LOCK, "x2"]
    assert all("_eid" not in m for m in rec.queue)
    rec, result = run(counter, [unlock(t, "cs1"), signal(t, "add", 1000, id="x3")], rec)
    # x1 applies, then cs2 takes the lock and x2, x3 wait again
    assert decode(rec.state) == 11 and rec.lock == ["cs2", "o2"]
    assert [m.get("id") for m in rec.queue] == ["x2", "x3"]
    assert result.out == [{"kind": ev.MSG_ENTITY_RESPONSE, "target": "o2", "rid": "cs2"}]
    rec, _ = run(counter, [unlock(t, "cs2")], rec)
    assert decode(rec.state) == 1111 and rec.lock is None and rec.queue == []


def test_chain_release_cancels_a_queued_request_or_follows_the_chain() -> None:
    locks = ["@counter@a", "@counter@b"]
    a = locks[0]
    rec, _ = run(counter, [lock(a, "other", [a], 0, orch="o9"), lock(a, "cs1", locks, 0)], target=a)
    assert rec.lock == ["other", "o9"] and rec.queue[0]["rid"] == "cs1"
    rec, result = run(counter, [unlock(a, "cs1", chain=True, locks=locks, pos=0)], rec, target=a)
    assert rec.queue == [] and result.out == []  # cancelled where it waited; nothing to forward
    rec, result = run(
        counter,
        [lock(a, "cs2", locks, 0), unlock(a, "cs2", chain=True, locks=locks, pos=0)],
        EntityRecord(),
        target=a,
    )
    assert rec.lock is None
    assert [(m["kind"], m["target"]) for m in result.out] == [
        (ev.MSG_LOCK, locks[1]),
        (ev.MSG_UNLOCK, locks[1]),
    ]


def test_stale_release_and_duplicate_lock_are_ignored() -> None:
    t = "@counter@k"
    sweep = {"kind": MSG_SWEEP, "target": t}
    rec, result = run(counter, [unlock(t, "nobody"), lock(t, "cs1", [t], 0), lock(t, "cs1", [t], 0), sweep])
    assert rec.lock == ["cs1", "o1"] and rec.queue == [] and len(result.out) == 1 and not result.dead


def test_held_locks_from_history() -> None:
    history = [
        {"k": ev.ENTITY_LOCK_REQUESTED, "rid": "a", "entities": ["@x@1", "@x@2"]},
        {"k": ev.ENTITY_RESPONDED, "rid": "a"},
        {"k": ev.ENTITY_UNLOCKED, "rid": "a", "entities": ["@x@1", "@x@2"]},
        {"k": ev.ENTITY_LOCK_REQUESTED, "rid": "b", "entities": ["@x@1"]},
        {"k": ev.ENTITY_RESPONDED, "rid": "b"},
        {"k": ev.ENTITY_LOCK_REQUESTED, "rid": "c", "entities": ["@x@3"]},
    ]
    assert held_locks(history) == [("b", ["@x@1"], True), ("c", ["@x@3"], False)]


# -- the orchestration side (through the replay executor) -------------------------------------------
def _executor(fn: Any) -> OrchestrationExecutor:
    return OrchestrationExecutor("orch-1", {"fn": fn}.get, name_of)


def _start(ts: int = NOW) -> list[dict[str, Any]]:
    return [
        {"k": ev.ORCHESTRATOR_STARTED, "ts": ts},
        {"k": ev.EXECUTION_STARTED, "name": "fn", "input": encode(None), "exec": "e1", "parent": None},
    ]


def transfer(ctx: Any, _: Any) -> Any:
    ctx.signal_entity("@audit@log", "note", input="start")
    lock = yield ctx.lock_entities(EntityId("account", "b"), "@account@a")
    with lock:
        left = yield ctx.call_entity("@account@a", "withdraw", input=5)
        yield ctx.call_entity("@account@b", "deposit", input=5)
    try:
        yield ctx.call_entity("@account@a", "withdraw", input=1000)
    except Exception as exc:
        return [left, str(exc)]
    return [left, None]


def _respond(rid: str, **extra: Any) -> dict[str, Any]:
    return {"k": ev.ENTITY_RESPONDED, "rid": rid, **extra}


def test_orchestration_entity_actions_and_replay() -> None:
    ex = _executor(transfer)
    r1 = ex.execute(_start())
    signal_action, lock_action = r1.actions
    assert signal_action["k"] == ev.ENTITY_SIGNALED and signal_action["entity"] == "@audit@log"
    assert lock_action["k"] == ev.ENTITY_LOCK_REQUESTED and lock_action["entities"] == [
        "@account@a",
        "@account@b",
    ]
    r2 = ex.execute([{"k": ev.ORCHESTRATOR_STARTED, "ts": NOW + 1}, _respond(lock_action["rid"])])
    [withdraw] = r2.actions
    assert withdraw["k"] == ev.ENTITY_CALLED and withdraw["cs"] == lock_action["rid"]
    r3 = ex.execute(
        [{"k": ev.ORCHESTRATOR_STARTED, "ts": NOW + 2}, _respond(withdraw["rid"], result=encode(5))]
    )
    [deposit] = r3.actions
    assert deposit["entity"] == "@account@b" and deposit["cs"] == lock_action["rid"]
    r4 = ex.execute(
        [{"k": ev.ORCHESTRATOR_STARTED, "ts": NOW + 3}, _respond(deposit["rid"], result=encode(None))]
    )
    unlocked, outside = r4.actions
    assert unlocked["k"] == ev.ENTITY_UNLOCKED and unlocked["rid"] == lock_action["rid"]
    assert outside["k"] == ev.ENTITY_CALLED and "cs" not in outside
    failure = {"message": "insufficient funds", "error_type": "ValueError", "stack_trace": None}
    r5 = ex.execute(
        [{"k": ev.ORCHESTRATOR_STARTED, "ts": NOW + 4}, _respond(outside["rid"], failure=failure)]
    )
    assert r5.status == OrchestrationStatus.COMPLETED
    assert decode(r5.output) == [5, "operation 'withdraw' on @account@a failed: insufficient funds"]
    assert held_locks(ex.history) == []
    # a fresh executor replays the recorded history without a non-determinism error
    replayed = _executor(transfer)
    replayed.replay(list(ex.history))
    assert replayed.is_done and replayed._replay_error is None


def test_critical_section_rules() -> None:
    def outsider(ctx: Any, _: Any) -> Any:
        lock = yield ctx.lock_entities("@account@a")
        with lock:
            yield ctx.call_entity("@account@z", "balance")

    ex = _executor(outsider)
    [lock_action] = ex.execute(_start()).actions
    result = ex.execute([{"k": ev.ORCHESTRATOR_STARTED, "ts": NOW + 1}, _respond(lock_action["rid"])])
    assert result.status == OrchestrationStatus.FAILED
    assert result.failure is not None and "may only call the locked entities" in result.failure.message
    assert [a["k"] for a in result.actions] == [ev.ENTITY_UNLOCKED]  # `with` released on the way out

    def nested(ctx: Any, _: Any) -> Any:
        yield ctx.lock_entities("@account@a")
        yield ctx.lock_entities("@account@b")

    ex = _executor(nested)
    [lock_action] = ex.execute(_start()).actions
    result = ex.execute([{"k": ev.ORCHESTRATOR_STARTED, "ts": NOW + 1}, _respond(lock_action["rid"])])
    assert result.failure is not None and "cannot be nested" in result.failure.message
    assert held_locks(ex.history) == [(lock_action["rid"], ["@account@a"], True)]  # released at the end

    def empty(ctx: Any, _: Any) -> Any:
        yield ctx.lock_entities()

    result = _executor(empty).execute(_start())
    assert result.failure is not None and "at least one entity" in result.failure.message


def test_unknown_responses_are_ignored() -> None:
    def waits(ctx: Any, _: Any) -> Any:
        return (yield ctx.call_entity("@counter@k", "get"))

    ex = _executor(waits)
    [action] = ex.execute(_start()).actions
    result = ex.execute(
        [{"k": ev.ORCHESTRATOR_STARTED, "ts": NOW + 1}, _respond("someone-else", result=encode(1))]
    )
    assert (
        result.status == OrchestrationStatus.RUNNING and result.new_events[-1]["k"] == ev.ORCHESTRATOR_STARTED
    )
    result = ex.execute(
        [{"k": ev.ORCHESTRATOR_STARTED, "ts": NOW + 2}, _respond(action["rid"], result=encode(7))]
    )
    assert decode(result.output) == 7


def test_recent_ids_are_searched_in_place_record_by_record() -> None:
    s = NOW // 1000
    rec = EntityRecord()
    # the second fingerprint's bytes straddle the first record's end: not a match
    rec.recent = [(s, b"ABCDEFGH"), (0x48494A4B, b"ZZZZZZZZ"), (s + 2, b"12345678")]
    ids = rec.recent_ids
    assert has_recent(ids, b"ABCDEFGH") and has_recent(ids, b"12345678") and has_recent(ids, b"ZZZZZZZZ")
    assert not has_recent(ids, b"EFGHHIJK") and not has_recent(ids, b"FGHHIJKZ")
    # expiry drops leading records only (the out-of-order old one goes with the one before it)
    assert recent_since(ids, s) == ids and recent_since(ids, s + 1) == ids[24:]
    assert recent_since(ids, s + 3) == b""


def test_duplicates_within_one_batch_and_against_stored_ids() -> None:
    rec = EntityRecord()
    rec.recent = [(NOW // 1000 - 10, fingerprint("old"))]
    msgs = [signal("@counter@k", "add", 1, id=i) for i in ("old", "a", "b", "a", "c", "b")]
    batch = EntityBatch(EntityId("counter", "k"), counter, rec, NOW, dedup_seconds=60)
    result = batch.run(msgs)
    assert result.duplicates == 3 and decode(rec.state) == 3
    assert [fp for _, fp in rec.recent] == [fingerprint(i) for i in ("old", "a", "b", "c")]
