"""The durable code of an agent: the turn orchestration, its steps, and the model activity.

A turn is two orchestrations:

* **turn** (``agent:<name>``, one instance per :meth:`Agent.ask`) locks the session entity for the
  whole turn, reads the conversation, runs the steps as a sub-orchestration and, when they are
  done, appends the turn's messages to the session (which applies the history policy). Locks
  cannot outlive an execution, so the turn itself never continues as new; its history stays a
  handful of events.
* **steps** (``agent-steps:<name>``, instance ``<turn id>:steps``) makes one model call (an
  activity, with the model retry policy), runs the tool calls it asks for as activities (all at
  once; those that need approval after their approval event, or "denied" at the approval
  timeout), and then continues as new with the conversation so far. Each execution's history
  holds one step, however long the turn; approval events that arrive early are carried over.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from durable import (
    ActivityContext,
    OrchestrationContext,
    RetryPolicy,
    Task,
    TaskFailedError,
    when_any,
)

from . import _metrics as metrics
from ._models import ChatModel, ModelError, ModelResponse, normalize_response
from ._session import conversation, session_entity_id
from ._tools import Tool

Orchestration = Generator[Task[Any], Any, Any]

#: The marker :func:`~durable.agents._models.parse_completion` leaves for arguments that were not JSON.
INVALID_ARGUMENTS = "__invalid_json__"


def steps_instance_id(turn_id: str) -> str:
    """The instance id of a turn's steps orchestration (the one approvals are sent to)."""
    return f"{turn_id}:steps"


def approval_event(call_id: str) -> str:
    """The name of the external event that decides on tool call ``call_id``."""
    return f"approval:{call_id}"


@dataclass
class _Wait:
    call: dict[str, Any]
    event: Task[Any]
    decision: Task[Any]

    def outcome(self) -> tuple[bool, str | None]:
        """(approved, note); a timeout is a denial."""
        if not self.event.is_complete:
            return False, None
        data = self.event.get_result()
        if isinstance(data, dict):
            note = data.get("note")
            return bool(data.get("approved")), str(note) if note else None
        return bool(data), None


@dataclass
class AgentCode:
    """An agent's orchestrators and model activity, built from its settings."""

    name: str
    model: ChatModel
    tools: dict[str, Tool[..., Any]]
    instructions: str
    max_steps: int
    approval_timeout: _dt.timedelta | None
    model_retry_policy: RetryPolicy
    max_history_messages: int
    schemas: list[dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.schemas = [t.schema() for t in self.tools.values()]

    @property
    def turn_name(self) -> str:
        return f"agent:{self.name}"

    @property
    def steps_name(self) -> str:
        return f"agent-steps:{self.name}"

    @property
    def model_activity_name(self) -> str:
        return f"agent-model:{self.name}"

    # -- the model activity ----------------------------------------------------------------------
    def model_result(self, response: Any) -> ModelResponse:
        """Count the call and check the answer; a permanent failure becomes an ``error`` answer."""
        try:
            checked = normalize_response(response)
        except ModelError as exc:
            return self.model_failed(exc)
        metrics.model_call(self.name, "completed")
        return checked

    def model_failed(self, exc: BaseException) -> ModelResponse:
        """Count a failed call; re-raise what the retry policy should retry."""
        metrics.model_call(self.name, "failed")
        if isinstance(exc, ModelError) and not exc.retryable:
            return {"content": None, "tool_calls": [], "error": str(exc)}
        raise exc

    def call_model(self, ctx: ActivityContext, request: dict[str, Any]) -> ModelResponse:
        """The model activity, for a model whose ``complete`` is a plain function."""
        try:
            response = self.model.complete(
                request["messages"], request["tools"], call_index=int(request["call"])
            )
        except Exception as exc:
            return self.model_failed(exc)
        return self.model_result(response)

    async def call_model_async(self, ctx: ActivityContext, request: dict[str, Any]) -> ModelResponse:
        """The model activity, for a model whose ``complete`` is ``async``."""
        try:
            response = await self.model.complete(  # type: ignore[misc]
                request["messages"], request["tools"], call_index=int(request["call"])
            )
        except Exception as exc:
            return self.model_failed(exc)
        return self.model_result(response)

    # -- the turn --------------------------------------------------------------------------------
    def turn(self, ctx: OrchestrationContext, request: dict[str, Any]) -> Orchestration:
        """One ``ask``: lock the session, run the steps, record the turn, answer."""
        session = session_entity_id(str(request["session"]))
        lock = yield ctx.lock_entities(session)
        with lock:
            snapshot = yield ctx.call_entity(session, "begin", input=ctx.instance_id)
            system = [{"role": "system", "content": self.instructions}] if self.instructions else []
            user = {"role": "user", "content": str(request["message"])}
            messages = [*system, *conversation(snapshot), user]
            state = {
                "session": str(request["session"]),
                "turn": ctx.instance_id,
                "messages": messages,
                "start": len(messages) - 1,
                "calls": 0,
                "tool_calls": [],
            }
            try:
                outcome = yield ctx.call_sub_orchestrator(
                    self.steps_name, input=state, instance_id=steps_instance_id(ctx.instance_id)
                )
            except TaskFailedError:
                yield ctx.call_entity(session, "abort", input=ctx.instance_id)
                raise
            yield ctx.call_entity(
                session,
                "finish",
                input={
                    "turn": ctx.instance_id,
                    "messages": outcome["messages"],
                    "limit": self.max_history_messages,
                },
            )
        return {"text": outcome["text"], "tool_calls": outcome["tool_calls"], "stopped": outcome["stopped"]}

    # -- the steps -------------------------------------------------------------------------------
    def steps(self, ctx: OrchestrationContext, state: dict[str, Any]) -> Orchestration:
        """One model call and its tool calls per execution; continue as new until an answer."""
        calls_made = int(state["calls"])
        messages: list[dict[str, Any]] = list(state["messages"])
        records: list[dict[str, Any]] = list(state["tool_calls"])
        ctx.set_custom_status({"calls": calls_made, "pending": []})
        response = yield ctx.call_activity(
            self.model_activity_name,
            input={"messages": messages, "tools": self.schemas, "call": calls_made},
            retry_policy=self.model_retry_policy,
        )
        if response.get("error"):
            raise ModelError(str(response["error"]), retryable=False)
        calls_made += 1
        content = response.get("content")
        tool_calls = _unique_ids(response.get("tool_calls") or [], records, calls_made - 1)
        assistant: dict[str, Any] = {"role": "assistant", "content": content}
        if tool_calls:
            assistant["tool_calls"] = tool_calls
        messages.append(assistant)
        if not tool_calls:
            return _outcome(state, messages, records, content or "", None)
        new_records, tool_messages = yield from self._run_tools(ctx, state, tool_calls, calls_made)
        records.extend(new_records)
        messages.extend(tool_messages)
        if calls_made >= self.max_steps:
            return _outcome(state, messages, records, content or "", "max_steps")
        ctx.continue_as_new(
            {**state, "messages": messages, "calls": calls_made, "tool_calls": records}, save_events=True
        )
        return None

    def _run_tools(
        self, ctx: OrchestrationContext, state: dict[str, Any], calls: list[dict[str, Any]], calls_made: int
    ) -> Generator[Task[Any], Any, tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
        """Run one step's tool calls: all at once, those needing approval once approved."""
        done: dict[str, tuple[dict[str, Any], str]] = {}  # call id -> (record, content for the model)
        running: list[tuple[dict[str, Any], Task[Any]]] = []
        waits: list[_Wait] = []
        for call in calls:
            tool = self.tools.get(call["name"])
            if tool is None:
                known = ", ".join(sorted(self.tools)) or "none"
                self._record(ctx, done, call, f"unknown tool {call['name']!r} (tools: {known})", "error")
            elif INVALID_ARGUMENTS in call["arguments"]:
                raw = call["arguments"][INVALID_ARGUMENTS]
                self._record(ctx, done, call, f"the arguments are not valid JSON: {raw!r:.200}", "error")
            elif tool.requires_approval:
                event = ctx.wait_for_external_event(approval_event(call["id"]))
                decision = event
                if self.approval_timeout is not None:
                    decision = when_any([event, ctx.create_timer(self.approval_timeout)])
                waits.append(_Wait(call, event, decision))
                timeout_s = self.approval_timeout.total_seconds() if self.approval_timeout else None
                metrics.APPROVAL_WAITS.waiting(self.name, ctx.instance_id, call["id"], timeout_s)
            else:
                running.append((call, self._schedule(ctx, state, tool, call)))
        while waits:
            self._publish_pending(ctx, calls_made, waits)
            yield when_any([w.decision for w in waits])
            for wait in [w for w in waits if w.decision.is_complete]:
                waits.remove(wait)
                metrics.APPROVAL_WAITS.decided(self.name, ctx.instance_id, wait.call["id"])
                approved, note = wait.outcome()
                if approved:
                    tool = self.tools[wait.call["name"]]
                    running.append((wait.call, self._schedule(ctx, state, tool, wait.call)))
                else:
                    self._record(
                        ctx, done, wait.call, "denied", "denied", f"denied: {note}" if note else None
                    )
            if not waits:
                self._publish_pending(ctx, calls_made, waits)
        for call, task in running:
            try:
                result = yield task
            except TaskFailedError as exc:
                details = exc.details
                self._record(ctx, done, call, f"{details.error_type}: {details.message}", "error")
            else:
                self._record(ctx, done, call, result, "ok")
        records = [done[c["id"]][0] for c in calls]
        tool_messages = [
            {"role": "tool", "tool_call_id": c["id"], "name": c["name"], "content": done[c["id"]][1]}
            for c in calls
        ]
        return records, tool_messages

    def _schedule(
        self, ctx: OrchestrationContext, state: dict[str, Any], tool: Tool[..., Any], call: dict[str, Any]
    ) -> Task[Any]:
        request = {
            "arguments": call["arguments"],
            "key": f"{state['turn']}:{call['id']}",
            "call_id": call["id"],
            "session": state["session"],
        }
        return ctx.call_activity(tool.activity_name, input=request, retry_policy=tool.retry_policy)

    def _record(
        self,
        ctx: OrchestrationContext,
        done: dict[str, tuple[dict[str, Any], str]],
        call: dict[str, Any],
        result: Any,
        status: str,
        content: str | None = None,
    ) -> None:
        record = {
            "id": call["id"],
            "name": call["name"],
            "arguments": call["arguments"],
            "result": result,
            "status": status,
        }
        if content is None:
            if status == "error":
                content = f"error: {result}"
            else:
                content = result if isinstance(result, str) else json.dumps(result, default=str)
        done[call["id"]] = (record, content)
        if not ctx.is_replaying:
            metrics.tool_call(
                self.name, str(call["name"]) if call["name"] in self.tools else "unknown", status
            )

    def _publish_pending(self, ctx: OrchestrationContext, calls_made: int, waits: list[_Wait]) -> None:
        pending = [
            {"id": w.call["id"], "name": w.call["name"], "arguments": w.call["arguments"]} for w in waits
        ]
        ctx.set_custom_status({"calls": calls_made, "pending": pending})


def _unique_ids(
    calls: list[dict[str, Any]], records: list[dict[str, Any]], index: int
) -> list[dict[str, Any]]:
    """The step's tool calls with ids unique in the turn (a model's id is kept when it is)."""
    seen = {str(r["id"]) for r in records}
    out: list[dict[str, Any]] = []
    for j, call in enumerate(calls):
        cid = str(call.get("id") or "")
        if not cid or cid in seen:
            cid = f"call-{index}-{j}"
            while cid in seen:
                cid += "x"
        seen.add(cid)
        out.append({"id": cid, "name": str(call["name"]), "arguments": dict(call.get("arguments") or {})})
    return out


def _outcome(
    state: dict[str, Any],
    messages: list[dict[str, Any]],
    records: list[dict[str, Any]],
    text: str,
    stopped: str | None,
) -> dict[str, Any]:
    return {
        "text": text,
        "tool_calls": records,
        "stopped": stopped,
        "messages": messages[int(state["start"]) :],
    }
