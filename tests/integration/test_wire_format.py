"""The wire format (docs/wire-format.md): parsing rules, test vectors, non-Python producers, and
dead-lettering of malformed entries without blocking the partition."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _poll import wait_until
from _redis import connect

from durable import Client, EntityContext, OrchestrationStatus, Worker, WorkerConfig
from durable._core import events as ev
from durable._core.serialization import decode, encode
from durable._runtime.inbox import MAX_ENTRY_BYTES, MalformedMessage, parse_wire
from durable._runtime.metrics import REGISTRY
from durable._store.keys import HubKeys, partition_of

# the producers speak to one standalone Redis (a Cluster client would follow MOVED redirects)
pytestmark = pytest.mark.standalone_only

REPO = Path(__file__).resolve().parents[2]
WIRE = REPO / "tests" / "fixtures"
DOC = REPO / "docs" / "wire-format.md"


def entry(**fields: str | bytes) -> dict[bytes, bytes]:
    base: dict[str, str | bytes] = {
        "v": "1",
        "kind": "signal",
        "target": "@counter@k",
        "op": "add",
        "id": "i1",
    }
    base.update(fields)
    return {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in base.items() if v is not None}


# -- parsing -----------------------------------------------------------------------------------------
def test_parse_signal_event_and_start() -> None:
    msg = parse_wire(
        entry(
            target="@Counter@User-1",
            data='{"n": [1, 2.5, "x", null]}',
            at="1700000000000",
            traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
    )
    assert msg["kind"] == ev.MSG_SIGNAL and msg["target"] == "@counter@User-1"  # name lower-cased
    assert decode(msg["input"]) == {"n": [1, 2.5, "x", None]} and msg["at"] == 1_700_000_000_000
    assert msg["id"] == "i1" and msg["traceparent"].startswith("00-4bf9")
    assert parse_wire(entry(data=""))["input"] is None and parse_wire(entry())["input"] is None
    event = parse_wire(entry(kind="event", target="order-1", op="approved", data="true"))
    assert (event["kind"], event["target"], event["name"], decode(event["input"])) == (
        ev.MSG_EVENT,
        "order-1",
        "approved",
        True,
    )
    start = parse_wire(entry(kind="start", target="order-2", op="process", id="exec-9", data="[1]"))
    assert (start["kind"], start["name"], start["exec"], decode(start["input"])) == (
        ev.MSG_START,
        "process",
        "exec-9",
        [1],
    )
    packed = parse_wire(entry(enc="msgpack", data=encode({"a": 1})))
    assert decode(packed["input"]) == {"a": 1}
    assert parse_wire(entry(extra="ignored"))["op"] == "add"  # unknown fields are ignored


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"v": "2"}, "unsupported wire version '2'"),
        ({"v": None}, "missing required field 'v'"),
        ({"kind": "poke"}, "unknown kind 'poke'"),
        ({"target": None}, "missing required field 'target'"),
        ({"op": ""}, "missing required field 'op'"),
        ({"id": None}, "missing required field 'id'"),
        ({"id": "x" * 300}, "field 'id' is 300 characters"),
        ({"target": "counter@k"}, "kind 'signal' needs an entity target '@name@key'"),
        ({"target": "@counter@"}, "kind 'signal' needs an entity target '@name@key'"),
        ({"kind": "event", "target": "@counter@k"}, "needs an orchestration instance id"),
        ({"data": "{not json"}, "field 'data' is not valid JSON (enc=json)"),
        ({"data": "NaN"}, "field 'data' is not valid JSON (enc=json)"),
        ({"data": "[1e400]"}, "out of range for a number"),
        ({"data": "[" * 100_000 + "]" * 100_000}, "nested too deeply"),
        ({"enc": "xml"}, "unknown encoding 'xml'"),
        ({"enc": "msgpack", "data": b"\xc1"}, "not valid msgpack"),
        ({"at": "soon"}, "field 'at' must be an integer"),
        ({"kind": "event", "target": "o-1", "at": "1"}, "field 'at' is only supported for kind 'signal'"),
        ({"op": b"\xff\xfe"}, "field 'op' is not valid UTF-8"),
        ({"data": "1" * (MAX_ENTRY_BYTES + 1)}, f"the limit is {MAX_ENTRY_BYTES} bytes"),
    ],
)
def test_parse_rejects_with_a_precise_reason(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(MalformedMessage) as info:
        parse_wire(entry(**fields))
    assert reason in str(info.value)


def test_wrong_partition_is_rejected() -> None:
    target = "@counter@user-42"
    right = partition_of(target, 32)
    assert parse_wire(entry(target=target), partition=right, partitions=32)["target"] == target
    with pytest.raises(MalformedMessage, match=f"belongs to partition {right} "):
        parse_wire(entry(target=target), partition=(right + 1) % 32, partitions=32)


def _doc_vectors() -> dict[str, int]:
    rows = re.findall(r"^\| `([^`]+)` \| (\d+) \| (\d+) \|$", DOC.read_text(encoding="utf-8"), re.M)
    assert len(rows) >= 5, "docs/wire-format.md lists its test vectors as | `id` | crc32 | partition |"
    for target, crc, part in rows:
        assert zlib.crc32(target.encode()) == int(crc) and int(crc) % 32 == int(part), target
    return {target: int(part) for target, _, part in rows}


def test_documented_test_vectors() -> None:
    vectors = _doc_vectors()
    assert vectors["@counter@user-42"] == 29
    for target, part in vectors.items():
        assert partition_of(target, 32) == part


# -- end to end --------------------------------------------------------------------------------------
def counter(ctx: EntityContext, value: Any) -> Any:
    if ctx.operation == "add":
        ctx.set_state(ctx.get_state(0) + value)
    return ctx.get_state(0)


@pytest.fixture
def worker(redis_url: str, hub: str) -> Worker:
    w = Worker(redis_url, hub=hub, config=WorkerConfig(balance_interval_ms=100, poll_ms=200))
    w.add_entity(counter)

    @w.orchestrator
    def approval(ctx: Any, _: Any) -> Any:
        return (yield ctx.wait_for_external_event("approve"))

    @w.orchestrator
    def echo(ctx: Any, value: Any) -> Any:
        return {"echo": value}

    return w


@pytest.fixture
def client(redis_url: str, hub: str) -> Iterator[Client]:
    c = Client(redis_url, hub=hub)
    yield c
    c.close()


def _value(client: Client, entity_id: str) -> Any:
    state = client.get_entity(entity_id)
    return None if state is None else state.state


def _sh(redis_url: str, hub: str, *args: str) -> str:
    out = subprocess.run(
        ["bash", str(WIRE / "signal.sh"), redis_url, hub, *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.stdout.strip()


@pytest.mark.skipif(
    shutil.which("redis-cli") is None or shutil.which("gzip") is None, reason="needs redis-cli and gzip"
)
def test_redis_cli_producer(worker: Worker, client: Client, redis_url: str, hub: str) -> None:
    with worker:
        client.signal_entity("@counter@cli", "add", input=0)  # creates the hub metadata
        for i in range(5):
            _sh(redis_url, hub, "signal", "@counter@cli", "add", f"cli-{i}", "2")
        _sh(redis_url, hub, "signal", "@counter@cli", "add", "cli-0", "2")  # a retry: applied once
        _sh(redis_url, hub, "signal", "@COUNTER@cli", "add", "cli-upper", "5")  # lands elsewhere: rejected
        wait_until(lambda: _value(client, "@counter@cli") == 10, 20, "the redis-cli signals")
        iid = client.schedule_new_orchestration("approval")
        client.wait_for_orchestration_start(iid, timeout=20)
        _sh(redis_url, hub, "event", iid, "approve", "ev-1", '{"by": "redis-cli"}')
        done = client.wait_for_orchestration_completion(iid, timeout=20)
        assert done.output == {"by": "redis-cli"}
        _sh(redis_url, hub, "start", "started-by-cli", "echo", "exec-1", "[1, 2]")
        wait_until(lambda: client.get_orchestration_state("started-by-cli"), 20, "the started orchestration")
        started = client.wait_for_orchestration_completion("started-by-cli", timeout=20)
        assert started.runtime_status == OrchestrationStatus.COMPLETED and started.output == {"echo": [1, 2]}
    assert _value(client, "@counter@cli") == 10


def _node_ready() -> str | None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "needs node and npm"
    if not (WIRE / "node_modules" / "redis").is_dir():
        done = subprocess.run(
            [
                "npm",
                "install",
                "--prefix",
                str(WIRE),
                "--no-package-lock",
                "--no-audit",
                "--no-fund",
                "redis@4",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            return f"npm install failed: {done.stderr[-500:]}"
    return None


def test_nodejs_producer(worker: Worker, client: Client, redis_url: str, hub: str) -> None:
    problem = _node_ready()
    if problem:
        pytest.skip(problem)
    with worker:
        iid = client.schedule_new_orchestration("approval")
        client.wait_for_orchestration_start(iid, timeout=20)
        out = subprocess.run(
            [
                "node",
                str(WIRE / "producer.js"),
                redis_url,
                hub,
                "@counter@node",
                "add",
                "200",
                iid,
                "approve",
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        report = json.loads(out.stdout)
        done = client.wait_for_orchestration_completion(iid, timeout=20)
        wait_until(lambda: _value(client, "@counter@node") == 200, 30, "the Node.js signals")
    assert report["partitions"] == 32
    assert report["vectors"] == {t: p for t, p in _doc_vectors().items() if t in report["vectors"]}
    assert done.output == {"from": "node", "count": 200}
    assert _value(client, "@counter@node") == 200  # the retried send was applied once


def test_malformed_entries_are_dead_lettered_and_never_block(
    worker: Worker, client: Client, redis_url: str, hub: str
) -> None:
    target = "@counter@dlq"
    keys = HubKeys(hub)
    inbox = keys.partition(partition_of(target, 32)).inbox
    r = connect(redis_url)

    def metric(kind: str) -> float:
        return REGISTRY.get_sample_value("durable_redeliveries_total", {"kind": f"dead_letter_{kind}"}) or 0

    def dead_letters() -> list[tuple[bytes, dict[bytes, bytes]]]:
        return [e for i in range(32) for e in r.xrange(keys.partition(i).dlq)]

    good = {"v": "1", "kind": "signal", "target": target, "op": "add", "data": "1"}
    ghost = "@ghost@k"
    bad: list[tuple[dict[str, Any], str, str]] = [  # (fields, stream, reason)
        ({**good, "data": "{oops"}, inbox, "field 'data' is not valid JSON"),
        ({k: v for k, v in good.items() if k != "op"}, inbox, "missing required field 'op'"),
        ({**good, "data": "9" * (2 * 1024 * 1024 + 10)}, inbox, "the limit is 2097152 bytes"),
        ({**good, "v": "7"}, inbox, "unsupported wire version '7'"),
        ({**good, "target": "@counter@elsewhere"}, inbox, "belongs to partition 23 (crc32 % 32)"),
        (
            {**good, "target": ghost},
            keys.partition(partition_of(ghost, 32)).inbox,
            "no entity named 'ghost' is registered",
        ),
    ]
    assert partition_of("@counter@elsewhere", 32) != partition_of(target, 32)
    malformed, unknown = metric("malformed"), metric("unknown_entity")
    with worker:
        client.signal_entity(target, "add", input=0)
        wait_until(lambda: _value(client, target) == 0, 20, "the entity")
        for i, (fields, stream, _) in enumerate(bad):
            r.xadd(stream, {**fields, "id": f"bad-{i}"})
            r.xadd(inbox, {**good, "id": f"good-{i}"})  # each bad entry is followed by a good one
        wait_until(lambda: _value(client, target) == len(bad), 30, "the good entries")
        dead = wait_until(lambda: len(dead_letters()) >= len(bad) and dead_letters(), 20, "the dead letters")
    reasons = [f[b"dlq_reason"].decode() for _, f in dead]
    assert len(reasons) == len(bad)
    for _, _, reason in bad:
        assert any(reason in got for got in reasons), (reason, reasons)
    assert {f[b"id"] for _, f in dead} == {f"bad-{i}".encode() for i in range(len(bad))}  # fields kept
    assert all(f[b"dlq_source_id"] for _, f in dead)
    assert metric("malformed") >= malformed + len(bad) - 1 and metric("unknown_entity") >= unknown + 1
