"""Chat models: what the agent's model activity calls.

A model turns a conversation (``[{"role", "content", ...}]``) and the tools' schemas into either a
final text or tool calls. :class:`ScriptedModel` answers from a script (offline, deterministic);
:class:`OpenAIChatModel` speaks the OpenAI-compatible chat-completions API over ``httpx`` (an
optional dependency, imported only when a request is made: ``pip install 'durable[agents]'``).
Any object with a ``complete(messages, tools, *, call_index)`` method (plain or ``async``) that
returns a :class:`ModelResponse` works as a model too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, Protocol, TypedDict

#: Environment variables read by :class:`OpenAIChatModel` for what it is not given.
ENV_BASE_URL = "DURABLE_AGENT_BASE_URL"
ENV_API_KEY = "DURABLE_AGENT_API_KEY"
ENV_MODEL = "DURABLE_AGENT_MODEL"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"

#: HTTP statuses worth another attempt (timeouts, conflicts, rate limits); 5xx are too.
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})


class ToolCall(TypedDict):
    """One tool call asked for by the model."""

    id: str
    name: str
    arguments: dict[str, Any]


class _ModelResponseBase(TypedDict):
    content: str | None
    tool_calls: list[ToolCall]


class ModelResponse(_ModelResponseBase, total=False):
    """A model's answer: a final text (no tool calls), or tool calls (maybe with some text).

    ``error`` (set by the agent, never by a model) marks a call that failed for good."""

    error: str


class ChatModel(Protocol):
    """What an agent needs from a model (plain or ``async`` ``complete``)."""

    def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, call_index: int
    ) -> ModelResponse | Awaitable[ModelResponse]:
        """Answer the conversation; ``call_index`` counts the model calls already made in the turn."""
        ...


class ModelError(Exception):
    """A model call failed. ``retryable`` errors (network trouble, timeouts, 429, 5xx) are retried by
    the model activity's retry policy; the others fail the turn at once."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


# -- the scripted model --------------------------------------------------------------------------------


class ScriptedModel:
    """An offline, deterministic model for tests and demos.

    Each response is a string (the final answer) or a list of tool calls
    ``{"name": ..., "arguments": {...}}``. The model returns the ``i``-th response, where ``i`` is
    the number of model calls already recorded in the session's current turn (the agent passes it
    as ``call_index``); past the end of the script the last response repeats. The answer depends
    only on ``i``, so a redelivered model call gets the same answer. The tool calls of response
    ``i`` get the ids ``call-<i>-<j>``.
    """

    def __init__(self, responses: Sequence[str | Sequence[Mapping[str, Any]]]) -> None:
        if isinstance(responses, str) or not responses:
            raise ValueError("ScriptedModel needs a non-empty list of responses")
        self.responses: list[str | list[dict[str, Any]]] = []
        for i, response in enumerate(responses):
            if isinstance(response, str):
                self.responses.append(response)
                continue
            calls: list[dict[str, Any]] = []
            for call in response:
                if not isinstance(call, Mapping) or not isinstance(call.get("name"), str):
                    raise ValueError(f"response {i}: a tool call is {{'name': ..., 'arguments': {{...}}}}")
                arguments = call.get("arguments") or {}
                if not isinstance(arguments, Mapping):
                    raise ValueError(f"response {i}: the arguments of {call['name']!r} must be a dict")
                calls.append({"name": call["name"], "arguments": dict(arguments)})
            if not calls:
                raise ValueError(f"response {i}: an empty list of tool calls; use a string to answer")
            self.responses.append(calls)

    def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, call_index: int
    ) -> ModelResponse:
        """The response for ``call_index`` (see the class documentation)."""
        i = min(max(call_index, 0), len(self.responses) - 1)
        response = self.responses[i]
        if isinstance(response, str):
            return {"content": response, "tool_calls": []}
        calls: list[ToolCall] = [
            {"id": f"call-{call_index}-{j}", "name": c["name"], "arguments": dict(c["arguments"])}
            for j, c in enumerate(response)
        ]
        return {"content": None, "tool_calls": calls}

    def __repr__(self) -> str:
        return f"ScriptedModel({len(self.responses)} responses)"


# -- the OpenAI-compatible model ------------------------------------------------------------------------


class OpenAIChatModel:
    """A model behind an OpenAI-compatible ``/chat/completions`` endpoint, with tool calls.

    ``base_url`` (default ``$DURABLE_AGENT_BASE_URL``, else the OpenAI API), ``api_key`` (default
    ``$DURABLE_AGENT_API_KEY``; sent as a bearer token when set) and ``model`` (default
    ``$DURABLE_AGENT_MODEL``, else ``gpt-4o-mini``). Works with OpenAI, Azure OpenAI's v1 API,
    vLLM, Ollama, LiteLLM and other servers that speak the same API. Network errors, timeouts,
    408/409/425/429 and 5xx raise a retryable :class:`ModelError` (the model activity's retry
    policy retries them); other HTTP errors and malformed answers fail the turn.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        model: str | None = None,
        *,
        timeout: float = 120.0,
        temperature: float | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        self.base_url = (base_url or os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = api_key or os.environ.get(ENV_API_KEY) or None
        self.model = model or os.environ.get(ENV_MODEL) or DEFAULT_MODEL
        self.timeout = timeout
        self.temperature = temperature
        self.extra_body = dict(extra_body or {})

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIChatModel(base_url={self.base_url!r}, model={self.model!r})"

    def request_body(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> dict[str, Any]:
        """The JSON body of one chat-completions request."""
        body: dict[str, Any] = {"model": self.model, "messages": [to_wire_message(m) for m in messages]}
        if tools:
            body["tools"] = [{"type": "function", "function": t} for t in tools]
            body["tool_choice"] = "auto"
        if self.temperature is not None:
            body["temperature"] = self.temperature
        body.update(self.extra_body)
        return body

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], *, call_index: int
    ) -> ModelResponse:
        """POST the conversation to ``<base_url>/chat/completions`` and parse the answer."""
        import httpx  # optional dependency: durable[agents]

        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = f"{self.base_url}/chat/completions"
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as http:
                response = await http.post(url, json=self.request_body(messages, tools), headers=headers)
        except httpx.HTTPError as exc:
            raise ModelError(f"POST {url} failed: {type(exc).__name__}: {exc}", retryable=True) from exc
        status = response.status_code
        if status >= 400:
            detail = response.text[:500]
            retryable = status >= 500 or status in RETRYABLE_STATUSES
            raise ModelError(
                f"POST {url} returned HTTP {status}: {detail}", retryable=retryable, status=status
            )
        try:
            return parse_completion(response.json())
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise ModelError(f"malformed chat completion from {url}: {exc}", retryable=False) from exc


def to_wire_message(message: Mapping[str, Any]) -> dict[str, Any]:
    """One conversation message in the chat-completions format."""
    role = message["role"]
    if role == "assistant":
        out: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
        calls = message.get("tool_calls") or []
        if calls:
            out["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments") or {})},
                }
                for c in calls
            ]
        return out
    if role == "tool":
        return {"role": "tool", "tool_call_id": message["tool_call_id"], "content": str(message["content"])}
    return {"role": role, "content": message.get("content") or ""}


def parse_completion(body: Any) -> ModelResponse:
    """A chat-completions response body as a :class:`ModelResponse`."""
    message = body["choices"][0]["message"]
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise TypeError(f"content is {type(content).__name__}, not a string")
    calls: list[ToolCall] = []
    for i, raw in enumerate(message.get("tool_calls") or []):
        function = raw["function"]
        arguments: Any = function.get("arguments") or "{}"
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                arguments = {"__invalid_json__": arguments}
        if not isinstance(arguments, dict):
            arguments = {"__invalid_json__": json.dumps(arguments)}
        calls.append(
            {"id": str(raw.get("id") or f"call-{i}"), "name": str(function["name"]), "arguments": arguments}
        )
    return {"content": content, "tool_calls": calls}


def normalize_response(response: Any) -> ModelResponse:
    """Check a model's answer and copy it into plain data (raises ModelError, not retryable)."""
    if not isinstance(response, Mapping):
        raise ModelError(f"a model returned {type(response).__name__}, not a response dict", retryable=False)
    content = response.get("content")
    if content is not None and not isinstance(content, str):
        raise ModelError("a model's content must be a string or None", retryable=False)
    calls: list[ToolCall] = []
    for i, call in enumerate(response.get("tool_calls") or []):
        if not isinstance(call, Mapping) or not isinstance(call.get("name"), str):
            raise ModelError(f"tool call {i} of a model's answer has no name", retryable=False)
        arguments = call.get("arguments") or {}
        if not isinstance(arguments, Mapping):
            raise ModelError(f"the arguments of tool call {call['name']!r} are not a dict", retryable=False)
        calls.append({"id": str(call.get("id") or ""), "name": call["name"], "arguments": dict(arguments)})
    return {"content": content, "tool_calls": calls}
