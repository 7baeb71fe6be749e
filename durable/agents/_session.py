"""The conversation memory: one durable entity per session, ``@agent-session@<session id>``.

The entity holds the session's messages, a short summary of the turns that no longer fit, the
number of finished turns and the turn running now. Only a turn orchestration that holds the
session's lock changes it (``begin``, then ``finish`` or ``abort``), so turns of one session
never interleave.

History policy (applied by ``finish``, at the end of every turn): when the session holds more
than ``limit`` messages, whole turns are dropped from the front, oldest first, until it fits (the
latest turn always stays, even if it alone is longer). Each dropped turn leaves one line per
question and answer in the summary (``user: ...``, ``assistant: ...`` and the tools it used, each
clipped to :data:`SUMMARY_CLIP` characters); the summary keeps its newest :data:`SUMMARY_MAX_CHARS`
characters. The model sees the summary as a system message before the kept messages, and
:meth:`Agent.history` shows it the same way. No model call is made to summarise: the policy is
deterministic, cheap and easy to reason about.
"""

from __future__ import annotations

from typing import Any

from durable import Entity, EntityId

#: The entity name of sessions: a session's id is ``@agent-session@<session id>``.
SESSION_ENTITY = "agent-session"
#: How the summary of dropped turns starts, as the system message the model and history() show.
SUMMARY_PREFIX = "Summary of the earlier conversation:\n"
#: Each summary line holds at most this many characters of a question or an answer ...
SUMMARY_CLIP = 200
#: ... and the summary at most this many characters (the oldest lines go first).
SUMMARY_MAX_CHARS = 4000


def session_entity_id(session_id: str) -> EntityId:
    """The id of a session's entity."""
    return EntityId(SESSION_ENTITY, session_id)


def new_session_state() -> dict[str, Any]:
    """The state of a session that has no turn yet."""
    return {"messages": [], "summary": "", "turns": 0, "active_turn": None}


def conversation(state: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The conversation as the model sees it: the summary (if any), then the kept messages."""
    if not state:
        return []
    out: list[dict[str, Any]] = []
    if state.get("summary"):
        out.append({"role": "system", "content": SUMMARY_PREFIX + str(state["summary"])})
    out.extend(state.get("messages") or [])
    return out


def _clip(text: Any) -> str:
    value = " ".join(str(text or "").split())
    return value if len(value) <= SUMMARY_CLIP else value[: SUMMARY_CLIP - 3] + "..."


def _split_turns(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    turns: list[list[dict[str, Any]]] = []
    for message in messages:
        if message.get("role") == "user" or not turns:
            turns.append([])
        turns[-1].append(message)
    return turns


def _summary_lines(turn: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    tools: list[str] = []
    answer: str | None = None
    for message in turn:
        role = message.get("role")
        if role == "user":
            lines.append(f"user: {_clip(message.get('content'))}")
        elif role == "assistant":
            tools.extend(str(c.get("name")) for c in message.get("tool_calls") or [])
            if message.get("content"):
                answer = str(message["content"])
    if tools:
        lines.append(f"tools used: {', '.join(dict.fromkeys(tools))}")
    if answer is not None:
        lines.append(f"assistant: {_clip(answer)}")
    return lines


def trim_history(
    messages: list[dict[str, Any]], summary: str, limit: int
) -> tuple[list[dict[str, Any]], str]:
    """Apply the history policy (see the module documentation): (kept messages, new summary)."""
    if len(messages) <= limit:
        return messages, summary
    turns = _split_turns(messages)
    size = len(messages)
    dropped: list[str] = []
    while len(turns) > 1 and size > limit:
        turn = turns.pop(0)
        size -= len(turn)
        dropped.extend(_summary_lines(turn))
    lines = [line for line in summary.split("\n") if line] + dropped
    while lines and len("\n".join(lines)) > SUMMARY_MAX_CHARS:
        lines.pop(0)
    return [m for turn in turns for m in turn], "\n".join(lines)


class AgentSession(Entity):
    """The session entity (registered as ``agent-session`` by :meth:`Agent.register`)."""

    def initial_state(self) -> dict[str, Any]:
        return new_session_state()

    def begin(self, turn: str) -> dict[str, Any]:
        """A turn starts (its orchestration holds the lock): returns the session's state."""
        self.state["active_turn"] = turn
        return dict(self.state)

    def finish(self, update: dict[str, Any]) -> dict[str, Any]:
        """A turn ends: append its messages, apply the history policy; returns the new counts."""
        messages = list(self.state.get("messages") or []) + list(update.get("messages") or [])
        limit = max(int(update.get("limit") or 0), 1)
        messages, summary = trim_history(messages, str(self.state.get("summary") or ""), limit)
        self.state["messages"] = messages
        self.state["summary"] = summary
        self.state["turns"] = int(self.state.get("turns") or 0) + 1
        if self.state.get("active_turn") == update.get("turn"):
            self.state["active_turn"] = None
        return {"turns": self.state["turns"], "messages": len(messages)}

    def abort(self, turn: str) -> None:
        """A turn failed: the session forgets that it was running and keeps its messages."""
        if self.state.get("active_turn") == turn:
            self.state["active_turn"] = None
