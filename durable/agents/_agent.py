"""The public :class:`Agent`: settings, registration on a worker, and the client-side calls."""

from __future__ import annotations

import datetime as _dt
import inspect
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio

from durable import (
    AsyncClient,
    Client,
    EntityState,
    FailureDetails,
    OrchestrationState,
    OrchestrationStatus,
    RetryPolicy,
    TaskFailedError,
    Worker,
)

from ._models import ChatModel
from ._session import SESSION_ENTITY, AgentSession, conversation, session_entity_id
from ._tools import Tool
from ._turn import AgentCode, approval_event, steps_instance_id

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

#: The model retry policy when none is given: 6 attempts, 1 s apart at first, doubling up to 30 s.
DEFAULT_MODEL_RETRY_POLICY = RetryPolicy(
    first_retry_interval=_dt.timedelta(seconds=1),
    max_number_of_attempts=6,
    backoff_coefficient=2.0,
    max_retry_interval=_dt.timedelta(seconds=30),
)


@dataclass(frozen=True)
class AgentReply:
    """What one turn answered.

    ``text``: the model's final answer (``""`` when the turn stopped first). ``tool_calls``: every
    tool call of the turn in order, ``{"id", "name", "arguments", "result", "status"}`` with status
    ``"ok"``, ``"error"`` (the result is the error) or ``"denied"`` (refused, or not approved in
    time). ``stopped``: ``"max_steps"`` when the turn hit ``max_steps`` model calls, else None.
    """

    text: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None


class Agent:
    """A durable AI agent: a model, tools, and conversations that survive crashes.

    ``name`` names the agent's orchestrations and activities (``agent:<name>`` is the turn).
    ``model``: a :class:`ScriptedModel`, an :class:`OpenAIChatModel` or any :class:`ChatModel`.
    ``tools``: functions made tools with :func:`tool` (a plain function is made one).
    ``instructions``: the system message. ``max_steps``: the most model calls in one turn.
    ``approval_timeout``: how long a tool call waits for approval before it is denied (None:
    forever). ``model_retry_policy``: how failed model calls are retried (None:
    :data:`DEFAULT_MODEL_RETRY_POLICY`; only transient errors are retried, see
    :class:`ModelError`). ``max_history_messages``: the session keeps at most this many messages;
    older turns are summarised (see :mod:`durable.agents._session` for the policy).

    Every worker of the hub registers the agent (:meth:`register`); any process with a
    :class:`~durable.Client` can talk to it (:meth:`ask`, :meth:`approve`, ...).
    """

    def __init__(
        self,
        name: str,
        *,
        model: ChatModel,
        tools: Iterable[Tool[..., Any] | Callable[..., Any]] = (),
        instructions: str = "",
        max_steps: int = 20,
        approval_timeout: _dt.timedelta | None = _dt.timedelta(hours=24),
        model_retry_policy: RetryPolicy | None = None,
        max_history_messages: int = 50,
    ) -> None:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(f"invalid agent name {name!r}: use up to 64 letters, digits, '_', '.' or '-'")
        if max_steps < 1:
            raise ValueError("max_steps must be at least 1")
        if max_history_messages < 1:
            raise ValueError("max_history_messages must be at least 1")
        if approval_timeout is not None and approval_timeout <= _dt.timedelta(0):
            raise ValueError("approval_timeout must be positive (or None: wait for ever)")
        if not callable(getattr(model, "complete", None)):
            raise TypeError(f"model {model!r} has no complete(messages, tools, *, call_index) method")
        table: dict[str, Tool[..., Any]] = {}
        for item in tools:
            t = item if isinstance(item, Tool) else Tool(item)
            if t.name in table and table[t.name] is not t:
                raise ValueError(f"two tools are named {t.name!r}")
            table[t.name] = t
        self.name = name
        self.model = model
        self.tools = table
        self.instructions = instructions
        self.max_steps = max_steps
        self.approval_timeout = approval_timeout
        self.model_retry_policy = model_retry_policy or DEFAULT_MODEL_RETRY_POLICY
        self.max_history_messages = max_history_messages
        self._code = AgentCode(
            name=name,
            model=model,
            tools=table,
            instructions=instructions,
            max_steps=max_steps,
            approval_timeout=approval_timeout,
            model_retry_policy=self.model_retry_policy,
            max_history_messages=max_history_messages,
        )
        # bound once, so registering the agent again (or on another worker) is harmless
        self._turn = self._code.turn
        self._steps = self._code.steps
        is_async = inspect.iscoroutinefunction(getattr(model, "complete", None))
        self._model_activity: Callable[..., Any] = (
            self._code.call_model_async if is_async else self._code.call_model
        )

    def __repr__(self) -> str:
        return f"<Agent {self.name!r} model={self.model!r} tools={sorted(self.tools)}>"

    # -- names -----------------------------------------------------------------------------------
    @property
    def turn_orchestrator(self) -> str:
        """The name of the turn orchestration (one instance per :meth:`ask`)."""
        return self._code.turn_name

    @property
    def steps_orchestrator(self) -> str:
        """The name of the steps orchestration (a turn's model calls and tool calls)."""
        return self._code.steps_name

    @property
    def model_activity(self) -> str:
        """The name of the model activity."""
        return self._code.model_activity_name

    # -- the worker side -------------------------------------------------------------------------
    def register(self, worker: Worker) -> Worker:
        """Register the turn and steps orchestrations, the model activity, the tools and the
        session entity on ``worker``; returns it. Every worker of the hub must do it."""
        worker.add_orchestrator(self._turn, name=self.turn_orchestrator)
        worker.add_orchestrator(self._steps, name=self.steps_orchestrator)
        worker.add_activity(self._model_activity, self.model_activity)
        for t in self.tools.values():
            worker.add_activity(t.activity, t.activity_name)
        worker.add_entity(AgentSession, SESSION_ENTITY)
        return worker

    # -- the client side -------------------------------------------------------------------------
    # Every call has a twin for AsyncClient (``..._async``); the pure parts are shared below.
    def _new_turn(self, session_id: str, message: str, turn_id: str | None) -> tuple[str, dict[str, Any]]:
        session_entity_id(session_id)  # validates the id
        turn_id = turn_id or f"{self.name}:{session_id}:{uuid.uuid4().hex}"
        return turn_id, {"session": session_id, "message": str(message)}

    def instance_ids(self, turn_id: str) -> list[str]:
        """The orchestration instances of a turn: the turn and its steps (to purge them, say)."""
        return [turn_id, steps_instance_id(turn_id)]

    def start_turn(self, client: Client, session_id: str, message: str, *, turn_id: str | None = None) -> str:
        """Start a turn and return its instance id at once (for :meth:`wait_turn`). A ``turn_id``
        of your own makes the start idempotent: starting it again while it runs raises
        :class:`~durable.OrchestrationAlreadyExistsError`."""
        turn_id, request = self._new_turn(session_id, message, turn_id)
        return client.schedule_new_orchestration(self.turn_orchestrator, input=request, instance_id=turn_id)

    async def start_turn_async(
        self, client: AsyncClient, session_id: str, message: str, *, turn_id: str | None = None
    ) -> str:
        """:meth:`start_turn` with an :class:`~durable.AsyncClient`."""
        turn_id, request = self._new_turn(session_id, message, turn_id)
        return await client.schedule_new_orchestration(
            self.turn_orchestrator, input=request, instance_id=turn_id
        )

    def wait_turn(self, client: Client, turn_id: str, *, timeout: float = 60) -> AgentReply:
        """Wait for a turn's reply. Raises TimeoutError (the turn goes on) and TaskFailedError
        (the turn failed: a model error that retries did not fix, or it was terminated)."""
        return _reply(client.wait_for_orchestration_completion(turn_id, timeout=timeout))

    async def wait_turn_async(self, client: AsyncClient, turn_id: str, *, timeout: float = 60) -> AgentReply:
        """:meth:`wait_turn` with an :class:`~durable.AsyncClient`."""
        return _reply(await client.wait_for_orchestration_completion(turn_id, timeout=timeout))

    def ask(self, client: Client, session_id: str, message: str, timeout: float = 60) -> AgentReply:
        """Send ``message`` in session ``session_id`` and wait for the reply (one turn).

        Turns of one session run one at a time, in the order they lock the session. While a tool
        call waits for approval the turn waits too: answer it from another thread or process
        (:meth:`pending_approvals`, :meth:`approve`), or use :meth:`start_turn` and
        :meth:`wait_turn`."""
        return self.wait_turn(client, self.start_turn(client, session_id, message), timeout=timeout)

    async def ask_async(
        self, client: AsyncClient, session_id: str, message: str, timeout: float = 60
    ) -> AgentReply:
        """:meth:`ask` with an :class:`~durable.AsyncClient`."""
        turn_id = await self.start_turn_async(client, session_id, message)
        return await self.wait_turn_async(client, turn_id, timeout=timeout)

    def pending_approvals(self, client: Client, session_id: str) -> list[dict[str, Any]]:
        """The session's tool calls waiting for approval now: ``[{"id", "name", "arguments"}]``."""
        turn = _active_turn(client.get_entity(session_entity_id(session_id)))
        if turn is None:
            return []
        return _pending(client.get_orchestration_state(steps_instance_id(turn)))

    async def pending_approvals_async(self, client: AsyncClient, session_id: str) -> list[dict[str, Any]]:
        """:meth:`pending_approvals` with an :class:`~durable.AsyncClient`."""
        turn = _active_turn(await client.get_entity(session_entity_id(session_id)))
        if turn is None:
            return []
        return _pending(await client.get_orchestration_state(steps_instance_id(turn)))

    def wait_for_approvals(
        self, client: Client, session_id: str, *, turn_id: str | None = None, timeout: float = 60
    ) -> list[dict[str, Any]]:
        """Wait until a tool call of the session waits for approval, and return the waiting calls
        (as :meth:`pending_approvals`). With ``turn_id``, return ``[]`` as soon as that turn ends
        without asking. Raises TimeoutError. (It polls, backing off to a few reads a second: a
        change of the waiting calls sends no notification.)"""
        backoff = _Backoff(session_id, timeout)
        while True:
            pending = self.pending_approvals(client, session_id)
            if pending:
                return pending
            if turn_id is not None and _ended(client.get_orchestration_state(turn_id)):
                return []
            time.sleep(backoff.next())

    async def wait_for_approvals_async(
        self, client: AsyncClient, session_id: str, *, turn_id: str | None = None, timeout: float = 60
    ) -> list[dict[str, Any]]:
        """:meth:`wait_for_approvals` with an :class:`~durable.AsyncClient`."""
        backoff = _Backoff(session_id, timeout)
        while True:
            pending = await self.pending_approvals_async(client, session_id)
            if pending:
                return pending
            if turn_id is not None and _ended(await client.get_orchestration_state(turn_id)):
                return []
            await anyio.sleep(backoff.next())

    def approve(
        self, client: Client, session_id: str, call_id: str, approved: bool = True, note: str | None = None
    ) -> None:
        """Decide on a tool call waiting for approval (``approved=False`` denies it; the model
        sees ``"denied"``, with the note if one is given). Raises LookupError when no such call
        waits in the session."""
        turn = _active_turn(client.get_entity(session_entity_id(session_id)))
        state = client.get_orchestration_state(steps_instance_id(turn)) if turn else None
        target, event, data = _decision(session_id, turn, state, call_id, approved, note)
        client.raise_orchestration_event(target, event, data=data)

    async def approve_async(
        self,
        client: AsyncClient,
        session_id: str,
        call_id: str,
        approved: bool = True,
        note: str | None = None,
    ) -> None:
        """:meth:`approve` with an :class:`~durable.AsyncClient`."""
        turn = _active_turn(await client.get_entity(session_entity_id(session_id)))
        state = await client.get_orchestration_state(steps_instance_id(turn)) if turn else None
        target, event, data = _decision(session_id, turn, state, call_id, approved, note)
        await client.raise_orchestration_event(target, event, data=data)

    def history(self, client: Client, session_id: str) -> list[dict[str, Any]]:
        """The session's conversation: ``{"role", "content", ...}`` messages, oldest first (a
        summary of trimmed turns comes first as a system message)."""
        return _conversation(client.get_entity(session_entity_id(session_id)))

    async def history_async(self, client: AsyncClient, session_id: str) -> list[dict[str, Any]]:
        """:meth:`history` with an :class:`~durable.AsyncClient`."""
        return _conversation(await client.get_entity(session_entity_id(session_id)))


# -- the pure parts of the client side ---------------------------------------------------------------


def _reply(state: OrchestrationState) -> AgentReply:
    state.raise_if_failed()
    if state.runtime_status != OrchestrationStatus.COMPLETED:
        message = f"turn {state.instance_id!r} ended {state.runtime_status.value}"
        raise TaskFailedError(message, FailureDetails(message, "TurnNotCompletedError"))
    out = state.output or {}
    return AgentReply(
        text=str(out.get("text") or ""),
        tool_calls=list(out.get("tool_calls") or []),
        stopped=out.get("stopped"),
    )


def _session_state(entity: EntityState | None) -> dict[str, Any] | None:
    state = entity.state if entity is not None else None
    return state if isinstance(state, dict) else None


def _active_turn(entity: EntityState | None) -> str | None:
    turn = (_session_state(entity) or {}).get("active_turn")
    return str(turn) if turn else None


def _conversation(entity: EntityState | None) -> list[dict[str, Any]]:
    return conversation(_session_state(entity))


def _ended(state: OrchestrationState | None) -> bool:
    return state is not None and state.runtime_status.is_terminal


def _pending(steps: OrchestrationState | None) -> list[dict[str, Any]]:
    status = steps.custom_status if steps is not None else None
    if steps is None or _ended(steps) or not isinstance(status, dict):
        return []
    return [dict(p) for p in status.get("pending") or []]


def _decision(
    session_id: str,
    turn: str | None,
    steps: OrchestrationState | None,
    call_id: str,
    approved: bool,
    note: str | None,
) -> tuple[str, str, dict[str, Any]]:
    """(instance, event name, event data) of a decision; LookupError when the call does not wait."""
    if turn is None or call_id not in {p["id"] for p in _pending(steps)}:
        raise LookupError(f"no tool call {call_id!r} waits for approval in session {session_id!r}")
    return steps_instance_id(turn), approval_event(call_id), {"approved": bool(approved), "note": note}


class _Backoff:
    """The waits of a polling loop: 10 ms doubling to 250 ms, until the deadline."""

    def __init__(self, session_id: str, timeout: float) -> None:
        self.session_id = session_id
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.delay = 0.01

    def next(self) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"no tool call waited for approval in session {self.session_id!r} within {self.timeout}s"
            )
        wait, self.delay = min(self.delay, remaining), min(self.delay * 2, 0.25)
        return wait
