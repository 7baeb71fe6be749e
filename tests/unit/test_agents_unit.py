"""durable.agents without Redis: tool schemas, models, the history policy, settings, optional deps."""

from __future__ import annotations

import ast
import asyncio
import datetime as dt
import enum
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest

from durable import ActivityContext, RetryPolicy, Worker
from durable.agents import (
    DEFAULT_MODEL_RETRY_POLICY,
    Agent,
    ModelError,
    OpenAIChatModel,
    ScriptedModel,
    Tool,
    tool,
    trim_history,
)
from durable.agents._metrics import ApprovalWaits
from durable.agents._models import normalize_response, parse_completion, to_wire_message
from durable.agents._session import SUMMARY_MAX_CHARS, AgentSession
from durable.agents._tools import json_schema, parse_docstring

PACKAGE = Path(__file__).resolve().parents[2] / "durable"


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


# -- tools ------------------------------------------------------------------------------------------


def test_signature_and_docstring_become_the_json_schema() -> None:
    @tool
    def search(
        ctx: ActivityContext,
        query: str,
        limit: int = 10,
        exact: bool = False,
        tags: list[str] | None = None,
        color: Color = Color.RED,
        sort: Literal["new", "old"] = "new",
        weights: dict[str, float] | None = None,
        note: Annotated[str, "free text for the log"] = "",
        extra: Any = None,
    ) -> list[dict[str, Any]]:
        """Search the catalogue.

        Finds products whose name matches.

        Args:
            query: What to look for,
                in plain words.
            limit (int): At most this many results.
            tags: Only products with all of these tags.

        Returns:
            The products found.
        """
        return []

    assert isinstance(search, Tool)
    assert search.name == "search"
    assert search.description == "Search the catalogue.\n\nFinds products whose name matches."
    assert search.schema()["parameters"] == {
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "What to look for, in plain words."},
            "limit": {"type": "integer", "description": "At most this many results.", "default": 10},
            "exact": {"type": "boolean", "default": False},
            "tags": {
                "type": ["array", "null"],
                "items": {"type": "string"},
                "description": "Only products with all of these tags.",
                "default": None,
            },
            "color": {"enum": ["red", "blue"], "type": "string"},
            "sort": {"enum": ["new", "old"], "type": "string", "default": "new"},
            "weights": {
                "type": ["object", "null"],
                "additionalProperties": {"type": "number"},
                "default": None,
            },
            "note": {"type": "string", "description": "free text for the log", "default": ""},
            "extra": {"default": None},
        },
        "required": ["query"],
        "additionalProperties": False,
    }


def test_tool_options_and_direct_calls() -> None:
    policy = RetryPolicy(first_retry_interval=dt.timedelta(seconds=1), max_number_of_attempts=2)

    @tool(name="refund-order", description="Refund it.", requires_approval=True, retry_policy=policy)
    def refund(order_id: str, amount: float, **more: Any) -> str:
        """Ignored description."""
        return f"{order_id}:{amount}"

    assert refund("7", 2.5) == "7:2.5"  # still an ordinary function
    assert refund.requires_approval and refund.retry_policy is policy
    assert refund.schema()["name"] == "refund-order"
    assert refund.schema()["description"] == "Refund it."
    assert "additionalProperties" not in refund.parameters  # **more accepts anything
    assert refund.activity_name == "agent-tool:refund-order"
    assert "requires_approval=True" in repr(refund)


def test_invalid_tools_are_refused() -> None:
    def positional(a: int, /) -> int:
        return a

    with pytest.raises(TypeError, match="by keyword"):
        tool(positional)
    with pytest.raises(ValueError, match="invalid tool name"):
        tool(name="no spaces")(lambda: None)


def test_sphinx_docstrings_and_types() -> None:
    summary, args = parse_docstring("Do it.\n\n:param x: the x\n    continued\n:returns: nothing")
    assert summary == "Do it."
    assert args == {"x": "the x continued"}
    assert json_schema(tuple[int, str]) == {
        "type": "array",
        "prefixItems": [{"type": "integer"}, {"type": "string"}],
    }
    assert json_schema(tuple[int, ...]) == {"type": "array", "items": {"type": "integer"}}
    assert json_schema(int | str) == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert json_schema(Literal[1, "a"]) == {"enum": [1, "a"]}


def test_the_tool_activity_passes_the_call_key_and_returns_json() -> None:
    seen: list[str] = []

    @tool
    def stamp(ctx: ActivityContext, at: str) -> tuple[str, dt.datetime]:
        """Stamp."""
        seen.append(ctx.idempotency_key)
        return at, dt.datetime(2024, 1, 2, tzinfo=dt.UTC)

    ctx = ActivityContext("turn:steps", 3, 1, "turn:steps:exec:3", "agent-tool:stamp")
    call = {"arguments": {"at": "now", "ctx": "from the model"}, "key": "turn-1:call-0-0"}
    assert stamp.activity(ctx, call) == ["now", "2024-01-02 00:00:00+00:00"]
    assert seen == ["turn-1:call-0-0"]
    with pytest.raises(TypeError, match="must be an object"):
        stamp.activity(ctx, {"arguments": "at=now"})


def test_async_tools_make_async_activities() -> None:
    @tool
    async def fetch(url: str) -> str:
        """Fetch."""
        return url.upper()

    ctx = ActivityContext("o", 1, 1, "k", "agent-tool:fetch")
    assert asyncio.iscoroutinefunction(fetch.activity)
    assert asyncio.run(fetch.activity(ctx, {"arguments": {"url": "x"}})) == "X"


# -- models -----------------------------------------------------------------------------------------


def test_the_scripted_model_answers_by_call_index_every_time() -> None:
    model = ScriptedModel([[{"name": "a", "arguments": {"x": 1}}, {"name": "b"}], "done"])
    first = model.complete([], [], call_index=0)
    assert first == {
        "content": None,
        "tool_calls": [
            {"id": "call-0-0", "name": "a", "arguments": {"x": 1}},
            {"id": "call-0-1", "name": "b", "arguments": {}},
        ],
    }
    assert model.complete([{"role": "user", "content": "other"}], [], call_index=0) == first  # redelivered
    assert model.complete([], [], call_index=1) == {"content": "done", "tool_calls": []}
    assert model.complete([], [], call_index=7) == {"content": "done", "tool_calls": []}  # past the end
    for bad in ([], "text", [[]], [[{"arguments": {}}]], [[{"name": "a", "arguments": [1]}]]):
        with pytest.raises(ValueError):
            ScriptedModel(bad)  # type: ignore[arg-type]


def test_openai_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DURABLE_AGENT_BASE_URL", "http://127.0.0.1:9/v1/")
    monkeypatch.setenv("DURABLE_AGENT_API_KEY", "secret")
    monkeypatch.setenv("DURABLE_AGENT_MODEL", "local-model")
    model = OpenAIChatModel()
    assert (model.base_url, model.api_key, model.model) == ("http://127.0.0.1:9/v1", "secret", "local-model")
    assert "secret" not in repr(model)
    given = OpenAIChatModel("http://other/v1", "k", "m")
    assert (given.base_url, given.api_key, given.model) == ("http://other/v1", "k", "m")
    monkeypatch.delenv("DURABLE_AGENT_BASE_URL")
    monkeypatch.delenv("DURABLE_AGENT_API_KEY")
    monkeypatch.delenv("DURABLE_AGENT_MODEL")
    default = OpenAIChatModel()
    assert (default.base_url, default.api_key, default.model) == (
        "https://api.openai.com/v1",
        None,
        "gpt-4o-mini",
    )


def test_wire_format_conversions() -> None:
    assistant = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "name": "f", "arguments": {}}],
    }
    assert to_wire_message(assistant)["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]
    tool_message = {"role": "tool", "tool_call_id": "c1", "name": "f", "content": "4"}
    assert to_wire_message(tool_message) == {"role": "tool", "tool_call_id": "c1", "content": "4"}
    body = OpenAIChatModel("http://x/v1", model="m", temperature=0.0).request_body([], [])
    assert body == {"model": "m", "messages": [], "temperature": 0.0}
    parsed = parse_completion(
        {
            "choices": [
                {"message": {"content": None, "tool_calls": [{"function": {"name": "f", "arguments": "{x"}}]}}
            ]
        }
    )
    assert parsed["tool_calls"] == [{"id": "call-0", "name": "f", "arguments": {"__invalid_json__": "{x"}}]
    with pytest.raises(ModelError):
        normalize_response({"content": 3})
    with pytest.raises(ModelError):
        normalize_response({"content": None, "tool_calls": [{"arguments": {}}]})


# -- the session ----------------------------------------------------------------------------------


def _turn(question: str, answer: str, tools: int = 0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"role": "user", "content": question}]
    for i in range(tools):
        out.append({"role": "assistant", "content": None, "tool_calls": [{"id": f"c{i}", "name": "look"}]})
        out.append({"role": "tool", "tool_call_id": f"c{i}", "name": "look", "content": "x"})
    out.append({"role": "assistant", "content": answer})
    return out


def test_the_history_policy_drops_whole_turns_and_summarises_them() -> None:
    messages = _turn("q1", "a1", tools=1) + _turn("q2", "a2") + _turn("q3", "a3")
    assert trim_history(messages, "", 8) == (messages, "")
    kept, summary = trim_history(messages, "earlier line", 4)
    assert kept == _turn("q2", "a2") + _turn("q3", "a3")
    assert summary == "earlier line\nuser: q1\ntools used: look\nassistant: a1"
    kept, summary = trim_history(_turn("q", "x" * 500, tools=3), "", 2)  # the latest turn always stays
    assert len(kept) == 8 and summary == ""
    kept, summary = trim_history(_turn("q" * 500, "a") + _turn("q2", "a2"), "s\n" * 5000, 2)
    assert len(summary) <= SUMMARY_MAX_CHARS and summary.endswith("user: " + "q" * 197 + "...\nassistant: a")


def test_the_session_entity_operations() -> None:
    session = AgentSession()
    session.state = session.initial_state()
    assert session.begin("t1")["active_turn"] == "t1"
    assert session.finish({"turn": "t1", "messages": _turn("q", "a"), "limit": 10}) == {
        "turns": 1,
        "messages": 2,
    }
    assert session.state["active_turn"] is None
    session.begin("t2")
    session.abort("other")
    assert session.state["active_turn"] == "t2"
    session.abort("t2")
    assert session.state["active_turn"] is None


def test_approval_waits_count_until_decided_or_long_past_their_deadline() -> None:
    waits = ApprovalWaits()
    waits.waiting("a", "i", "c1", None)
    waits.waiting("a", "i", "c1", None)  # a replay reports it again
    waits.waiting("a", "i", "c2", -waits.GRACE_S - 1)  # already past deadline and grace
    waits.waiting("b", "j", "c1", 3600)
    assert (waits.count("a"), waits.count("b")) == (1, 1)
    waits.decided("a", "i", "c1")
    assert waits.count("a") == 0


# -- the agent ------------------------------------------------------------------------------------


def test_agent_settings_are_checked_and_registration_is_repeatable() -> None:
    @tool
    def ping() -> str:
        """Ping."""
        return "pong"

    def plain(x: int) -> int:
        """A plain function is made a tool."""
        return x

    model = ScriptedModel(["hi"])
    agent = Agent("helper", model=model, tools=[ping, plain])
    assert agent.model_retry_policy is DEFAULT_MODEL_RETRY_POLICY
    assert sorted(agent.tools) == ["ping", "plain"]
    w = Worker("redis://127.0.0.1:1/0", "unused")
    assert agent.register(w) is w
    agent.register(w)  # again: harmless
    assert {"agent:helper", "agent-steps:helper"} <= set(w.registry.orchestrators)
    assert {"agent-model:helper", "agent-tool:ping", "agent-tool:plain"} <= set(w.registry.activities)
    assert "agent-session" in w.registry.entities
    Agent("other", model=model, tools=[ping]).register(w)  # tools and the session entity are shared
    with pytest.raises(ValueError, match="already registered"):
        Agent("helper", model=model).register(w)
    for bad in (
        {"name": "no spaces"},
        {"max_steps": 0},
        {"approval_timeout": dt.timedelta(0)},
        {"max_history_messages": 0},
        {"tools": [ping, tool(name="ping")(plain)]},
    ):
        with pytest.raises(ValueError):
            Agent(**{"name": "x", "model": model, **bad})
    with pytest.raises(TypeError):
        Agent("x", model=object())  # type: ignore[arg-type]


# -- optional dependencies ------------------------------------------------------------------------


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at module level) for every import of one file."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    out: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((a.name, id(node) in top) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node.module, id(node) in top))
    return out


def test_httpx_and_the_agents_stay_optional() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        inside = PACKAGE / "agents" in path.parents
        for module, top_level in _imports(path):
            if module.split(".")[0] == "httpx" and (not inside or top_level):
                offenders.append(f"{path.name} imports httpx{' at module level' if top_level else ''}")
            if module.startswith("durable.agents") and not inside:
                offenders.append(f"{path.name} imports {module}")
    assert offenders == []
    code = (
        "import sys, durable, durable.cli, durable.agents\n"
        "from durable.agents import OpenAIChatModel\n"
        "OpenAIChatModel('http://127.0.0.1:9/v1')\n"
        "assert 'httpx' not in sys.modules, 'httpx imported eagerly'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
