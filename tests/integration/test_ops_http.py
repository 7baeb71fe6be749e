"""The ops HTTP server against a real worker on a real Redis, over real HTTP.

Each test starts a :class:`durable.Worker` and :func:`serve_ops` (port 0) in one anyio event
loop, runs a small workload and talks to the server with ``urllib`` (in a worker thread) or
raw sockets (for malformed requests).
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import math
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from durable import AsyncClient, OrchestrationStatus, Worker, WorkerConfig
from durable._ops.server import MAX_BODY_BYTES, serve_ops
from durable._runtime import metrics
from durable._runtime.runtime import Runtime

pytestmark = pytest.mark.anyio

PARTITIONS = 8
TOKEN = "s3cret-ops-token"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DURABLE_OPS_TOKEN", raising=False)


# -- the application under test -------------------------------------------------------------------
def greet(ctx: Any, name: str) -> str:
    return f"Hello {name}!"


def odd_values(ctx: Any, _: Any) -> dict[str, Any]:
    return {
        "when": _dt.datetime(2024, 5, 17, 12, 30, tzinfo=_dt.UTC),
        "blob": b"\x00\x01binary",
        "pair": (1, "two"),
        "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "ratio": math.inf,
    }


def greetings(ctx: Any, names: list[str]) -> Any:
    out = []
    for name in names:
        out.append((yield ctx.call_activity(greet, input=name)))
        ctx.set_custom_status({"done": len(out)})
    return out


def approval(ctx: Any, request: Any) -> Any:
    ctx.set_custom_status("waiting for approval")
    decision = yield ctx.wait_for_external_event("approve")
    return {"request": request, "decision": decision}


def exotic(ctx: Any, _: Any) -> Any:
    return (yield ctx.call_activity(odd_values))


def broken(ctx: Any, _: Any) -> Any:
    if False:  # a generator that fails on its first step
        yield None
    raise ValueError("boom: the order is invalid")


def counter(ctx: Any, value: Any) -> Any:
    if ctx.operation == "add":
        ctx.set_state(ctx.get_state(0) + value)
    return ctx.get_state(0)


def make_worker(redis_url: str, hub: str) -> Worker:
    worker = Worker(
        redis_url, hub, config=WorkerConfig(balance_interval_ms=100, poll_ms=200, partitions=PARTITIONS)
    )
    for orchestrator in (greetings, approval, exotic, broken):
        worker.add_orchestrator(orchestrator)
    for activity in (greet, odd_values):
        worker.add_activity(activity)
    worker.add_entity(counter)
    return worker


# -- HTTP helpers ----------------------------------------------------------------------------------
@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type", "").startswith("application/json"), self.headers
        return json.loads(self.body)


def _urllib(url: str, method: str, data: bytes | None, headers: dict[str, str]) -> Reply:
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=15) as resp:
            return Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Reply(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())


def _raw(port: int, data: bytes) -> Reply:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(lines[0].split(" ")[1]), headers, body)


@dataclass
class Ops:
    """A running ops server (and the worker behind it)."""

    port: int
    client: AsyncClient
    runtime: Runtime | None
    token: str | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
    ) -> Reply:
        all_headers = dict(headers or {})
        if auth and self.token:
            all_headers.setdefault("Authorization", f"Bearer {self.token}")
        if json_body is not None:
            data = json.dumps(json_body).encode()
        if method not in ("GET", "HEAD"):
            all_headers.setdefault("Content-Type", "application/json")  # writes must declare JSON
        url = f"http://127.0.0.1:{self.port}{path}"
        return await anyio.to_thread.run_sync(_urllib, url, method, data, all_headers)

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> Reply:
        return await self.request("POST", path, **kw)

    async def raw(self, data: bytes) -> Reply:
        return await anyio.to_thread.run_sync(_raw, self.port, data)


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float = 15.0, what: str = "") -> None:
    """Poll ``check`` (for conditions Redis announces no event for, e.g. lease acquisition)."""
    try:
        with anyio.fail_after(timeout):
            while not await check():
                await anyio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what or check.__name__}") from None


async def wait_status(
    client: AsyncClient, iid: str, status: OrchestrationStatus, timeout: float = 15
) -> None:
    """Wait (woken by the instance's status channel) until ``iid`` has ``status``."""
    await client._wait(iid, timeout, lambda s: s.runtime_status == status)


@asynccontextmanager
async def ops_stack(redis_url: str, hub: str, *, token: str | None = None) -> AsyncIterator[Ops]:
    """A worker plus an ops server on a free port; waits until /readyz says ready."""
    worker = make_worker(redis_url, hub)
    async with worker, AsyncClient(redis_url, hub) as client, anyio.create_task_group() as tg:
        runtime = worker._runtime
        assert runtime is not None
        port = await tg.start(serve_ops, runtime, client, "127.0.0.1", 0, token)
        ops = Ops(port, client, runtime, token)

        async def ready() -> bool:
            # ready once balancing ran; wait until this (only) worker also owns every partition
            return (await ops.get("/readyz")).status == 200 and len(runtime.owned_partitions()) == PARTITIONS

        await wait_until(ready, what="readiness")
        try:
            yield ops
        finally:
            tg.cancel_scope.cancel()


def scrape(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], metric: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == metric and want <= lab)


# -- tests -----------------------------------------------------------------------------------------
async def test_probes_and_metrics_after_workload(redis_url: str, hub: str) -> None:
    before = scrape(metrics.exposition().decode())
    async with ops_stack(redis_url, hub) as ops:
        health = await ops.get("/healthz")
        assert health.status == 200
        assert health.json()["status"] == "ok"
        assert health.json()["worker_id"] == ops.runtime.worker_id  # type: ignore[union-attr]
        ready = await ops.get("/readyz")
        assert ready.status == 200
        body = ready.json()
        assert body["status"] == "ready"
        assert body["checks"]["redis"] == "ok"
        assert body["checks"]["draining"] is False
        assert body["checks"]["partitions_owned"] == PARTITIONS

        head = await ops.request("HEAD", "/healthz")
        assert head.status == 200 and head.body == b""

        ids = []
        for n in range(4):
            reply = await ops.post("/v1/orchestrations/greetings", json_body=[f"n{n}", "x"])
            assert reply.status == 202
            ids.append(reply.json()["instance_id"])
        for iid in ids:
            state = await ops.client.wait_for_orchestration_completion(iid, timeout=20)
            assert state.runtime_status == OrchestrationStatus.COMPLETED

        reply = await ops.get("/metrics")
        assert reply.status == 200
        assert reply.headers["content-type"].startswith("text/plain")
        after = scrape(reply.body.decode())

        def moved(metric: str, **labels: str) -> float:
            return total(after, metric, **labels) - total(before, metric, **labels)

        assert moved("durable_orchestrations_started_total", name="greetings") >= 4
        assert moved("durable_orchestrations_finished_total", name="greetings", status="COMPLETED") >= 4
        assert moved("durable_activity_executions_total", name="greet", status="completed") >= 8
        assert moved("durable_lease_events_total", event="acquired") >= PARTITIONS
        assert total(after, "durable_partitions_owned") == PARTITIONS
        slots = ops.runtime.config.concurrency  # type: ignore[union-attr]
        assert (
            total(after, "durable_worker_slots", state="available")
            + total(after, "durable_worker_slots", state="used")
            == slots
        )
        # the owner publishes its partitions' backlog and timer gauges on every scrape
        backlog_labels = {
            dict(lab)["partition"] for (n, lab) in after if n == "durable_partition_backlog_messages"
        }
        assert {metrics.partition_label(p) for p in range(PARTITIONS)} <= backlog_labels

        # draining: not ready any more, but alive
        ops.runtime.request_stop()  # type: ignore[union-attr]
        reply = await ops.get("/readyz")
        assert reply.status == 503
        assert reply.json()["status"] == "not_ready"
        assert any("draining" in r for r in reply.json()["reasons"])
        reply = await ops.get("/healthz")  # alive while draining (unless already stopped)
        assert (reply.status, reply.json().get("draining")) == (200, True) or reply.json()["reasons"] == [
            "the worker has stopped"
        ]
        await ops.runtime.stopped.wait()  # type: ignore[union-attr]
        reply = await ops.get("/healthz")
        assert reply.status == 503
        assert reply.json()["reasons"] == ["the worker has stopped"]


async def test_orchestration_api(redis_url: str, hub: str) -> None:
    async with ops_stack(redis_url, hub) as ops:
        # start with an explicit id containing characters that need escaping
        special = "order/42 é?"
        quoted = quote(special, safe="")
        reply = await ops.post(
            f"/v1/orchestrations/greetings?instance_id={quoted}", json_body=["Ada", "Grace"]
        )
        assert reply.status == 202
        assert reply.json() == {"instance_id": special}
        assert reply.headers["location"] == f"/v1/orchestrations/{quoted}"
        await ops.client.wait_for_orchestration_completion(special, timeout=20)

        state = (await ops.get(f"/v1/orchestrations/{quoted}")).json()
        assert state["instance_id"] == special
        assert state["name"] == "greetings"
        assert state["runtime_status"] == "COMPLETED"
        assert state["input"] == ["Ada", "Grace"]
        assert state["output"] == ["Hello Ada!", "Hello Grace!"]
        assert state["custom_status"] == {"done": 2}
        assert state["failure_details"] is None
        created = _dt.datetime.fromisoformat(state["created_at"])
        updated = _dt.datetime.fromisoformat(state["last_updated_at"])
        assert created.tzinfo is not None and created <= updated
        assert set(state) >= {
            "instance_id", "name", "runtime_status", "input", "output", "custom_status",
            "failure_details", "created_at", "last_updated_at",
        }  # fmt: skip

        history = (await ops.get(f"/v1/orchestrations/{quoted}/history")).json()
        kinds = [e["kind"] for e in history]
        assert kinds[:2] == ["OrchestratorStarted", "ExecutionStarted"]
        assert kinds.count("TaskScheduled") == 2 and kinds.count("TaskCompleted") == 2
        assert kinds[-1] == "ExecutionCompleted"
        assert [e["event_id"] for e in history] == list(range(len(history)))
        assert all(_dt.datetime.fromisoformat(e["timestamp"]).tzinfo for e in history)
        scheduled = [e for e in history if e["kind"] == "TaskScheduled"]
        assert [e["name"] for e in scheduled] == ["greet", "greet"]
        assert [e["input"] for e in scheduled] == ["Ada", "Grace"]
        assert history[-1]["result"] == ["Hello Ada!", "Hello Grace!"]

        # values JSON cannot carry natively are converted
        iid = (await ops.post("/v1/orchestrations/exotic")).json()["instance_id"]
        await ops.client.wait_for_orchestration_completion(iid, timeout=20)
        out = (await ops.get(f"/v1/orchestrations/{iid}")).json()["output"]
        assert out == {
            "when": "2024-05-17T12:30:00+00:00",
            "blob": base64.b64encode(b"\x00\x01binary").decode(),
            "pair": [1, "two"],
            "id": "12345678-1234-5678-1234-567812345678",
            "ratio": "Infinity",
        }

        # failures carry their details
        iid = (await ops.post("/v1/orchestrations/broken", json_body={"order": 7})).json()["instance_id"]
        await ops.client.wait_for_orchestration_completion(iid, timeout=20)
        failed = (await ops.get(f"/v1/orchestrations/{iid}")).json()
        assert failed["runtime_status"] == "FAILED"
        assert failed["failure_details"]["error_type"] == "ValueError"
        assert "boom" in failed["failure_details"]["message"]
        assert "ValueError" in failed["failure_details"]["stack_trace"]

        # external events
        reply = await ops.post("/v1/orchestrations/approval?instance_id=appr-1", json_body={"amount": 10})
        assert reply.status == 202
        await ops.client.wait_for_orchestration_start("appr-1", timeout=20)
        running = (await ops.get("/v1/orchestrations/appr-1")).json()
        assert running["runtime_status"] == "RUNNING"
        reply = await ops.post("/v1/orchestrations/approval?instance_id=appr-1", json_body=None)
        assert reply.status == 409 and reply.json()["error"] == "already_exists"
        reply = await ops.post("/v1/orchestrations/appr-1/events/approve", json_body={"by": "ops"})
        assert reply.status == 202
        assert reply.json() == {"instance_id": "appr-1", "event": "approve"}
        done = await ops.client.wait_for_orchestration_completion("appr-1", timeout=20)
        assert done.output == {"request": {"amount": 10}, "decision": {"by": "ops"}}
        kinds = [e["kind"] for e in (await ops.get("/v1/orchestrations/appr-1/history")).json()]
        assert "EventRaised" in kinds

        # suspend, an event while suspended, resume
        await ops.post("/v1/orchestrations/approval?instance_id=appr-2", json_body=1)
        await ops.client.wait_for_orchestration_start("appr-2", timeout=20)
        reply = await ops.post("/v1/orchestrations/appr-2/suspend", json_body={"reason": "audit"})
        assert reply.status == 202
        await wait_status(ops.client, "appr-2", OrchestrationStatus.SUSPENDED)
        assert (await ops.get("/v1/orchestrations/appr-2")).json()["runtime_status"] == "SUSPENDED"
        assert (await ops.post("/v1/orchestrations/appr-2/events/approve", json_body=True)).status == 202
        assert (await ops.post("/v1/orchestrations/appr-2/resume", json_body="audit done")).status == 202
        done = await ops.client.wait_for_orchestration_completion("appr-2", timeout=20)
        assert done.output == {"request": 1, "decision": True}
        kinds = [e["kind"] for e in (await ops.get("/v1/orchestrations/appr-2/history")).json()]
        assert "ExecutionSuspended" in kinds and "ExecutionResumed" in kinds

        # terminate
        await ops.post("/v1/orchestrations/approval?instance_id=appr-3")
        await ops.client.wait_for_orchestration_start("appr-3", timeout=20)
        reply = await ops.post("/v1/orchestrations/appr-3/terminate", json_body={"why": "cancelled"})
        assert reply.status == 202
        done = await ops.client.wait_for_orchestration_completion("appr-3", timeout=20)
        assert done.runtime_status == OrchestrationStatus.TERMINATED
        terminated = (await ops.get("/v1/orchestrations/appr-3")).json()
        assert terminated["runtime_status"] == "TERMINATED"
        assert terminated["output"] == {"why": "cancelled"}

        # listing and filters
        await ops.post("/v1/orchestrations/approval?instance_id=appr-4")
        await ops.client.wait_for_orchestration_start("appr-4", timeout=20)
        everything = (await ops.get("/v1/orchestrations")).json()
        assert {s["instance_id"] for s in everything} >= {special, "appr-1", "appr-2", "appr-3", "appr-4"}
        created_order = [s["created_at"] for s in everything]
        assert created_order == sorted(created_order, reverse=True)
        completed = (await ops.get("/v1/orchestrations?status=COMPLETED")).json()
        assert completed and all(s["runtime_status"] == "COMPLETED" for s in completed)
        mixed = (await ops.get("/v1/orchestrations?status=failed,terminated")).json()
        assert {s["runtime_status"] for s in mixed} == {"FAILED", "TERMINATED"}
        running = (await ops.get("/v1/orchestrations?status=RUNNING&name=approval")).json()
        assert [s["instance_id"] for s in running] == ["appr-4"]
        named = (await ops.get("/v1/orchestrations?name=greetings")).json()
        assert [s["instance_id"] for s in named] == [special]
        assert len((await ops.get("/v1/orchestrations?limit=2")).json()) == 2

        # purge
        reply = await ops.request("DELETE", "/v1/orchestrations/appr-4")
        assert reply.status == 409 and reply.json()["error"] == "still_running"
        reply = await ops.request("DELETE", "/v1/orchestrations/appr-3")
        assert reply.status == 200 and reply.json() == {"instance_id": "appr-3", "purged": True}
        assert (await ops.get("/v1/orchestrations/appr-3")).status == 404
        assert (await ops.request("DELETE", "/v1/orchestrations/appr-3")).status == 404

        # unknown instances
        for method, path in [
            ("GET", "/v1/orchestrations/nope"),
            ("GET", "/v1/orchestrations/nope/history"),
            ("POST", "/v1/orchestrations/nope/events/approve"),
            ("POST", "/v1/orchestrations/nope/terminate"),
            ("POST", "/v1/orchestrations/nope/suspend"),
            ("POST", "/v1/orchestrations/nope/resume"),
            ("DELETE", "/v1/orchestrations/nope"),
        ]:
            reply = await ops.request(method, path)
            assert reply.status == 404, (method, path)
            assert reply.json()["error"] == "not_found"
            assert "nope" in reply.json()["detail"]


async def test_bad_requests(redis_url: str, hub: str) -> None:
    async with ops_stack(redis_url, hub) as ops:

        def error(reply: Reply, status: int, code: str | None = None) -> dict[str, Any]:
            assert reply.status == status, (reply.status, reply.body)
            body = reply.json()
            assert set(body) == {"error", "detail"} and body["detail"]
            if code is not None:
                assert body["error"] == code
            return body  # type: ignore[no-any-return]

        error(await ops.post("/v1/orchestrations/greetings", data=b"{not json"), 400, "invalid_json")
        error(await ops.post("/v1/orchestrations/greetings", data=b"\xff\xfe"), 400, "invalid_json")
        error(await ops.post("/v1/orchestrations/x/events/e", data=b"[1,"), 400, "invalid_json")
        error(await ops.post("/v1/orchestrations/x/suspend", json_body=[1]), 400, "invalid_body")
        # JSON numbers msgpack cannot carry
        error(await ops.post("/v1/orchestrations/greetings", json_body=2**70), 400, "invalid_payload")
        error(await ops.post("/v1/orchestrations/greetings?instance_id=%40bad"), 400, "invalid_request")
        error(await ops.get("/v1/orchestrations?status=DONE"), 400, "invalid_status")
        error(await ops.get("/v1/orchestrations?limit=0"), 400, "invalid_parameter")
        error(await ops.get("/v1/orchestrations?limit=ten"), 400, "invalid_parameter")
        error(await ops.get("/v1/orchestrations?created_from=yesterday"), 400, "invalid_parameter")
        error(await ops.get("/v1/scale?target_per_worker=0"), 400, "invalid_parameter")
        error(await ops.post("/v1/orchestrations/greetings?start_at=soon"), 400, "invalid_parameter")

        error(await ops.get("/nope"), 404, "not_found")
        error(await ops.get("/v1/orchestrations/x/unknown-action"), 404, "not_found")
        error(await ops.get("/v1/entities/a/b/c/d"), 404, "not_found")

        reply = await ops.request("PUT", "/v1/orchestrations/x")
        body = error(reply, 405, "method_not_allowed")
        assert set(reply.headers["allow"].split(", ")) == {"DELETE", "GET", "HEAD", "POST"}
        assert "PUT" in body["detail"]
        error(await ops.post("/metrics"), 405)
        error(await ops.get("/v1/orchestrations/x/terminate"), 405)
        error(await ops.request("DELETE", "/v1/orchestrations"), 405)

        # bodies over 2 MB: refused from the Content-Length, without reading the body ...
        head = (
            f"POST /v1/orchestrations/greetings HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/json\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n"
        ).encode()
        error(await ops.raw(head), 413, "payload_too_large")
        # ... and also when the client sends it all
        big = b'"' + b"x" * MAX_BODY_BYTES + b'"'
        error(await ops.post("/v1/orchestrations/greetings", data=big), 413, "payload_too_large")
        # just under the HTTP limit is accepted by HTTP but too big as a payload once encoded
        reply = await ops.post("/v1/orchestrations/greetings", data=b'"' + b"x" * (MAX_BODY_BYTES - 2) + b'"')
        error(reply, 413, "payload_too_large")

        error(await ops.raw(b"NOT A REQUEST\r\n\r\n"), 400, "bad_request")
        error(await ops.raw(b"GET relative HTTP/1.1\r\n\r\n"), 400, "bad_request")
        error(await ops.raw(b"GET / HTTP/1.1\r\nbroken header\r\n\r\n"), 400, "bad_request")
        error(
            await ops.raw(
                b"POST /v1/orchestrations/greetings HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
            411,
        )
        error(await ops.raw(b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n"), 431)

        # Expect: 100-continue is honoured
        reply = await ops.raw(
            b"POST /v1/orchestrations/greetings HTTP/1.1\r\nExpect: 100-continue\r\n"
            b"Content-Type: application/json\r\nContent-Length: 7\r\n\r\n"
            b'["Eve"]'
        )
        assert reply.status == 100  # the interim response comes first ...
        final = reply.body.partition(b"\r\n\r\n")[2]  # ... then the real one
        iid = json.loads(final)["instance_id"]
        state = await ops.client.wait_for_orchestration_completion(iid, timeout=20)
        assert state.output == ["Hello Eve!"]

        # the server survives all of that
        assert (await ops.get("/healthz")).status == 200


async def test_token(redis_url: str, hub: str) -> None:
    async with ops_stack(redis_url, hub, token=TOKEN) as ops:
        # probes and the static page stay open (the kubelet sends no token)
        for path in ("/healthz", "/readyz", "/"):
            assert (await ops.get(path, auth=False)).status == 200, path
        for method, path in [
            ("GET", "/metrics"),
            ("GET", "/v1/hub"),
            ("GET", "/v1/orchestrations"),
            ("POST", "/v1/orchestrations/greetings"),
            ("GET", "/v1/orchestrations/x"),
            ("DELETE", "/v1/orchestrations/x"),
            ("GET", "/v1/partitions"),
            ("GET", "/v1/workers"),
            ("GET", "/v1/scale"),
            ("GET", "/v1/entities"),
            ("GET", "/no-such-route"),
        ]:
            reply = await ops.request(method, path, auth=False)
            assert reply.status == 401, (method, path)
            assert reply.json()["error"] == "unauthorized"
            assert reply.headers["www-authenticate"].startswith("Bearer")
            wrong = await ops.request(method, path, auth=False, headers={"Authorization": "Bearer wrong"})
            assert wrong.status == 401
            basic = await ops.request(method, path, auth=False, headers={"Authorization": f"Basic {TOKEN}"})
            assert basic.status == 401
        assert (await ops.get("/metrics")).status == 200
        assert (await ops.get("/v1/orchestrations")).status == 200
        assert (await ops.get("/v1/hub")).json()["auth_required"] is True
        reply = await ops.post("/v1/orchestrations/greetings", json_body=["Tok"])
        assert reply.status == 202
        await ops.client.wait_for_orchestration_completion(reply.json()["instance_id"], timeout=20)
        assert (await ops.get("/nope")).status == 404
        # an unauthenticated upload is refused from its head, before the body is read
        big = b"x" * (1024 * 1024)
        reply = await ops.post("/v1/orchestrations/greetings", data=big, auth=False)
        assert reply.status == 401
        reply = await ops.raw(
            b"POST /v1/orchestrations/greetings HTTP/1.1\r\nExpect: 100-continue\r\n"
            b"Content-Length: 100\r\n\r\n"
        )
        assert reply.status == 401  # no "100 Continue" first


async def test_token_from_environment(redis_url: str, hub: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DURABLE_OPS_TOKEN", TOKEN)
    async with AsyncClient(redis_url, hub) as client, anyio.create_task_group() as tg:
        port = await tg.start(serve_ops, None, client, "127.0.0.1", 0)
        ops = Ops(port, client, None)
        assert (await ops.get("/v1/hub")).status == 401
        ops.token = TOKEN
        assert (await ops.get("/v1/hub")).status == 200
        tg.cancel_scope.cancel()


async def test_hub_views_partitions_workers_scale(redis_url: str, hub: str) -> None:
    async with ops_stack(redis_url, hub) as ops:
        runtime = ops.runtime
        assert runtime is not None

        async def heartbeat_lists_partitions() -> bool:
            rows = (await ops.get("/v1/workers")).json()
            return bool(rows) and rows[0]["partitions"] == list(range(PARTITIONS))

        await wait_until(heartbeat_lists_partitions)
        workers = (await ops.get("/v1/workers")).json()
        assert len(workers) == 1
        me = workers[0]
        assert me["worker_id"] == runtime.worker_id
        assert me["this_worker"] is True
        assert me["slots"] == runtime.config.concurrency
        assert me["slots_used"] == 0
        assert me["expires_in_ms"] > 0
        assert _dt.datetime.fromisoformat(me["expires_at"]).tzinfo is not None

        hub_info = (await ops.get("/v1/hub")).json()
        assert hub_info["hub"] == ops.client.hub
        assert hub_info["partitions"] == PARTITIONS
        assert hub_info["worker_id"] == runtime.worker_id

        iid = (await ops.post("/v1/orchestrations/greetings", json_body=["P"])).json()["instance_id"]
        await ops.client.wait_for_orchestration_completion(iid, timeout=20)
        parts = (await ops.get("/v1/partitions")).json()
        assert [p["partition"] for p in parts] == list(range(PARTITIONS))
        for p in parts:
            assert p["owner"] == runtime.worker_id
            assert p["owned_by_this_worker"] is True
            assert 0 < p["lease_ttl_ms"] <= runtime.config.lease_ttl_ms
            assert p["backlog"] == 0  # all processed
            assert p["inbox_length"] <= 1  # trimmed up to the last consumed entry
            assert p["timers"] == 0
        assert sum(p["instances"] for p in parts) == 1

        scale = (await ops.get("/v1/scale")).json()
        assert scale["partitions"] == PARTITIONS
        assert scale["live_workers"] == 1
        assert scale["recommended_workers"] == 1
        assert scale["total_backlog"] == 0


async def test_scale_from_backlog_without_a_worker(redis_url: str, hub: str) -> None:
    """An API-only server (no runtime) on a hub nobody works on: the backlog piles up."""
    async with AsyncClient(redis_url, hub) as client, anyio.create_task_group() as tg:
        port = await tg.start(serve_ops, None, client, "127.0.0.1", 0)
        ops = Ops(port, client, None)
        assert (await ops.get("/healthz")).json() == {"status": "ok", "worker": False}
        ready = await ops.get("/readyz")
        assert ready.status == 200 and ready.json()["checks"] == {"redis": "ok"}

        for n in range(5):
            assert (await ops.post("/v1/orchestrations/greetings", json_body=[str(n)])).status == 202
        soon = (_dt.datetime.now(_dt.UTC) + _dt.timedelta(seconds=10)).isoformat()
        later = (_dt.datetime.now(_dt.UTC) + _dt.timedelta(hours=1)).isoformat()
        for when in (soon, later):
            path = f"/v1/orchestrations/greetings?start_at={quote(when)}"
            assert (await ops.post(path, json_body=["timer"])).status == 202
        # three activity tasks nobody has picked up yet
        store = await client._get_store()
        await store.ensure_task_group()
        for _ in range(3):
            await store.redis.xadd(store.keys.tasks, {b"m": b"x"})

        parts = (await ops.get("/v1/partitions")).json()
        # five starts, plus the wake-up each scheduled start leaves for the partition's owner
        assert sum(p["backlog"] for p in parts) == 7
        assert sum(p["inbox_length"] for p in parts) == 7
        assert all(p["owner"] is None and p["lease_ttl_ms"] is None for p in parts)
        assert sum(p["timers"] for p in parts) == 2
        assert sum(p["timers_due_soon"] for p in parts) == 1
        busy = [p for p in parts if p["backlog"]]
        assert all(p["oldest_message_id"] and p["oldest_age_seconds"] >= 0 for p in busy)

        scale = (await ops.get("/v1/scale?target_per_worker=2")).json()
        assert scale["inbox_backlog"] == 7
        assert scale["activity_lag"] == 3
        assert scale["activity_pending"] == 0
        assert scale["timers_due_soon"] == 1
        assert scale["total_backlog"] == 11
        assert scale["target_per_worker"] == 2
        assert scale["recommended_workers"] == 6  # ceil(11 / 2)
        assert scale["live_workers"] == 0
        assert scale["partitions"] == len(parts)
        assert (await ops.get("/v1/scale?target_per_worker=1000")).json()["recommended_workers"] == 1
        assert (await ops.get("/v1/scale?target_per_worker=1")).json()["recommended_workers"] == 11
        assert (await ops.get("/v1/workers")).json() == []
        tg.cancel_scope.cancel()


async def test_entity_routes(redis_url: str, hub: str) -> None:
    async with ops_stack(redis_url, hub) as ops:
        assert (await ops.get("/v1/entities")).json() == []
        assert (await ops.get("/v1/hub")).json()["entities_supported"] is True

        for amount in (5, 7):
            reply = await ops.post("/v1/entities/counter/c1/add", json_body=amount)
            assert reply.status == 202
            body = reply.json()
            assert body["entity_id"] == "@counter@c1" and body["operation"] == "add"
            assert body["signal_id"]
        reply = await ops.post("/v1/entities/Counter/key%2Fwith%40chars/add", json_body=1)
        assert reply.status == 202 and reply.json()["entity_id"] == "@counter@key/with@chars"

        async def counted() -> bool:
            reply = await ops.get("/v1/entities/counter/c1")
            return reply.status == 200 and reply.json()["state"] == 12

        await wait_until(counted, what="the entity to apply both signals")  # no event announces it
        entity = (await ops.get("/v1/entities/COUNTER/c1")).json()  # names are case-insensitive
        assert entity["entity_id"] == "@counter@c1"
        assert (entity["name"], entity["key"], entity["state"]) == ("counter", "c1", 12)
        assert _dt.datetime.fromisoformat(entity["last_modified_at"]).tzinfo is not None

        async def both_listed() -> bool:
            return len((await ops.get("/v1/entities")).json()) == 2

        await wait_until(both_listed, what="both entities in the entity index")
        listed = (await ops.get("/v1/entities?name=counter")).json()
        assert {(e["name"], e["key"]) for e in listed} == {("counter", "c1"), ("counter", "key/with@chars")}
        assert all(_dt.datetime.fromisoformat(e["last_modified_at"]) for e in listed)
        assert (await ops.get("/v1/entities?name=other")).json() == []
        assert len((await ops.get("/v1/entities?limit=1")).json()) == 1

        reply = await ops.get("/v1/entities/counter/unknown-key")
        assert reply.status == 404 and reply.json()["error"] == "not_found"
        reply = await ops.post("/v1/entities/bad@name/k/add", json_body=1)
        assert reply.status == 400 and reply.json()["error"] == "invalid_entity_id"
        reply = await ops.post("/v1/entities/counter/c1/add", data=b"{")
        assert reply.status == 400 and reply.json()["error"] == "invalid_json"
        assert (await ops.get("/v1/entities/counter/c1/add")).status == 405
        assert (await ops.get("/v1/entities?limit=-1")).status == 400


class ClientWithoutEntities(AsyncClient):
    """A client from before entities existed: the entity routes answer 501."""

    signal_entity = None
    get_entity = None


async def test_entity_routes_without_client_support(redis_url: str, hub: str) -> None:
    async with ClientWithoutEntities(redis_url, hub) as client, anyio.create_task_group() as tg:
        port = await tg.start(serve_ops, None, client, "127.0.0.1", 0)
        ops = Ops(port, client, None)
        assert (await ops.get("/v1/hub")).json()["entities_supported"] is False
        for reply in (
            await ops.post("/v1/entities/counter/c1/add", json_body=5),
            await ops.get("/v1/entities/counter/c1"),
        ):
            assert reply.status == 501
            assert reply.json()["error"] == "not_implemented"
            assert "entities are not available" in reply.json()["detail"]
        assert (await ops.get("/v1/entities")).status == 200  # read straight from the entity index
        tg.cancel_scope.cancel()


async def test_readiness_without_redis_and_stuck_worker(redis_url: str) -> None:
    """/readyz fails when Redis is unreachable, /healthz does not care; a stale balance loop fails
    /healthz."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]  # nothing listens there once closed
    client = AsyncClient(f"redis://127.0.0.1:{dead_port}/0", "nowhere")
    stuck = SimpleNamespace(
        config=WorkerConfig(balance_interval_ms=100),
        last_balance=time.monotonic() - 60,
        draining=False,
        stopped=anyio.Event(),
        worker_id="stuck-worker",
        owned_partitions=lambda: [],
        activities=SimpleNamespace(slots_used=0),
    )
    async with client, anyio.create_task_group() as tg:
        port = await tg.start(serve_ops, stuck, client, "127.0.0.1", 0)
        ops = Ops(port, client, None)
        reply = await ops.get("/readyz")
        assert reply.status == 503
        body = reply.json()
        assert body["status"] == "not_ready"
        assert body["checks"]["redis"].startswith("unreachable")
        assert any("Redis" in r for r in body["reasons"])
        reply = await ops.get("/healthz")
        assert reply.status == 503
        assert "balance loop" in reply.json()["reasons"][0]
        stuck.last_balance = time.monotonic()
        assert (await ops.get("/healthz")).status == 200  # liveness never asks Redis
        reply = await ops.get("/v1/orchestrations")
        assert reply.status == 503 and reply.json()["error"] == "unavailable"
        assert (await ops.get("/metrics")).status == 200  # metrics render without Redis
        tg.cancel_scope.cancel()


async def test_dashboard_page_is_served(redis_url: str, hub: str) -> None:
    async with ops_stack(redis_url, hub) as ops:
        reply = await ops.get("/")
        assert reply.status == 200
        assert reply.headers["content-type"].startswith("text/html")
        assert "connect-src 'self'" in reply.headers["content-security-policy"]
        html = reply.body.decode()
        assert 'id="instances-table"' in html and 'id="history-timeline"' in html
        assert "http://" not in html and "https://" not in html  # self-contained, no CDN


async def test_lifecycle_routes(redis_url: str, hub: str) -> None:
    async with ops_stack(redis_url, hub) as ops:
        client = ops.client
        broken_id = (await ops.post("/v1/orchestrations/broken")).json()["instance_id"]
        done_id = (await ops.post("/v1/orchestrations/greetings", json_body=["Ada"])).json()["instance_id"]
        for iid in (broken_id, done_id):
            await client.wait_for_orchestration_completion(iid, timeout=20)

        # rewind: the broken code fails again by itself, but the rewind was applied
        reply = await ops.post(f"/v1/orchestrations/{broken_id}/rewind", json_body={"reason": "retry"})
        assert reply.status == 200 and reply.json()["applied"] is True
        history = (await ops.get(f"/v1/orchestrations/{broken_id}/history")).json()
        assert [e["kind"] for e in history].count("ExecutionRewound") == 1
        reply = await ops.post(f"/v1/orchestrations/{done_id}/rewind")
        assert reply.status == 409 and reply.json()["error"] == "cannot_rewind"
        assert (await ops.post("/v1/orchestrations/nope/rewind")).status == 404

        # restart: under the same id, and under a new one
        reply = await ops.post(f"/v1/orchestrations/{done_id}/restart")
        assert reply.status == 202 and reply.json() == {"instance_id": done_id, "restarted": done_id}
        again = await client.wait_for_orchestration_completion(done_id, timeout=20)
        assert again.output == ["Hello Ada!"]
        reply = await ops.post(f"/v1/orchestrations/{done_id}/restart?new_instance_id=true")
        new_id = reply.json()["instance_id"]
        assert reply.status == 202 and new_id != done_id and reply.headers["location"].endswith(new_id)
        assert (await client.wait_for_orchestration_completion(new_id, timeout=20)).input == ["Ada"]
        await ops.post("/v1/orchestrations/approval?instance_id=life-wait")
        await client.wait_for_orchestration_start("life-wait", timeout=20)
        assert (await ops.post("/v1/orchestrations/life-wait/restart")).status == 409
        assert (await ops.post("/v1/orchestrations/life-wait/restart?new_instance_id=maybe")).status == 400

        # terminate without its sub-orchestrations; purge by filter
        assert (await ops.post("/v1/orchestrations/life-wait/terminate?recursive=false")).status == 202
        await client.wait_for_orchestration_completion("life-wait", timeout=20)
        reply = await ops.post("/v1/orchestrations/purge", json_body={"status": ["RUNNING"]})
        assert reply.status == 400 and reply.json()["error"] == "invalid_status"
        reply = await ops.post("/v1/orchestrations/purge", json_body={"status": "nope"})
        assert reply.status == 400
        reply = await ops.post("/v1/orchestrations/purge", json_body={"created_to": "yesterday"})
        assert reply.status == 400 and reply.json()["error"] == "invalid_body"
        reply = await ops.post(
            "/v1/orchestrations/purge", json_body={"status": ["COMPLETED"], "name": "greetings"}
        )
        assert reply.status == 200 and reply.json() == {"purged": 2}
        assert (await ops.get(f"/v1/orchestrations/{done_id}")).status == 404
        reply = await ops.post("/v1/orchestrations/purge", json_body={})
        assert reply.status == 200 and reply.json() == {"purged": 2}  # the failed and the terminated one
        assert await client.get_orchestration_state(broken_id) is None
