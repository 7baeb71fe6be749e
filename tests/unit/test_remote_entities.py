"""The owner's side of SDK-run entities (pure): operations wait while a batch is out, a reply is
committed once and only for the outstanding token, locks and de-duplication stay the engine's."""

from __future__ import annotations

from typing import Any

from durable._core import events as ev
from durable._core.entities import EntityId, EntityRecord
from durable._core.model import FailureDetails
from durable._core.remote_entities import MSG_REMOTE_RESULT, RemoteEntityBatch
from durable._core.serialization import decode, encode

NOW = 1_700_000_000_000
TARGET = "@tally@k"


def run(rec: EntityRecord, msgs: list[dict[str, Any]]) -> RemoteEntityBatch:
    batch = RemoteEntityBatch(EntityId.parse(TARGET), None, rec, NOW)
    batch.run(msgs)
    return batch


def call(op: str, value: Any, rid: str, **extra: Any) -> dict[str, Any]:
    msg = {"kind": ev.MSG_CALL, "target": TARGET, "op": op, "input": encode(value), "rid": rid, "orch": "o1"}
    msg.update(extra)
    return msg


def signal(op: str, value: Any, **extra: Any) -> dict[str, Any]:
    msg = {"kind": ev.MSG_SIGNAL, "target": TARGET, "op": op, "input": encode(value)}
    msg.update(extra)
    return msg


def reply(token: str, **fields: Any) -> dict[str, Any]:
    return {"kind": MSG_REMOTE_RESULT, "target": TARGET, "token": token, **fields}


def test_one_batch_out_at_a_time_and_replies_commit_once() -> None:
    rec = EntityRecord()
    first = run(rec, [call("add", 1, "r1"), signal("add", 2, id="s1")])
    assert first.dispatched and rec.remote[1] == 2  # both operations in the work item
    second = run(rec, [signal("add", 3), signal("add", 4, id="s1")])  # the repeat of s1 is dropped
    assert second.dispatched is None and second.result.duplicates == 1
    assert [op["op"] for op in rec.remote[2]] == ["add", "add", "add"]

    assert run(rec, [reply("stale", results=[], state=encode(99))]).result.out == []  # ignored
    answer = reply(first.dispatched, results=[{"result": encode(1)}, {"result": None}], state=encode(3))
    done = run(rec, [answer])
    assert decode(rec.state) == 3
    assert done.result.out == [
        {"kind": ev.MSG_ENTITY_RESPONSE, "target": "o1", "rid": "r1", "result": encode(1)}
    ]
    assert done.dispatched and rec.remote[1] == 1  # the waiting operation goes out next
    again = run(rec, [answer])  # a repeated reply changes nothing
    assert again.result.out == [] and decode(rec.state) == 3 and again.dispatched is None


def test_failures_are_answered_and_a_failed_batch_keeps_nothing() -> None:
    rec = EntityRecord(state=encode(10))
    batch = run(rec, [call("fail", 0, "r1"), signal("add", 1)])
    boom = FailureDetails("boom", "ValueError").to_record()
    assert batch.dispatched is not None
    done = run(rec, [reply(batch.dispatched, failure=boom)])
    assert decode(rec.state) == 10 and done.result.failed == 2 and rec.remote == []
    assert done.result.out[0]["failure"]["message"] == "boom"

    batch = run(rec, [call("del", 0, "r2")])
    assert batch.dispatched is not None
    deleted = run(rec, [reply(batch.dispatched, results=[{"result": None}], state=None)])
    assert rec.state is None and deleted.result.deleted


def test_locks_are_the_engine_s_while_operations_run_remotely() -> None:
    rec = EntityRecord()
    lock = {"kind": ev.MSG_LOCK, "target": TARGET, "rid": "cs1", "orch": "o2", "locks": [TARGET], "pos": 0}
    batch = run(rec, [lock, signal("add", 1), call("add", 2, "r1", cs="cs1")])
    assert rec.lock == ["cs1", "o2"] and [m.get("op") for m in rec.queue] == ["add"]  # the outsider waits
    assert [op["rid"] for op in rec.remote[2]] == ["r1"]  # the holder's call goes out
    assert batch.result.out == [{"kind": ev.MSG_ENTITY_RESPONSE, "target": "o2", "rid": "cs1"}]
    start = {"kind": ev.MSG_START, "target": "child", "name": "flow", "input": None}
    assert batch.dispatched is not None
    done = run(
        rec, [reply(batch.dispatched, results=[{"result": encode(2)}], state=encode(2), actions=[start])]
    )
    started = next(m for m in done.result.out if m["kind"] == ev.MSG_START)
    assert started["created"] == NOW and started["exec"]
    unlocked = run(rec, [{"kind": ev.MSG_UNLOCK, "target": TARGET, "rid": "cs1", "orch": "o2"}])
    assert rec.lock is None and unlocked.dispatched and [op["op"] for op in rec.remote[2]] == ["add"]


class _Observer:
    def __init__(self) -> None:
        self.ran_ops: list[tuple[str, str, tuple[str, int], int, str | None]] = []

    def begin(self, entity_id: str, operation: str, msg: dict[str, Any]) -> str | None:
        raise AssertionError("a remote operation does not run here")

    def end(self, failure: FailureDetails | None) -> None:
        raise AssertionError("a remote operation does not run here")

    def ran(
        self,
        entity_id: str,
        operation: str,
        msg: dict[str, Any],
        item: tuple[str, int],
        started_ms: int,
        failure: FailureDetails | None,
    ) -> None:
        self.ran_ops.append((entity_id, operation, item, started_ms, failure and failure.message))


def test_the_observer_hears_each_operation_of_a_committed_reply_with_its_work_item() -> None:
    rec = EntityRecord()
    observer = _Observer()
    out = RemoteEntityBatch(EntityId.parse(TARGET), None, rec, NOW, observer=observer)
    out.run([call("add", 1, "r1"), signal("fail", 2)])
    token = out.dispatched
    assert token is not None and rec.remote[3] == NOW and observer.ran_ops == []  # handed out at NOW
    waiting = RemoteEntityBatch(EntityId.parse(TARGET), None, rec, NOW + 5, observer=observer)
    waiting.run([signal("add", 3)])  # waits behind the batch that is out: the hand-out time stays
    assert rec.remote[3] == NOW and observer.ran_ops == []

    results = [{"result": encode(1)}, {"failure": FailureDetails("no", "ValueError").to_record()}]
    done = RemoteEntityBatch(EntityId.parse(TARGET), None, rec, NOW + 9, observer=observer)
    done.run([reply("stale", results=results), reply(token, results=results, state=encode(1))])
    assert observer.ran_ops == [
        (TARGET, "add", (token, 0), NOW, None),
        (TARGET, "fail", (token, 1), NOW, "no"),
    ]
    assert done.dispatched is not None and rec.remote[3] == NOW + 9  # the next item, handed out now
