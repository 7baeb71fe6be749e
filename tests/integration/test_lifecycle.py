"""The instance lifecycle against a real redis-server: recursive terminate and purge, retention,
purge by filter, rewind and restart."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from _redis import connect

from durable import (
    ActivityContext,
    Client,
    OrchestrationNotFoundError,
    OrchestrationStatus,
    TaskFailedError,
    Worker,
    WorkerConfig,
    when_any,
)
from durable._runtime import metrics
from durable._store.keys import HubKeys, partition_of

FAST = dict(balance_interval_ms=100, poll_ms=200, activity_visibility_ms=1500)
Status = OrchestrationStatus


@pytest.fixture(params=["direct", "outbox"])
def worker(request: pytest.FixtureRequest, redis_url: str, hub: str) -> Worker:
    """Both delivery paths: a tree's messages cross partitions inside the commit, or through the outbox."""
    config = WorkerConfig(direct_delivery=request.param == "direct", **FAST)  # type: ignore[arg-type]
    return Worker(redis_url, hub=hub, config=config)


@pytest.fixture
def client(redis_url: str, hub: str) -> Iterator[Client]:
    c = Client(redis_url, hub=hub)
    yield c
    c.close()


def _tree_ids(root: str) -> list[str]:
    """A root, its child and its grandchild, in three different partitions."""
    ids = [root]
    for level in ("child", "grand"):
        n = 0
        while partition_of(f"{root}-{level}{n}", 32) in {partition_of(i, 32) for i in ids}:
            n += 1
        ids.append(f"{root}-{level}{n}")
    return ids


def _register_tree(worker: Worker, leaf: Any) -> None:
    @worker.orchestrator
    def node(ctx: Any, ids: list[str]) -> Any:
        if len(ids) == 1:
            return (yield from leaf(ctx))
        below = yield ctx.call_sub_orchestrator(node, input=ids[1:], instance_id=ids[1])
        return [ctx.instance_id, below]


def test_terminating_a_parent_terminates_children_and_grandchildren(worker: Worker, client: Client) -> None:
    def wait_forever(ctx: Any) -> Any:
        return (yield ctx.wait_for_external_event("never"))

    _register_tree(worker, wait_forever)
    tree = _tree_ids(f"t-{uuid.uuid4().hex[:6]}")
    flat = _tree_ids(f"f-{uuid.uuid4().hex[:6]}")
    with worker:
        for ids in (tree, flat):
            client.schedule_new_orchestration("node", input=ids, instance_id=ids[0])
            client.wait_for_orchestration_start(ids[-1], timeout=20)  # the whole tree runs
        client.terminate_orchestration(tree[0], output="stop")
        states = [client.wait_for_orchestration_completion(i, timeout=20) for i in tree]
        assert [s.runtime_status for s in states] == [Status.TERMINATED] * 3
        assert {s.output for s in states} == {"stop"}

        client.terminate_orchestration(flat[0], recursive=False)
        assert (
            client.wait_for_orchestration_completion(flat[0], timeout=20).runtime_status == Status.TERMINATED
        )
        for iid in flat[1:]:  # nothing was sent to them
            assert client.get_orchestration_state(iid).runtime_status == Status.RUNNING  # type: ignore[union-attr]
        # terminating the finished parent again, recursively, still reaches its running children
        client.terminate_orchestration(flat[0])
        for iid in flat[1:]:
            assert (
                client.wait_for_orchestration_completion(iid, timeout=20).runtime_status == Status.TERMINATED
            )


def _hub_keys(redis_url: str, hub: str) -> list[str]:
    r = connect(redis_url)
    try:
        return [k.decode() for k in r.scan_iter(match=f"durable:{{{hub}:*", count=1000)]
    finally:
        r.close()


def _names(key: str, iid: str) -> bool:
    """Whether a key belongs to instance ``iid`` (``...:i:<id>``, ``...:b:<id>:<digest>``, ...)."""
    return key.endswith(f":{iid}") or f":{iid}:" in key


def _mentions(redis_url: str, hub: str, ids: list[str]) -> list[str]:
    """Every trace of ``ids`` in the hub: keys (SCAN), and members of the indexes and timer sets."""
    r = connect(redis_url)
    found: list[str] = []
    try:
        keys = HubKeys(hub)
        found += [k for k in _hub_keys(redis_url, hub) if any(_names(k, iid) for iid in ids)]
        for p in range(32):
            pk = keys.partition(p)
            zsets = (pk.instances, pk.finished, pk.timers)
            members = [(z, m.decode()) for z in zsets for m in r.zrange(z, 0, -1)]
            members += [(pk.timer_data, m.decode()) for m in r.hkeys(pk.timer_data)]
            found += [f"{z} {m}" for z, m in members if any(m == i or f"|{i}|" in m for i in ids)]
    finally:
        r.close()
    return found


def test_purging_a_parent_removes_every_key_of_the_tree(
    worker: Worker, client: Client, redis_url: str, hub: str
) -> None:
    def big_result_and_a_pending_timer(ctx: Any) -> Any:
        big = yield ctx.call_activity("blob", input=100_000)  # stored beside the history
        winner = yield when_any([ctx.call_activity("blob", input=1), ctx.create_timer(dt.timedelta(hours=1))])
        return [len(big), len(winner.get_result())]

    @worker.activity
    def blob(ctx: ActivityContext, size: int) -> str:
        return "x" * size

    _register_tree(worker, big_result_and_a_pending_timer)

    @worker.orchestrator
    def waits(ctx: Any, ids: list[str]) -> Any:
        if len(ids) == 1:
            return (yield ctx.wait_for_external_event("never"))
        return (yield ctx.call_sub_orchestrator(waits, input=ids[1:], instance_id=ids[1]))

    tree = _tree_ids(f"p-{uuid.uuid4().hex[:6]}")
    other = _tree_ids(f"o-{uuid.uuid4().hex[:6]}")
    with worker:
        for ids in (tree, other):
            client.schedule_new_orchestration("node", input=ids, instance_id=ids[0])
            state = client.wait_for_orchestration_completion(ids[0], timeout=20)
            assert state.output == [ids[0], [ids[1], [100_000, 1]]]
        assert any(f":b:{tree[2]}:" in k for k in _hub_keys(redis_url, hub))  # the large payload
        assert client.purge_orchestration(tree[0]) is True

        # a tree with a running grandchild is refused, and purged once terminated
        waiting = _tree_ids(f"w-{uuid.uuid4().hex[:6]}")
        client.schedule_new_orchestration("waits", input=waiting, instance_id=waiting[0])
        client.wait_for_orchestration_start(waiting[-1], timeout=20)
        with pytest.raises(ValueError, match="still running"):
            client.purge_orchestration(waiting[0])
        client.terminate_orchestration(waiting[0])
        for iid in waiting:
            client.wait_for_orchestration_completion(iid, timeout=20)
        assert client.purge_orchestration(waiting[0]) is True
    assert _mentions(redis_url, hub, tree + waiting) == []
    assert client.purge_orchestration(tree[0]) is False
    # the other tree is untouched; without recursive only the parent goes
    assert len([k for k in _hub_keys(redis_url, hub) if any(_names(k, i) for i in other)]) >= 6
    assert client.purge_orchestration(other[0], recursive=False) is True
    assert client.get_orchestration_state(other[0]) is None
    assert client.get_orchestration_state(other[1]) is not None


def _poll(cond: Any, timeout: float = 20) -> None:
    """Wait for a condition on durable state that no event announces."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _purged_metric(reason: str) -> float:
    return metrics.ORCHESTRATIONS_PURGED.labels(reason=reason)._value.get()  # type: ignore[no-any-return]


def test_retention_purges_old_terminal_instances_and_nothing_else(
    redis_url: str, hub: str, client: Client
) -> None:
    config = WorkerConfig(retention=dt.timedelta(seconds=1), **FAST)  # type: ignore[arg-type]
    worker = Worker(redis_url, hub=hub, config=config)

    @worker.orchestrator
    def outcome(ctx: Any, kind: str) -> Any:
        if kind == "wait":
            yield ctx.wait_for_external_event("go")
        if kind == "fail":
            raise RuntimeError("failed on purpose")
        return kind

    before = _purged_metric("retention")
    with worker:
        old = [client.schedule_new_orchestration(outcome, input=k) for k in ("done", "fail")]
        running = client.schedule_new_orchestration(outcome, input="wait")
        for iid in old:
            client.wait_for_orchestration_completion(iid, timeout=20)
        client.wait_for_orchestration_start(running, timeout=20)
        _poll(lambda: all(client.get_orchestration_state(i) is None for i in old))
        fresh = client.schedule_new_orchestration(outcome, input="done")
        assert client.wait_for_orchestration_completion(fresh, timeout=20).output == "done"
        assert client.get_orchestration_state(fresh) is not None  # finished less than a second ago
        assert client.get_orchestration_state(running).runtime_status == Status.RUNNING  # type: ignore[union-attr]
        client.raise_orchestration_event(running, "go")
        assert (
            client.wait_for_orchestration_completion(running, timeout=20).runtime_status == Status.COMPLETED
        )
    assert _purged_metric("retention") - before >= 2


def test_purge_orchestrations_by_status_and_age_returns_the_count(
    redis_url: str, hub: str, client: Client
) -> None:
    worker = Worker(redis_url, hub=hub, config=WorkerConfig(**FAST))  # type: ignore[arg-type]

    @worker.orchestrator
    def outcome(ctx: Any, kind: str) -> Any:
        if kind == "wait":
            yield ctx.wait_for_external_event("go")
        if kind == "fail":
            raise RuntimeError("failed on purpose")
        return kind

    def run(kinds: list[str]) -> list[str]:
        ids = [client.schedule_new_orchestration(outcome, input=k) for k in kinds]
        for iid, kind in zip(ids, kinds, strict=True):
            if kind != "wait":
                client.wait_for_orchestration_completion(iid, timeout=20)
        return ids

    before = _purged_metric("request")
    with worker:
        old_done = run(["done"] * 3)
        old_failed = run(["fail"])
        cutoff = max(client.get_orchestration_state(i).created_at for i in old_done + old_failed)  # type: ignore[union-attr]
        new_done = run(["done"] * 2)
        (running,) = run(["wait"])
        client.wait_for_orchestration_start(running, timeout=20)
        assert client.purge_orchestrations(status=Status.COMPLETED, created_to=cutoff, timeout=30) == 3
        assert [client.get_orchestration_state(i) for i in old_done] == [None] * 3
        assert all(client.get_orchestration_state(i) is not None for i in old_failed + new_done + [running])
        with pytest.raises(ValueError, match="terminal"):
            client.purge_orchestrations(status=Status.RUNNING)
        assert client.purge_orchestrations(status=["FAILED"], name="outcome", timeout=30) == 1
        assert client.purge_orchestrations(created_from=cutoff, timeout=30) == 2  # the new ones
        assert client.get_orchestration_state(running) is not None
        assert client.purge_orchestrations(timeout=30) == 0
    assert _purged_metric("request") - before == 6


class Ledger:
    """Which activities ran, and which ones fail for now (shared with the worker's threads)."""

    def __init__(self, broken: set[str]) -> None:
        self.broken = broken
        self.runs: dict[str, int] = {}
        self.lock = threading.Lock()

    def run(self, name: str) -> None:
        with self.lock:
            self.runs[name] = self.runs.get(name, 0) + 1
            if name in self.broken:
                raise ConnectionError(f"{name}: service down")


def test_rewind_reruns_only_the_failed_steps_and_completes(worker: Worker, client: Client) -> None:
    ledger = Ledger({"b", "child-b"})

    @worker.activity
    def step(ctx: ActivityContext, name: str) -> str:
        ledger.run(name)
        return f"{name} ok"

    @worker.orchestrator
    def child(ctx: Any, _: Any) -> Any:
        first = yield ctx.call_activity(step, input="child-a")
        return [first, (yield ctx.call_activity(step, input="child-b"))]

    @worker.orchestrator
    def parent(ctx: Any, _: Any) -> Any:
        a = yield ctx.call_activity(step, input="a")
        b = yield ctx.call_activity(step, input="b")
        c = yield ctx.call_sub_orchestrator(child, instance_id=f"{ctx.instance_id}-child")
        return [a, b, c]

    with worker:
        iid = client.schedule_new_orchestration(parent)
        assert client.wait_for_orchestration_completion(iid, timeout=20).runtime_status == Status.FAILED
        assert ledger.runs == {"a": 1, "b": 1}

        ledger.broken = {"child-b"}  # b works now: the rewound parent goes on, into a failing child
        client.rewind_orchestration(iid, reason="b is fixed")
        assert client.wait_for_orchestration_completion(iid, timeout=20).runtime_status == Status.FAILED
        assert ledger.runs == {"a": 1, "b": 2, "child-a": 1, "child-b": 1}
        failure = client.get_orchestration_state(iid).failure_details  # type: ignore[union-attr]
        assert failure is not None and failure.is_caused_by(ConnectionError)

        ledger.broken = set()  # the child's step works too: rewinding the parent rewinds the child
        client.rewind_orchestration(iid)
        state = client.wait_for_orchestration_completion(iid, timeout=20)
        assert state.runtime_status == Status.COMPLETED
        assert state.output == ["a ok", "b ok", ["child-a ok", "child-b ok"]]
        assert ledger.runs == {"a": 1, "b": 2, "child-a": 1, "child-b": 2}

        history = client.get_orchestration_history(iid)
        child_history = client.get_orchestration_history(f"{iid}-child")
        with pytest.raises(ValueError, match="only a FAILED"):
            client.rewind_orchestration(iid)
        with pytest.raises(OrchestrationNotFoundError):
            client.rewind_orchestration(f"{iid}-nobody")
    kinds = [e["k"] for e in history]
    assert (
        kinds.count("ExecutionRewound") == 2
        and "TaskFailed" not in kinds
        and "SubOrchestrationFailed" not in kinds
    )
    assert [e["eid"] for e in history] == list(range(len(history)))
    assert next(e["reason"] for e in history if e["k"] == "ExecutionRewound") == "b is fixed"
    assert [e["k"] for e in child_history].count("ExecutionRewound") == 1


def test_restart_runs_a_new_execution_with_the_same_input(worker: Worker, client: Client) -> None:
    runs: list[str] = []

    @worker.activity
    def note(ctx: ActivityContext, text: str) -> str:
        runs.append(text)
        return text.upper()

    @worker.orchestrator
    def greet(ctx: Any, name: str) -> Any:
        if name == "wait":
            yield ctx.wait_for_external_event("go")
        try:
            return (yield ctx.call_activity(note, input=name))
        except TaskFailedError:
            return None

    with worker:
        iid = client.schedule_new_orchestration(greet, input="ada")
        first = client.wait_for_orchestration_completion(iid, timeout=20)
        old_exec = client.get_orchestration_history(iid)[1]["exec"]

        assert client.restart_orchestration(iid) == iid
        again = client.wait_for_orchestration_completion(iid, timeout=20)
        history = client.get_orchestration_history(iid)

        other = client.restart_orchestration(iid, new_instance_id=True)
        copy = client.wait_for_orchestration_completion(other, timeout=20)

        waiting = client.schedule_new_orchestration(greet, input="wait")
        client.wait_for_orchestration_start(waiting, timeout=20)
        with pytest.raises(ValueError, match="finished"):
            client.restart_orchestration(waiting)
        with pytest.raises(OrchestrationNotFoundError):
            client.restart_orchestration(f"{iid}-nobody")
        client.terminate_orchestration(waiting)
    assert first.output == again.output == copy.output == "ADA"
    assert again.input == copy.input == "ada"
    assert other != iid and copy.name == "greet"
    assert history[1]["exec"] != old_exec  # a new execution replaced the old history
    assert [e["k"] for e in history].count("ExecutionStarted") == 1
    assert runs == ["ada", "ada", "ada"]


def test_purge_requests_walk_the_index_in_small_batches(
    redis_url: str, hub: str, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One partition, batches of 3: the cursor steps over kept instances (equal creation times
    included) and every match is purged exactly once."""
    from durable._runtime import purge

    monkeypatch.setattr(purge, "BATCH", 3)
    worker = Worker(redis_url, hub=hub, config=WorkerConfig(partitions=1, **FAST))  # type: ignore[arg-type]

    @worker.orchestrator
    def go(ctx: Any, _: Any) -> Any:
        return "done"
        yield  # pragma: no cover

    @worker.orchestrator
    def keep(ctx: Any, wait: bool) -> Any:
        if wait:
            yield ctx.wait_for_external_event("never")
        return "kept"

    with worker:
        ids = []
        for i in range(14):  # interleaved, several per millisecond
            ids.append(client.schedule_new_orchestration(keep if i % 3 == 0 else go, input=i % 2 == 0))
        for i, iid in enumerate(ids):
            if i % 3 == 0 and i % 2 == 0:
                client.wait_for_orchestration_start(iid, timeout=20)
            else:
                client.wait_for_orchestration_completion(iid, timeout=20)
        assert client.purge_orchestrations(name="go", timeout=30) == 9
        left = {s.instance_id for s in client.list_orchestrations(limit=100)}
        assert left == {iid for i, iid in enumerate(ids) if i % 3 == 0}
        assert client.purge_orchestrations(timeout=30) == 2  # the kept ones that completed
