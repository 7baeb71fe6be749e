"""durable.agents against a real Redis: tool turns, parallel calls, approvals, memory, max_steps."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

from durable import (
    ActivityContext,
    AsyncClient,
    Client,
    OrchestrationAlreadyExistsError,
    OrchestrationStatus,
    Worker,
    WorkerConfig,
)
from durable._runtime.metrics import REGISTRY
from durable.agents import Agent, AgentReply, ScriptedModel, tool
from durable.agents._session import SUMMARY_PREFIX

TIMEOUT = 30


def _poll(cond: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    """Wait for a state that is only observable by polling (a custom status, a metric)."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


class Ledger:
    """Counts tool executions (in this process: the worker runs in a background thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: Counter[str] = Counter()
        self.keys: list[str] = []

    def add(self, name: str, key: str = "") -> None:
        with self.lock:
            self.runs[name] += 1
            self.keys.append(key)


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


@pytest.fixture
def client(redis_url: str, hub: str) -> Iterator[Client]:
    with Client(redis_url, hub) as c:
        yield c


@pytest.fixture
def serve(redis_url: str, hub: str) -> Iterator[Callable[..., Worker]]:
    """serve(agent, ...) registers the agents on a fresh worker of the test's hub and starts it."""
    workers: list[Worker] = []

    def start(*agents: Agent) -> Worker:
        w = Worker(redis_url, hub, config=WorkerConfig(balance_interval_ms=100, poll_ms=200))
        for agent in agents:
            agent.register(w)
        w.start()
        workers.append(w)
        return w

    yield start
    for w in workers:
        w.stop()


def support_tools(ledger: Ledger) -> tuple[Any, Any, Any]:
    @tool
    def lookup_order(order_id: str) -> dict[str, Any]:
        """Look an order up by its id."""
        ledger.add("lookup_order")
        return {"id": order_id, "status": "shipped", "total": 42.5}

    @tool
    def shipping_eta(order_id: str, express: bool = False) -> str:
        """When an order arrives."""
        ledger.add("shipping_eta")
        return f"order {order_id} arrives {'tomorrow' if express else 'on Friday'}"

    @tool(requires_approval=True)
    def refund(ctx: ActivityContext, order_id: str, amount: float) -> str:
        """Refund part of an order (needs a person's approval)."""
        ledger.add("refund", ctx.idempotency_key)
        return f"refunded {amount} on order {order_id}"

    return lookup_order, shipping_eta, refund


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_two_tool_turn_returns_the_final_text_and_the_tool_results(
    serve: Callable[..., Worker], client: Client, ledger: Ledger
) -> None:
    lookup_order, shipping_eta, refund = support_tools(ledger)
    model = ScriptedModel(
        [
            [{"name": "lookup_order", "arguments": {"order_id": "7"}}],
            [{"name": "shipping_eta", "arguments": {"order_id": "7", "express": True}}],
            "Order 7 has shipped and arrives tomorrow.",
        ]
    )
    agent = Agent(
        "two-tools", model=model, tools=[lookup_order, shipping_eta, refund], instructions="Be brief."
    )
    serve(agent)
    models_before = sample("durable_agent_model_calls_total", agent="two-tools", status="completed")

    reply = agent.ask(client, "s-two", "Where is order 7?", timeout=TIMEOUT)

    assert isinstance(reply, AgentReply)
    assert reply.text == "Order 7 has shipped and arrives tomorrow."
    assert reply.stopped is None
    assert reply.tool_calls == [
        {
            "id": "call-0-0",
            "name": "lookup_order",
            "arguments": {"order_id": "7"},
            "result": {"id": "7", "status": "shipped", "total": 42.5},
            "status": "ok",
        },
        {
            "id": "call-1-0",
            "name": "shipping_eta",
            "arguments": {"order_id": "7", "express": True},
            "result": "order 7 arrives tomorrow",
            "status": "ok",
        },
    ]
    assert ledger.runs == Counter({"lookup_order": 1, "shipping_eta": 1})
    history = agent.history(client, "s-two")
    assert [m["role"] for m in history] == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert history[0]["content"] == "Where is order 7?"
    assert history[2] == {
        "role": "tool",
        "tool_call_id": "call-0-0",
        "name": "lookup_order",
        "content": '{"id": "7", "status": "shipped", "total": 42.5}',
    }
    assert "Be brief." not in str(history)  # the instructions are not part of the conversation
    assert (
        sample("durable_agent_model_calls_total", agent="two-tools", status="completed") == models_before + 3
    )
    assert sample("durable_agent_tool_calls_total", agent="two-tools", tool="lookup_order", status="ok") >= 1
    assert agent.pending_approvals(client, "s-two") == []


def test_parallel_tool_calls_run_concurrently(serve: Callable[..., Worker], client: Client) -> None:
    barrier = threading.Barrier(3, timeout=20)  # the three calls must all be running at once

    @tool
    def meet(who: str) -> str:
        """Wait until every other call of the step has started too."""
        barrier.wait()
        return f"{who} met the others"

    calls = [{"name": "meet", "arguments": {"who": w}} for w in ("a", "b", "c")]
    agent = Agent("parallel", model=ScriptedModel([calls, "everyone met"]), tools=[meet])
    serve(agent)
    reply = agent.ask(client, "s-par", "meet", timeout=TIMEOUT)
    assert reply.text == "everyone met"
    assert [(c["result"], c["status"]) for c in reply.tool_calls] == [
        ("a met the others", "ok"),
        ("b met the others", "ok"),
        ("c met the others", "ok"),
    ]


def _start_refund_turn(agent: Agent, client: Client, session: str) -> tuple[str, list[dict[str, Any]]]:
    turn = agent.start_turn(client, session, "Please refund 5 on order 7 and 3 on order 8")
    return turn, agent.wait_for_approvals(client, session, turn_id=turn, timeout=TIMEOUT)


REFUNDS = [
    [
        {"name": "refund", "arguments": {"order_id": "7", "amount": 5.0}},
        {"name": "refund", "arguments": {"order_id": "8", "amount": 3.0}},
        {"name": "lookup_order", "arguments": {"order_id": "7"}},
    ],
    "Done.",
]


def test_approval_waits_then_runs_after_approve_and_is_denied_on_denial(
    serve: Callable[..., Worker], client: Client, ledger: Ledger
) -> None:
    lookup_order, _, refund = support_tools(ledger)
    agent = Agent("approvals", model=ScriptedModel(REFUNDS), tools=[lookup_order, refund])
    serve(agent)
    denied_before = sample(
        "durable_agent_tool_calls_total", agent="approvals", tool="refund", status="denied"
    )

    turn, pending = _start_refund_turn(agent, client, "s-appr")

    assert pending == [
        {"id": "call-0-0", "name": "refund", "arguments": {"order_id": "7", "amount": 5.0}},
        {"id": "call-0-1", "name": "refund", "arguments": {"order_id": "8", "amount": 3.0}},
    ]
    assert sample("durable_agent_approvals_waiting", agent="approvals") == 2
    # the tool that needs no approval ran; the refunds wait, holding no process
    _poll(lambda: ledger.runs["lookup_order"] == 1, "the lookup")
    assert ledger.runs["refund"] == 0
    assert client.get_orchestration_state(turn).runtime_status == OrchestrationStatus.RUNNING
    with pytest.raises(LookupError):
        agent.approve(client, "s-appr", "call-9-9")

    # decided out of order: the second is denied first, then the first approved
    agent.approve(client, "s-appr", "call-0-1", approved=False, note="over the limit")
    remaining = _poll(
        lambda: [p["id"] for p in agent.pending_approvals(client, "s-appr")] == ["call-0-0"], "one pending"
    )
    assert remaining
    agent.approve(client, "s-appr", "call-0-0")
    reply = agent.wait_turn(client, turn, timeout=TIMEOUT)

    assert reply.text == "Done."
    assert [(c["id"], c["result"], c["status"]) for c in reply.tool_calls] == [
        ("call-0-0", "refunded 5.0 on order 7", "ok"),
        ("call-0-1", "denied", "denied"),
        ("call-0-2", {"id": "7", "status": "shipped", "total": 42.5}, "ok"),
    ]
    assert ledger.runs["refund"] == 1
    assert ledger.keys == ["", f"{turn}:call-0-0"]  # the tool's idempotency key names the call
    tool_messages = [m for m in agent.history(client, "s-appr") if m["role"] == "tool"]
    assert tool_messages[1]["content"] == "denied: over the limit"  # the model sees the note
    assert agent.pending_approvals(client, "s-appr") == []
    assert sample("durable_agent_approvals_waiting", agent="approvals") == 0
    assert (
        sample("durable_agent_tool_calls_total", agent="approvals", tool="refund", status="denied")
        == denied_before + 1
    )


def test_an_approval_that_times_out_is_denied(
    serve: Callable[..., Worker], client: Client, ledger: Ledger
) -> None:
    lookup_order, _, refund = support_tools(ledger)
    agent = Agent(
        "approval-timeout",
        model=ScriptedModel(REFUNDS),
        tools=[lookup_order, refund],
        approval_timeout=dt.timedelta(milliseconds=300),
    )
    serve(agent)
    reply = agent.ask(client, "s-late", "refund please", timeout=TIMEOUT)
    assert [c["status"] for c in reply.tool_calls] == ["denied", "denied", "ok"]
    assert [c["result"] for c in reply.tool_calls][:2] == ["denied", "denied"]
    assert ledger.runs["refund"] == 0
    tool_messages = [m for m in agent.history(client, "s-late") if m["role"] == "tool"]
    assert [m["content"] for m in tool_messages[:2]] == ["denied", "denied"]


class EchoModel:
    """A custom model that shows what it saw: the user messages of the whole conversation."""

    def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, call_index: int
    ) -> Any:
        users = [m["content"] for m in messages if m["role"] == "user"]
        summaries = [m["content"] for m in messages if m["role"] == "system"]
        return {"content": f"seen {users} {len(summaries)}", "tool_calls": []}


def test_three_turns_in_one_session_see_the_earlier_turns(
    serve: Callable[..., Worker], client: Client
) -> None:
    agent = Agent("memory", model=EchoModel(), instructions="You remember.")
    serve(agent)
    replies = [agent.ask(client, "s-mem", q, timeout=TIMEOUT).text for q in ("one", "two", "three")]
    # the model saw the instructions (one system message) and every earlier question
    assert replies == ["seen ['one'] 1", "seen ['one', 'two'] 1", "seen ['one', 'two', 'three'] 1"]
    history = agent.history(client, "s-mem")
    assert history == [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "seen ['one'] 1"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "seen ['one', 'two'] 1"},
        {"role": "user", "content": "three"},
        {"role": "assistant", "content": "seen ['one', 'two', 'three'] 1"},
    ]
    # another session knows nothing of it
    assert agent.ask(client, "s-other", "four", timeout=TIMEOUT).text == "seen ['four'] 1"
    assert client.get_entity("@agent-session@s-mem").state["turns"] == 3


def test_a_long_session_is_trimmed_and_summarised(serve: Callable[..., Worker], client: Client) -> None:
    agent = Agent("trimmed", model=EchoModel(), max_history_messages=4)
    serve(agent)
    for q in ("alpha", "beta", "gamma", "delta"):
        agent.ask(client, "s-trim", q, timeout=TIMEOUT)
    history = agent.history(client, "s-trim")
    assert history[0]["role"] == "system" and history[0]["content"].startswith(SUMMARY_PREFIX)
    assert "user: alpha" in history[0]["content"] and "user: beta" in history[0]["content"]
    assert [m["content"] for m in history[1:] if m["role"] == "user"] == ["gamma", "delta"]
    # the last turn's model saw the summary (one system message) and the questions kept before it
    assert history[-1]["content"] == "seen ['beta', 'gamma', 'delta'] 1"


def test_max_steps_stops_a_model_that_never_answers(
    serve: Callable[..., Worker], client: Client, ledger: Ledger
) -> None:
    lookup_order, _, _ = support_tools(ledger)
    forever = ScriptedModel([[{"name": "lookup_order", "arguments": {"order_id": "1"}}]])
    agent = Agent("looping", model=forever, tools=[lookup_order], max_steps=3)
    serve(agent)
    reply = agent.ask(client, "s-loop", "loop", timeout=TIMEOUT)
    assert reply.stopped == "max_steps"
    assert reply.text == ""
    assert [c["id"] for c in reply.tool_calls] == ["call-0-0", "call-1-0", "call-2-0"]
    assert ledger.runs["lookup_order"] == 3
    # the session stays consistent: every tool call has its result, and the next turn works
    history = agent.history(client, "s-loop")
    assert sum(m["role"] == "tool" for m in history) == 3
    assert agent.ask(client, "s-loop", "again", timeout=TIMEOUT).stopped == "max_steps"


def test_tool_errors_and_unknown_tools_go_back_to_the_model(
    serve: Callable[..., Worker], client: Client
) -> None:
    @tool
    def divide(a: float, b: float) -> float:
        """a / b"""
        return a / b

    model = ScriptedModel(
        [
            [
                {"name": "divide", "arguments": {"a": 1, "b": 0}},
                {"name": "divide", "arguments": {"a": 1}},
                {"name": "teleport", "arguments": {}},
                {"name": "divide", "arguments": {"a": 6, "b": 3}},
            ],
            "handled",
        ]
    )
    agent = Agent("errors", model=model, tools=[divide])
    serve(agent)
    reply = agent.ask(client, "s-err", "divide", timeout=TIMEOUT)
    assert reply.text == "handled"
    assert [c["status"] for c in reply.tool_calls] == ["error", "error", "error", "ok"]
    assert reply.tool_calls[0]["result"].startswith("ZeroDivisionError:")
    assert "missing 1 required" in reply.tool_calls[1]["result"]
    assert reply.tool_calls[2]["result"] == "unknown tool 'teleport' (tools: divide)"
    assert reply.tool_calls[3]["result"] == 2.0
    tool_messages = [m for m in agent.history(client, "s-err") if m["role"] == "tool"]
    assert tool_messages[0]["content"].startswith("error: ZeroDivisionError:")
    assert sample("durable_agent_tool_calls_total", agent="errors", tool="unknown", status="error") >= 1


def test_turns_of_one_session_run_one_at_a_time(serve: Callable[..., Worker], client: Client) -> None:
    """Two asks at once on one session: the second turn sees the first one complete."""
    agent = Agent("serial", model=EchoModel())
    serve(agent)
    first = agent.start_turn(client, "s-serial", "first")
    second = agent.start_turn(client, "s-serial", "second")
    texts = {agent.wait_turn(client, t, timeout=TIMEOUT).text for t in (first, second)}
    # whichever locked the session first, the other saw its whole turn
    assert texts in (
        {"seen ['first'] 0", "seen ['first', 'second'] 0"},
        {"seen ['second'] 0", "seen ['second', 'first'] 0"},
    )
    assert len(agent.history(client, "s-serial")) == 4


def test_the_async_client_calls(
    serve: Callable[..., Worker], redis_url: str, hub: str, ledger: Ledger
) -> None:
    lookup_order, _, refund = support_tools(ledger)
    agent = Agent("async-calls", model=ScriptedModel(REFUNDS), tools=[lookup_order, refund])
    echo = Agent("async-echo", model=EchoModel())
    serve(agent, echo)

    async def scenario() -> tuple[AgentReply, list[dict[str, Any]], AgentReply]:
        async with AsyncClient(redis_url, hub) as client:
            turn = await agent.start_turn_async(client, "s-async", "refunds", turn_id="my-turn-1")
            with pytest.raises(OrchestrationAlreadyExistsError):  # a turn id of one's own: idempotent
                await agent.start_turn_async(client, "s-async", "refunds", turn_id="my-turn-1")
            pending = await agent.wait_for_approvals_async(client, "s-async", turn_id=turn, timeout=TIMEOUT)
            assert pending == await agent.pending_approvals_async(client, "s-async")
            with pytest.raises(LookupError):
                await agent.approve_async(client, "s-async", "call-7-7")
            await agent.approve_async(client, "s-async", "call-0-0")
            await agent.approve_async(client, "s-async", "call-0-1", approved=False)
            reply = await agent.wait_turn_async(client, turn, timeout=TIMEOUT)
            history = await agent.history_async(client, "s-async")
            turn_ids = agent.instance_ids(turn)
            assert await client.purge_orchestration(turn_ids[0])  # recursive: its steps go with it
            for instance in turn_ids:
                assert await client.get_orchestration_state(instance) is None
            echoed = await echo.ask_async(client, "s-async-echo", "hello", timeout=TIMEOUT)
            return reply, history, echoed

    reply, history, echoed = anyio.run(scenario)
    assert [c["status"] for c in reply.tool_calls] == ["ok", "denied", "ok"]
    assert ledger.runs["refund"] == 1
    assert history[0] == {"role": "user", "content": "refunds"} and len(history) == 6
    assert echoed.text == "seen ['hello'] 0"
