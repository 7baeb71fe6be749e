"""OpenAIChatModel against a local fake server that speaks the chat-completions API (loopback only)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from durable import Client, TaskFailedError, Worker, WorkerConfig
from durable._runtime.metrics import REGISTRY
from durable.agents import Agent, ModelError, OpenAIChatModel, tool

TIMEOUT = 30


class FakeOpenAI:
    """A chat-completions server on 127.0.0.1 that answers from a script and records requests."""

    def __init__(self) -> None:
        self.replies: list[tuple[int, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with fake.lock:
                    fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    status, payload = (
                        fake.replies.pop(0) if fake.replies else (500, {"error": "no reply left"})
                    )
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def reply(self, status: int, payload: Any) -> None:
        self.replies.append((status, payload))

    def answer(self, text: str) -> None:
        self.reply(200, completion({"role": "assistant", "content": text}))


def completion(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "fake-model",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def client(redis_url: str, hub: str) -> Iterator[Client]:
    with Client(redis_url, hub) as c:
        yield c


@tool
def lookup_order(order_id: str) -> dict[str, Any]:
    """Look an order up.

    Args:
        order_id: The order's id, as the customer gave it.
    """
    return {"id": order_id, "status": "shipped"}


def serve(redis_url: str, hub: str, agent: Agent) -> Worker:
    return agent.register(Worker(redis_url, hub, config=WorkerConfig(balance_interval_ms=100, poll_ms=200)))


def test_a_tool_call_round_trip(fake: FakeOpenAI, client: Client, redis_url: str, hub: str) -> None:
    fake.reply(
        200,
        completion(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_abc",
                        "type": "function",
                        "function": {"name": "lookup_order", "arguments": '{"order_id": "7"}'},
                    }
                ],
            }
        ),
    )
    fake.answer("Order 7 has shipped.")
    model = OpenAIChatModel(base_url=fake.base_url, api_key="test-key", model="fake-model")
    agent = Agent("openai-round-trip", model=model, tools=[lookup_order], instructions="You help.")
    with serve(redis_url, hub, agent):
        reply = agent.ask(client, "s-oa", "Where is order 7?", timeout=TIMEOUT)

    assert reply.text == "Order 7 has shipped."
    assert reply.tool_calls == [
        {
            "id": "call_abc",
            "name": "lookup_order",
            "arguments": {"order_id": "7"},
            "result": {"id": "7", "status": "shipped"},
            "status": "ok",
        }
    ]
    first, second = fake.requests
    assert first["path"] == "/v1/chat/completions"
    assert first["headers"]["Authorization"] == "Bearer test-key"
    assert first["body"]["model"] == "fake-model"
    assert first["body"]["messages"] == [
        {"role": "system", "content": "You help."},
        {"role": "user", "content": "Where is order 7?"},
    ]
    assert first["body"]["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "lookup_order",
                "description": "Look an order up.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "order_id": {
                            "type": "string",
                            "description": "The order's id, as the customer gave it.",
                        }
                    },
                    "required": ["order_id"],
                    "additionalProperties": False,
                },
            },
        }
    ]
    # the second request carries the model's tool call and the tool's result back
    assert second["body"]["messages"][2:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "lookup_order", "arguments": '{"order_id": "7"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc", "content": '{"id": "7", "status": "shipped"}'},
    ]


def test_an_http_error_is_retried_by_the_model_activity_retry_policy(
    fake: FakeOpenAI, client: Client, redis_url: str, hub: str
) -> None:
    fake.reply(503, {"error": {"message": "overloaded"}})
    fake.answer("Back again.")
    model = OpenAIChatModel(base_url=fake.base_url, model="fake-model")
    agent = Agent("openai-retry", model=model)  # the default model retry policy
    failed = REGISTRY.get_sample_value(
        "durable_agent_model_calls_total", {"agent": "openai-retry", "status": "failed"}
    )
    with serve(redis_url, hub, agent):
        reply = agent.ask(client, "s-retry", "hello", timeout=TIMEOUT)
    assert reply.text == "Back again."
    assert len(fake.requests) == 2
    assert all(r["body"] == fake.requests[0]["body"] for r in fake.requests)
    assert "Authorization" not in fake.requests[0]["headers"]  # no key, no header
    after = REGISTRY.get_sample_value(
        "durable_agent_model_calls_total", {"agent": "openai-retry", "status": "failed"}
    )
    assert (after or 0) - (failed or 0) == 1


def test_a_permanent_http_error_fails_the_turn_without_retries(
    fake: FakeOpenAI, client: Client, redis_url: str, hub: str
) -> None:
    fake.reply(400, {"error": {"message": "bad request: unknown model"}})
    agent = Agent("openai-bad", model=OpenAIChatModel(base_url=fake.base_url, model="nope"))
    with serve(redis_url, hub, agent), pytest.raises(TaskFailedError) as failure:
        agent.ask(client, "s-bad", "hello", timeout=TIMEOUT)
    assert "HTTP 400" in str(failure.value) and "unknown model" in str(failure.value)
    assert len(fake.requests) == 1
    # the failed turn left the session as it was, and unlocked
    assert agent.history(client, "s-bad") == []
    assert client.get_entity("@agent-session@s-bad").state["active_turn"] is None


def test_http_failures_are_classified_for_the_retry_policy(fake: FakeOpenAI) -> None:
    model = OpenAIChatModel(base_url=fake.base_url, model="fake-model")
    for status, retryable in ((429, True), (500, True), (408, True), (404, False), (401, False)):
        fake.reply(status, {"error": {"message": f"status {status}"}})
        with pytest.raises(ModelError) as failure:
            asyncio.run(model.complete([], [], call_index=0))
        assert (failure.value.status, failure.value.retryable) == (status, retryable)
    fake.reply(200, {"choices": []})
    with pytest.raises(ModelError) as malformed:
        asyncio.run(model.complete([], [], call_index=0))
    assert not malformed.value.retryable and "malformed" in str(malformed.value)
    # nothing listens on a closed port: a network error, worth retrying
    fake.server.shutdown()
    fake.server.server_close()
    with pytest.raises(ModelError) as unreachable:
        asyncio.run(OpenAIChatModel(base_url=fake.base_url, timeout=5).complete([], [], call_index=0))
    assert unreachable.value.retryable and unreachable.value.status is None
