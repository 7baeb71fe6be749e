"""Queries that scale: stable paging over 10,000 instances while new ones start, tag filters, paging
while instances finish, entity queries by key prefix and last-modified range, entity storage
clean-up; the same through the HTTP API and the CLI."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.request import Request, urlopen

import anyio
import pytest
from _poll import wait_until
from _redis import connect

from durable import AsyncClient, Client, Worker, WorkerConfig

REPO = Path(__file__).resolve().parents[2]
FAST = dict(poll_ms=50, balance_interval_ms=50, renew_interval_ms=200, lease_ttl_ms=3000)
LATER = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)  # scheduled starts: instances that cost no work


async def _start_many(client: AsyncClient, count: int, prefix: str, **kwargs: Any) -> list[str]:
    out: list[str] = []
    for start in range(0, count, 500):
        batch = [f"{prefix}-{i:05d}" for i in range(start, min(start + 500, count))]
        await asyncio.gather(
            *(
                client.schedule_new_orchestration("later", instance_id=i, start_at=LATER, **kwargs)
                for i in batch
            )
        )
        out.extend(batch)
    return out


def test_10000_instances_page_100_at_a_time_without_duplicates_or_gaps_while_new_ones_start(
    redis_url: str, hub: str
) -> None:
    async def main() -> None:
        async with AsyncClient(redis_url, hub) as client:
            existing = set(await _start_many(client, 10_000, "old"))
            seen: list[str] = []
            token: str | None = None
            pages = 0
            newer = 0
            while True:
                page = await client.list_orchestrations(limit=100, continuation_token=token)
                pages += 1
                assert len(page) == 100 or page.continuation_token is None
                seen.extend(s.instance_id for s in page)
                # new instances start while the walk goes on: they sort before it, never into it
                await client.schedule_new_orchestration("later", instance_id=f"new-{newer}", start_at=LATER)
                newer += 1
                token = page.continuation_token
                if token is None:
                    break
            assert len(seen) == len(set(seen)) == 10_000, "no duplicates"
            assert set(seen) == existing, "no gaps"
            assert pages in (100, 101)
            created = [s.created_at for s in await client.list_orchestrations(limit=1000)]
            assert created == sorted(created, reverse=True), "newest first"

    anyio.run(main)


def test_tag_status_name_and_time_filters(redis_url: str, hub: str) -> None:
    async def main() -> None:
        async with AsyncClient(redis_url, hub) as client:
            acme = await _start_many(client, 30, "acme", tags={"tenant": "acme", "region": "eu"})
            await _start_many(client, 20, "other", tags={"tenant": "other", "region": "eu"})
            us = await client.schedule_new_orchestration(
                "later", start_at=LATER, tags={"tenant": "acme", "region": "us"}
            )
            state = await client.get_orchestration_state(acme[0])
            assert state is not None and state.tags == {"region": "eu", "tenant": "acme"}

            async def ids(**filters: Any) -> set[str]:
                return {s.instance_id async for s in client.query_orchestrations(page_size=7, **filters)}

            assert await ids(tags={"tenant": "acme"}) == {*acme, us}
            assert await ids(tags={"tenant": "acme", "region": "eu"}) == set(acme)
            assert await ids(tags={"tenant": "acme"}, status="PENDING", name="later") == {*acme, us}
            assert await ids(tags={"tenant": "acme"}, status=["RUNNING", "COMPLETED"]) == set()
            assert await ids(tags={"tenant": "nobody"}) == set()
            assert len(await ids(name="later")) == 51
            first = await client.get_orchestration_state(acme[0])
            assert first is not None
            assert acme[0] in await ids(created_from=first.created_at, created_to=first.created_at)
            with pytest.raises(ValueError, match="continuation token"):
                await client.list_orchestrations(continuation_token="not-a-token")

    anyio.run(main)


def test_paging_is_stable_while_instances_finish(redis_url: str, hub: str) -> None:
    worker = Worker(redis_url, hub, config=WorkerConfig(**FAST))

    @worker.orchestrator
    def waiter(ctx: Any, n: int) -> Any:
        yield ctx.wait_for_external_event("go")
        return n

    with worker, Client(redis_url, hub) as client:
        iids = [
            client.schedule_new_orchestration(waiter, input=i, instance_id=f"w-{i:03d}") for i in range(120)
        ]
        for iid in iids:
            client.wait_for_orchestration_start(iid, timeout=30)
        all_seen: list[str] = []
        running_seen: list[str] = []
        finished: set[str] = set()
        tokens: dict[str, str | None] = {"all": None, "running": None}
        walking = {"all", "running"}
        for step in range(100):
            for walk in sorted(walking):
                filters: dict[str, Any] = {"name": "waiter"} if walk == "all" else {"status": "RUNNING"}
                page = client.list_orchestrations(**filters, limit=25, continuation_token=tokens[walk])
                (all_seen if walk == "all" else running_seen).extend(s.instance_id for s in page)
                tokens[walk] = page.continuation_token
                if page.continuation_token is None:
                    walking.discard(walk)
            for iid in iids[step * 10 : step * 10 + 10]:  # instances finish while the walks go on
                client.raise_orchestration_event(iid, "go")
                finished.add(iid)
            for iid in iids[step * 10 : step * 10 + 10]:
                client.wait_for_orchestration_completion(iid, timeout=30)
            if not walking:
                break
    assert sorted(all_seen) == sorted(iids), "finishing moves nothing in the creation order"
    assert len(running_seen) == len(set(running_seen)), "no duplicates"
    # every instance still running when the walk passed its position was seen
    assert set(iids) - finished <= set(running_seen)


def test_entity_queries_by_key_prefix_and_last_modified_and_clean_up(redis_url: str, hub: str) -> None:
    worker = Worker(redis_url, hub, config=WorkerConfig(**FAST))

    @worker.entity
    def counter(ctx: Any, amount: int) -> Any:
        if ctx.operation == "delete":
            ctx.delete_state()
        else:
            ctx.set_state(ctx.get_state(0) + amount)

    @worker.orchestrator
    def hold(ctx: Any, _: Any) -> Any:
        with (yield ctx.lock_entities("@counter@locked")):
            yield ctx.wait_for_external_event("release")

    with worker, Client(redis_url, hub) as client:
        for key in ("user-1", "user-2", "user-3", "team-1"):
            client.signal_entity(f"@counter@{key}", "add", input=1)
        client.signal_entity("@gauge@x", "add", input=1)  # unknown: dead-lettered, never stored
        wait_until(lambda: len(client.list_entities(name="counter")) == 4, 30, "four counters")
        # the range boundary: just after the last of those modifications (by the entities' own clock)
        cut = max(s.last_modified_at for s in client.list_entities(name="counter"))
        cut += dt.timedelta(milliseconds=1)
        time.sleep(0.01)  # so that the next modification falls on a later millisecond than ``cut``
        client.signal_entity("@counter@user-2", "add", input=1)
        wait_until(lambda: getattr(client.get_entity("@counter@user-2"), "state", 0) == 2, 30, "user-2 at 2")

        users = client.list_entities(name="counter", key_prefix="user-")
        assert [str(s.entity_id) for s in users] == ["@counter@user-1", "@counter@user-2", "@counter@user-3"]
        assert [s.state for s in users] == [1, 2, 1]
        bare = client.list_entities(name="COUNTER", key_prefix="user-", include_state=False)
        assert [s.state for s in bare] == [None, None, None]
        recent = client.list_entities(name="counter", last_modified_from=cut)
        assert [str(s.entity_id) for s in recent] == ["@counter@user-2"]
        older = client.list_entities(last_modified_to=cut)
        assert {str(s.entity_id) for s in older} == {"@counter@user-1", "@counter@user-3", "@counter@team-1"}
        paged = [str(s.entity_id) for s in client.query_entities(name="counter", page_size=2)]
        assert paged == ["@counter@team-1", "@counter@user-1", "@counter@user-2", "@counter@user-3"]

        # an emptied entity leaves its request ids behind; a purged orchestration leaves its lock
        client.signal_entity("@counter@team-1", "delete")
        wait_until(lambda: client.get_entity("@counter@team-1") is None, 30, "team-1 deleted")
        client.signal_entity("@counter@locked", "add", input=0)
        wait_until(lambda: client.get_entity("@counter@locked") is not None, 30, "the locked counter")
        holder = client.schedule_new_orchestration(hold, instance_id="holder")
        wait_until(
            lambda: getattr(client.get_entity("@counter@locked"), "locked_by", None) == holder, 30, "the lock"
        )
        r = connect(redis_url)
        tag = f"durable:{{{hub}:{_partition(r, hub, holder):02d}}}"
        r.delete(f"{tag}:i:{holder}", f"{tag}:h:{holder}")  # the instance vanished (purged by hand)
        client.signal_entity("@counter@locked", "add", input=5)  # waits behind the orphaned lock
        removed, released = client.clean_entity_storage()
        assert (removed, released) == (1, 1)
        # the queued signal runs once the lock is released
        wait_until(
            lambda: getattr(client.get_entity("@counter@locked"), "state", None) == 5, 30, "the release"
        )
        assert client.get_entity("@counter@locked").locked_by is None  # type: ignore[union-attr]
        assert not r.exists(
            f"durable:{{{hub}:{_partition(r, hub, '@counter@team-1'):02d}}}:ec:@counter@team-1"
        )
        assert client.clean_entity_storage() == (0, 0)


def _partition(r: Any, hub: str, target: str) -> int:
    import zlib

    return zlib.crc32(target.encode()) % int(r.hget(f"durable:{{{hub}}}:meta", "partitions"))


def _ops(url: str, hub: str) -> tuple[subprocess.Popen[bytes], str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, DURABLE_REDIS_URL=url, DURABLE_HUB=hub, PYTHONPATH=str(REPO), DURABLE_OPS_TOKEN="")
    proc = subprocess.Popen(
        [sys.executable, "-m", "durable", "serve", "--ops-port", str(port), "--ops-host", "127.0.0.1"],
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urlopen(f"{base}/healthz", timeout=2):
                break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.05)  # the server process is starting
    return proc, base


def _get(url: str) -> tuple[int, dict[str, str], Any]:
    try:
        with urlopen(Request(url), timeout=30) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except Exception as exc:  # urllib raises for 4xx
        code = getattr(exc, "code", None)
        if code is None:
            raise
        return code, dict(exc.headers), json.loads(exc.read())  # type: ignore[attr-defined]


def test_http_api_filters_paging_and_the_async_status_pattern(
    redis_url: str, hub: str, tmp_path: Path
) -> None:
    worker = Worker(redis_url, hub, config=WorkerConfig(**FAST))

    @worker.orchestrator
    def gate(ctx: Any, _: Any) -> Any:
        return (yield ctx.wait_for_external_event("open"))

    with worker, Client(redis_url, hub) as client:
        for i in range(5):
            client.schedule_new_orchestration(
                "later", instance_id=f"h-{i}", start_at=LATER, tags={"team": "a"}
            )
        client.schedule_new_orchestration("later", instance_id="h-b", start_at=LATER, tags={"team": "b"})
        iid = client.schedule_new_orchestration(gate, instance_id="gate-1")
        client.wait_for_orchestration_start(iid, timeout=30)
        proc, base = _ops(redis_url, hub)
        try:
            seen: list[str] = []
            url = f"{base}/v1/orchestrations?tag.team=a&limit=2"
            while True:
                status, headers, body = _get(url)
                assert status == 200
                seen.extend(s["instance_id"] for s in body)
                assert all(s["tags"] == {"team": "a"} for s in body)
                token = headers.get("X-Continuation-Token")
                if not token:
                    break
                url = f"{base}/v1/orchestrations?tag.team=a&limit=2&continuation_token={token}"
            assert sorted(seen) == [f"h-{i}" for i in range(5)]
            assert _get(f"{base}/v1/orchestrations?continuation_token=bad")[0] == 400

            status, headers, body = _get(f"{base}/v1/orchestrations/gate-1")
            assert status == 202 and headers["Retry-After"] == "1" and body["runtime_status"] == "RUNNING"
            status, _, body = _get(f"{base}/v1/orchestrations/gate-1?wait=0.2")
            assert status == 202  # did not end within the wait
            client.raise_orchestration_event(iid, "open", data="yes")
            status, _, body = _get(f"{base}/v1/orchestrations/gate-1?wait=30")
            assert status == 200 and body["runtime_status"] == "COMPLETED" and body["output"] == "yes"
            assert _get(f"{base}/v1/orchestrations/gate-1?wait=nope")[0] == 400

            client.signal_entity("@counter@k1", "x")  # no such entity registered: never stored
            status, headers, body = _get(f"{base}/v1/entities?name=counter&include_state=true")
            assert status == 200 and body == []
        finally:
            proc.kill()
            proc.wait(timeout=10)

    env = dict(os.environ, PYTHONPATH=str(REPO))
    cli = [sys.executable, "-m", "durable", "orchestration", "list", "--redis-url", redis_url, "--hub", hub]
    out = subprocess.run(
        [*cli, "--tag", "team=a", "--limit", "2", "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)) == 2 and "more: --continuation-token " in out.stderr
    token = out.stderr.split("more: --continuation-token ")[1].split()[0]
    out = subprocess.run(
        [*cli, "--tag", "team=a", "--limit", "2", "--continuation-token", token, "--all", "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)) == 3 and "more:" not in out.stderr


def test_reindex_builds_the_indexes_of_a_hub_written_before_them(redis_url: str, hub: str) -> None:
    worker = Worker(redis_url, hub, config=WorkerConfig(**FAST))

    @worker.entity
    def box(ctx: Any, value: int) -> None:
        ctx.set_state(value)

    with worker, Client(redis_url, hub) as client:
        for i in range(5):
            client.schedule_new_orchestration(
                "later", instance_id=f"old-{i}", start_at=LATER, tags={"t": "x"}
            )
        client.signal_entity("@box@b1", "put", input=1)
        wait_until(lambda: client.get_entity("@box@b1") is not None, 30, "the entity")
        r = connect(redis_url)
        for key in list(r.scan_iter(match=f"durable:{{{hub}:*}}:q:*", count=1000)):
            r.delete(key)  # as a hub written by a version without the query indexes
        assert client.list_orchestrations() == [] and client.list_entities(name="box") == []
        env = dict(os.environ, PYTHONPATH=str(REPO))
        cmd = [sys.executable, "-m", "durable", "reindex", "--redis-url", redis_url, "--hub", hub]
        out = subprocess.run([*cmd, "--output", "json"], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == {"instances": 5, "entities": 1, "entity_control_hashes": 1}
        assert sorted(s.instance_id for s in client.query_orchestrations(tags={"t": "x"})) == [
            f"old-{i}" for i in range(5)
        ]
        assert [str(s.entity_id) for s in client.list_entities(name="box")] == ["@box@b1"]
