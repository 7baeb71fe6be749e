"""The sample support agent of ``orchestrations.agent`` against a real Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from durable import Client, Worker, WorkerConfig
from durable.agents import ScriptedModel
from orchestrations import agent as sample


@pytest.fixture
def client(redis_url: str, hub: str) -> Iterator[Client]:
    w = sample.register(Worker(redis_url, hub, config=WorkerConfig(balance_interval_ms=100, poll_ms=200)))
    with w, Client(redis_url, hub) as c:
        yield c


def test_the_module_worker_is_lazy_and_has_the_agent() -> None:
    assert sample.worker._runtime is None
    assert "agent:support" in sample.worker.registry.orchestrators
    assert {"agent-tool:lookup_order", "agent-tool:refund"} <= set(sample.worker.registry.activities)
    assert isinstance(sample.support_agent.model, ScriptedModel)  # no model configured here
    assert sample.refund.requires_approval and not sample.lookup_order.requires_approval


def test_an_approved_refund(client: Client) -> None:
    lines: list[str] = []
    reply = sample.converse(client, "sample-yes", say=lines.append)
    assert [(c["name"], c["status"]) for c in reply.tool_calls] == [("lookup_order", "ok"), ("refund", "ok")]
    assert reply.tool_calls[1]["result"]["refunded"] == 249.0
    assert reply.tool_calls[1]["result"]["reference"].startswith("RF-")
    assert lines[0] == f"customer> {sample.QUESTION}"
    assert lines[1] == "supervisor approves refund({'order_id': '7', 'amount': 249.0})"
    assert lines[-1] == f"agent> {reply.text}"


def test_a_denied_refund(client: Client) -> None:
    reply = sample.converse(client, "sample-no", approve=False, say=lambda _: None)
    assert [(c["name"], c["status"], c["result"]) for c in reply.tool_calls][1] == (
        "refund",
        "denied",
        "denied",
    )
    history = sample.support_agent.history(client, "sample-no")
    assert [m["content"] for m in history if m["role"] == "tool"][1] == "denied: no"
