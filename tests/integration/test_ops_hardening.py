"""The ops HTTP server under hostile or careless clients, over real TCP against a real Redis.

* Connections that send nothing (or half a request head) must not starve the health probes, and
  are closed; one client address cannot hold every connection; probes never wait for a slot.
* Writes must declare JSON and must not come from a page of another site, token or not.
* Tokens that would turn authentication off, or that no request could match, are refused at
  start; running without a token is logged.
* JSON bodies with ``NaN`` or ``Infinity`` are refused, as the wire format refuses them.

The server and a worker run in the test's event loop; HTTP requests go through ``urllib`` in a
worker thread (each with a generous timeout: a probe that had to wait for a slot would miss it),
raw connections through anyio streams.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from durable import AsyncClient, OrchestrationStatus, Worker, WorkerConfig
from durable._ops.http import MAX_CONCURRENT_REQUESTS, MAX_CONNECTIONS_PER_CLIENT, InvalidTokenError
from durable._ops.server import serve_ops
from durable.cli import main

pytestmark = pytest.mark.anyio

REPO_ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4
TOKEN = "hardening-token"
#: generous bound on one request: far above what a probe needs, below the 15 s a probe queued
#: behind idle connections used to wait
REQUEST_TIMEOUT = 10.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DURABLE_OPS_TOKEN", raising=False)


def approval(ctx: Any, request: Any) -> Any:
    decision = yield ctx.wait_for_external_event("approve")
    return {"request": request, "decision": decision}


def counter(ctx: Any, value: Any) -> Any:
    if ctx.operation == "add":
        ctx.set_state(ctx.get_state(0) + value)
    return ctx.get_state(0)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _urllib(url: str, method: str, data: bytes | None, headers: dict[str, str]) -> Reply:
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as resp:
            return Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Reply(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())


@dataclass
class Ops:
    port: int
    client: AsyncClient
    token: str | None = None

    async def request(
        self, method: str, path: str, *, data: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Reply:
        """``method path``; no Content-Type unless ``headers`` has one (urllib adds none
        without a body, and form-encoded with one: set it explicitly)."""
        all_headers = dict(headers or {})
        if self.token:
            all_headers.setdefault("Authorization", f"Bearer {self.token}")
        url = f"http://127.0.0.1:{self.port}{path}"
        return await anyio.to_thread.run_sync(_urllib, url, method, data, all_headers)

    async def write(self, method: str, path: str, body: Any = None, **headers: str) -> Reply:
        """A write as a well-behaved client sends it: JSON, with its content type."""
        data = None if body is None else json.dumps(body).encode()
        return await self.request(
            method, path, data=data, headers={"Content-Type": "application/json", **headers}
        )


@asynccontextmanager
async def ops_stack(redis_url: str, hub: str, *, token: str | None = None) -> AsyncIterator[Ops]:
    """A worker plus its ops server on a free port of 127.0.0.1, ready."""
    worker = Worker(
        redis_url, hub, config=WorkerConfig(balance_interval_ms=100, poll_ms=200, partitions=PARTITIONS)
    )
    worker.add_orchestrator(approval)
    worker.add_entity(counter)
    async with worker, AsyncClient(redis_url, hub) as client, anyio.create_task_group() as tg:
        port = await tg.start(serve_ops, worker._runtime, client, "127.0.0.1", 0, token)
        ops = Ops(port, client, token)
        with anyio.fail_after(15):
            while (await ops.request("GET", "/readyz")).status != 200:
                await anyio.sleep(0.05)  # balancing has no event to wait for
        try:
            yield ops
        finally:
            tg.cancel_scope.cancel()


async def connect(port: int, source: str = "127.0.0.1") -> anyio.abc.SocketStream:
    """A TCP connection to the server from ``source`` (any 127.0.0.0/8 address on Linux)."""
    return await anyio.connect_tcp("127.0.0.1", port, local_host=source)


async def until_closed(stream: anyio.abc.SocketStream) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    try:
        while True:
            data += await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
        return data
    finally:
        await stream.aclose()


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


async def running(client: AsyncClient, iid: str) -> None:
    await client._wait(iid, 15, lambda s: s.runtime_status == OrchestrationStatus.RUNNING)


# -- 8: connections that hold nothing must not starve the probes -----------------------------------
async def test_idle_connections_and_partial_heads_do_not_starve_health_probes(
    redis_url: str, hub: str
) -> None:
    async with ops_stack(redis_url, hub) as ops:
        # more idle connections than there are request slots, and some half-sent request heads
        idle = [await connect(ops.port) for _ in range(MAX_CONCURRENT_REQUESTS + 16)]
        partial = []
        for _ in range(8):
            stream = await connect(ops.port)
            await stream.send(b"GET /v1/hub HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            partial.append(stream)

        # the probes (from the same address) still answer, within a generous request timeout
        health = await ops.request("GET", "/healthz")
        assert health.status == 200 and health.json()["status"] == "ok"
        ready = await ops.request("GET", "/readyz")
        assert ready.status == 200 and ready.json()["status"] == "ready"

        # and the server closes every one of those connections: the oldest at once, without an
        # answer, to make room for newer ones of the same address; the rest with 408 once their
        # head is overdue
        with anyio.fail_after(60):
            outcomes = [await until_closed(stream) for stream in idle + partial]
        answered = [raw for raw in outcomes if raw]
        assert all(status_of(raw) == 408 for raw in answered), {raw[:40] for raw in answered}
        assert len(answered) <= MAX_CONNECTIONS_PER_CLIENT
        assert len(outcomes) - len(answered) >= len(outcomes) - MAX_CONNECTIONS_PER_CLIENT
        # the server is fine afterwards
        assert (await ops.request("GET", "/v1/hub")).status == 200


async def _upload_in_progress(port: int, source: str) -> anyio.abc.SocketStream:
    """A connection whose request holds a slot: its head was accepted (the server invited the
    body with 100 Continue) but the body never comes."""
    stream = await connect(port, source)
    await stream.send(
        b"POST /v1/orchestrations/approval HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 100\r\n\r\n"
    )
    interim = await stream.receive()
    assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
    return stream


async def test_probes_never_wait_for_a_slot_and_one_address_cannot_take_every_connection(
    redis_url: str, hub: str
) -> None:
    async with ops_stack(redis_url, hub) as ops:
        # two addresses take every request slot with uploads that never finish
        per_source = MAX_CONCURRENT_REQUESTS // 2
        assert per_source <= MAX_CONNECTIONS_PER_CLIENT
        uploads = [
            await _upload_in_progress(ops.port, source)
            for source in ("127.0.0.2", "127.0.0.3")
            for _ in range(per_source)
        ]
        # health probes take no slot: they answer at once
        assert (await ops.request("GET", "/healthz")).status == 200
        assert (await ops.request("GET", "/readyz")).status == 200
        # an address with its fill of open connections that all sent their head is refused
        for _ in range(MAX_CONNECTIONS_PER_CLIENT - per_source):
            uploads.append(await _upload_in_progress(ops.port, "127.0.0.2"))
        with anyio.fail_after(REQUEST_TIMEOUT):
            refused = await until_closed(await connect(ops.port, "127.0.0.2"))
        assert status_of(refused) == 503
        assert json.loads(refused.partition(b"\r\n\r\n")[2])["error"] == "too_many_connections"
        # the uploads end; their slots serve other requests again
        for stream in uploads:
            await stream.aclose()
        reply = await ops.request("GET", "/v1/hub")
        assert reply.status == 200 and reply.json()["hub"] == hub


# -- 9: writes a web page could send ----------------------------------------------------------------
async def test_writes_must_declare_json(redis_url: str, hub: str) -> None:
    async with ops_stack(redis_url, hub) as ops:
        iid = await ops.client.schedule_new_orchestration("approval", input="order-1")
        await running(ops.client, iid)
        path = f"/v1/orchestrations/{iid}"
        for content_type in (
            None,
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonp",
        ):
            headers = {"Content-Type": content_type} if content_type else {}
            for method, target, data in (
                ("POST", f"{path}/terminate", b'"stop"'),
                ("POST", f"{path}/terminate", None),
                ("POST", f"{path}/events/approve", b"true"),
                ("DELETE", path, None),
                ("POST", "/v1/orchestrations/approval?instance_id=form-started", b'"x"'),
                ("POST", "/v1/entities/counter/c1/add", b"1"),
            ):
                reply = await ops.request(method, target, data=data, headers=headers)
                assert reply.status == 415, (method, target, content_type, reply.body)
                assert reply.json()["error"] == "unsupported_media_type"
        # none of it happened
        state = await ops.client.get_orchestration_state(iid)
        assert state is not None and state.runtime_status == OrchestrationStatus.RUNNING
        assert await ops.client.get_orchestration_state("form-started") is None
        # JSON (with parameters) is accepted
        reply = await ops.write(
            "POST", f"{path}/terminate", "stop", **{"Content-Type": "Application/JSON; charset=utf-8"}
        )
        assert reply.status == 202
        done = await ops.client.wait_for_orchestration_completion(iid, timeout=15)
        assert done.runtime_status == OrchestrationStatus.TERMINATED
        assert (await ops.write("DELETE", path)).status == 200


async def test_cross_site_writes_are_refused(redis_url: str, hub: str) -> None:
    async with ops_stack(redis_url, hub) as ops:
        iid = await ops.client.schedule_new_orchestration("approval", input="order-2")
        await running(ops.client, iid)
        path = f"/v1/orchestrations/{iid}"
        for headers in (
            {"Origin": "http://evil.example"},
            {"Origin": "null"},
            {"Origin": f"http://127.0.0.1:{ops.port + 1}"},
            {"Origin": f"http://localhost:{ops.port}"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Origin": f"http://127.0.0.1:{ops.port}", "Sec-Fetch-Site": "cross-site"},
        ):
            for method, target in (("POST", f"{path}/terminate"), ("DELETE", path)):
                reply = await ops.write(method, target, **headers)
                assert reply.status == 403, (method, headers, reply.body)
                assert reply.json()["error"] == "cross_site"
        state = await ops.client.get_orchestration_state(iid)
        assert state is not None and state.runtime_status == OrchestrationStatus.RUNNING
        # reads change nothing: another origin may send them (the browser keeps the answer from it)
        reply = await ops.request("GET", path, headers={"Origin": "http://evil.example"})
        assert reply.status == 202  # answered (not refused): the instance has not finished yet
        # the dashboard's own requests: same origin
        same = {"Origin": f"http://127.0.0.1:{ops.port}", "Sec-Fetch-Site": "same-origin"}
        reply = await ops.write("POST", f"{path}/events/approve", True, **same)
        assert reply.status == 202
        done = await ops.client.wait_for_orchestration_completion(iid, timeout=15)
        assert done.output == {"request": "order-2", "decision": True}


async def test_cross_site_writes_are_refused_with_a_token_too(redis_url: str, hub: str) -> None:
    async with ops_stack(redis_url, hub, token=TOKEN) as ops:
        reply = await ops.write("POST", "/v1/orchestrations/approval", "x", Origin="http://evil.example")
        assert reply.status == 403
        reply = await ops.request("POST", "/v1/orchestrations/approval", data=b'"x"')
        assert reply.status == 415
        assert (await ops.write("POST", "/v1/orchestrations/approval", "x")).status == 202


async def test_running_without_a_token_is_logged(
    redis_url: str, hub: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="durable.ops")
    for token in (None, TOKEN):
        caplog.clear()
        async with AsyncClient(redis_url, hub) as client, anyio.create_task_group() as tg:
            port = await tg.start(serve_ops, None, client, "127.0.0.1", 0, token)
            tg.cancel_scope.cancel()
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        if token is None:
            assert any(f"127.0.0.1:{port} runs without a token" in w for w in warnings), warnings
            assert any("DURABLE_OPS_TOKEN" in w for w in warnings)
        else:
            assert not any("without a token" in w for w in warnings), warnings


@pytest.mark.parametrize("bad", ["   ", " \t ", "pässwörd", "tok\x07en", "new\nline"])
async def test_tokens_no_request_could_match_are_refused_at_start(
    redis_url: str, hub: str, bad: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with AsyncClient(redis_url, hub) as client:
        with pytest.raises(InvalidTokenError):
            await serve_ops(None, client, "127.0.0.1", 0, bad)
        monkeypatch.setenv("DURABLE_OPS_TOKEN", bad)
        with pytest.raises(InvalidTokenError):
            await serve_ops(None, client, "127.0.0.1", 0)


async def test_surrounding_whitespace_of_a_token_is_dropped(
    redis_url: str, hub: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DURABLE_OPS_TOKEN", f"  {TOKEN}\n")
    async with AsyncClient(redis_url, hub) as client, anyio.create_task_group() as tg:
        port = await tg.start(serve_ops, None, client, "127.0.0.1", 0)
        assert (await Ops(port, client).request("GET", "/v1/hub")).status == 401
        assert (await Ops(port, client, TOKEN).request("GET", "/v1/hub")).status == 200
        tg.cancel_scope.cancel()


@pytest.mark.parametrize(("token", "why"), [("   ", "only whitespace"), ("pässwörd", "not printable ASCII")])
def test_worker_and_serve_exit_2_on_a_bad_token(
    token: str, why: str, redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DURABLE_OPS_TOKEN", token)
    for argv in (
        ["serve", "--redis-url", redis_url, "--ops-port", "0"],
        ["worker", "orchestrations.patterns:worker", "--redis-url", redis_url, "--ops-port", "9464"],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"durable {argv[0]}: error: invalid $DURABLE_OPS_TOKEN" in err
        assert why in err
    # as a real process too
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_")}
    env["DURABLE_OPS_TOKEN"] = token
    result = subprocess.run(
        [sys.executable, "-m", "durable", "serve", "--redis-url", redis_url, "--ops-port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO_ROOT,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert why in result.stderr


# -- 10: strict JSON --------------------------------------------------------------------------------
async def test_nan_and_infinity_are_refused(redis_url: str, hub: str) -> None:
    async with ops_stack(redis_url, hub) as ops:
        iid = await ops.client.schedule_new_orchestration("approval", input="order-3")
        await running(ops.client, iid)
        bodies = [b"NaN", b"Infinity", b"-Infinity", b'{"x": NaN}', b"[1, Infinity]", b"1e400", b"[[-1e999]]"]
        for n, body in enumerate(bodies):
            for target in (
                f"/v1/orchestrations/approval?instance_id=nan-{n}",
                f"/v1/orchestrations/{iid}/events/approve",
                f"/v1/orchestrations/{iid}/terminate",
                "/v1/entities/counter/c1/add",
            ):
                reply = await ops.request(
                    "POST", target, data=body, headers={"Content-Type": "application/json"}
                )
                assert reply.status == 400, (target, body, reply.body)
                error = reply.json()
                assert error["error"] == "invalid_json"
                assert "NaN and Infinity are not allowed" in error["detail"]
            assert await ops.client.get_orchestration_state(f"nan-{n}") is None
        state = await ops.client.get_orchestration_state(iid)
        assert state is not None and state.runtime_status == OrchestrationStatus.RUNNING
        # large but finite numbers are fine
        reply = await ops.write("POST", f"/v1/orchestrations/{iid}/events/approve", 1e300)
        assert reply.status == 202
        done = await ops.client.wait_for_orchestration_completion(iid, timeout=15)
        assert done.output == {"request": "order-3", "decision": 1e300}
