"""Automatic pipelining: concurrent calls share batches; errors reach the right caller."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from durable._store.autopipe import AutoPipeline


def test_concurrent_calls_share_a_batch_and_errors_stay_per_call() -> None:
    batches: list[list[bytes]] = []

    async def send(commands: list[bytes]) -> list[Any]:
        batches.append(commands)
        await asyncio.sleep(0)  # on the wire: later callers queue up for the next batch
        return [ValueError(c.decode()) if c.startswith(b"bad") else c.upper() for c in commands]

    async def scenario() -> list[Any]:
        pipe = AutoPipeline(send)
        calls = [pipe.call(b"a"), pipe.call(b"bad1"), pipe.call(b"b"), pipe.call(b"c")]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(scenario())
    assert results[0] == b"A" and results[2] == b"B" and results[3] == b"C"
    assert isinstance(results[1], ValueError) and str(results[1]) == "bad1"
    assert len(batches) == 1 and len(batches[0]) == 4


def test_a_failed_batch_fails_its_callers_and_the_next_batch_still_runs() -> None:
    attempts = 0

    async def send(commands: list[bytes]) -> list[Any]:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionError("connection lost")
        return list(commands)

    async def scenario() -> None:
        pipe = AutoPipeline(send)
        with pytest.raises(ConnectionError):
            await pipe.call(b"x")
        assert await pipe.call(b"y") == b"y"

    asyncio.run(scenario())
