"""Durable AI agents: an agent loop that survives crashes, with tools, human approval and memory.

Built only on durable's public pieces::

    from durable.agents import Agent, ScriptedModel, tool

    @tool
    def lookup_order(order_id: str) -> dict:
        '''Look an order up by its id.'''
        ...

    agent = Agent("support", model=ScriptedModel([...]), tools=[lookup_order])
    agent.register(worker)
    reply = agent.ask(client, "session-1", "Where is order 7?")

* The conversation lives in a durable entity, ``@agent-session@<session id>``.
* Each :meth:`Agent.ask` is a turn orchestration that locks the session, calls the model as an
  activity, runs the tool calls the model asks for as activities (in parallel), feeds the results
  back, and repeats until the model answers or ``max_steps`` model calls were made; then it
  appends the turn to the session. Its steps continue as new after every model call, so no
  history grows with the length of a turn.
* A completed tool call is never run again after a crash; a call in flight when its worker dies
  runs again, with the same idempotency key (``ctx.idempotency_key`` of a tool's
  :class:`~durable.ActivityContext` parameter).
* ``@tool(requires_approval=True)``: the call waits (holding no process) until a person decides
  with :meth:`Agent.approve`; a denial or ``approval_timeout`` makes its result ``"denied"``.

:class:`OpenAIChatModel` needs ``httpx``: ``pip install 'durable[agents]'``.
"""

from ._agent import DEFAULT_MODEL_RETRY_POLICY, Agent, AgentReply
from ._models import ChatModel, ModelError, ModelResponse, OpenAIChatModel, ScriptedModel, ToolCall
from ._session import SESSION_ENTITY, session_entity_id, trim_history
from ._tools import Tool, tool

__all__ = [
    "DEFAULT_MODEL_RETRY_POLICY",
    "SESSION_ENTITY",
    "Agent",
    "AgentReply",
    "ChatModel",
    "ModelError",
    "ModelResponse",
    "OpenAIChatModel",
    "ScriptedModel",
    "Tool",
    "ToolCall",
    "session_entity_id",
    "tool",
    "trim_history",
]
