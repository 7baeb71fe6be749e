"""A durable AI support agent, as a runnable sample application.

The agent answers questions about orders with two tools: :func:`lookup_order` (runs at once) and
:func:`refund` (runs only after a person approves the call). Everything durable comes from
``durable.agents``: the conversation lives in the session entity ``@agent-session@<id>``, every
turn is an orchestration, the model and the tools are activities, and a refund waits for its
approval without holding a process.

The model is :class:`~durable.agents.ScriptedModel` (offline and deterministic: it looks the order
up, asks for the refund, then answers) unless ``$DURABLE_AGENT_BASE_URL`` or
``$DURABLE_AGENT_API_KEY`` is set; then it is :class:`~durable.agents.OpenAIChatModel` (with
``$DURABLE_AGENT_MODEL``).

Serve it with ``durable worker orchestrations.agent:worker``; run one conversation (worker and
client in this process) with ``python -m orchestrations.agent``. Tests register it on their own
worker with :func:`register`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import sys
import uuid
from collections.abc import Callable
from typing import Any

from durable import ActivityContext, Client, Worker
from durable.agents import Agent, AgentReply, ChatModel, OpenAIChatModel, ScriptedModel, tool

#: The shop's orders (a real app would query its database).
ORDERS: dict[str, dict[str, Any]] = {
    "7": {"id": "7", "item": "espresso machine", "total": 249.0, "status": "delivered", "damaged": True},
    "8": {"id": "8", "item": "coffee grinder", "total": 89.5, "status": "shipped", "damaged": False},
}

INSTRUCTIONS = (
    "You are the support agent of a small coffee-equipment shop. Look orders up before you answer. "
    "Refund a damaged delivery in full; a person approves every refund. Be brief and friendly."
)

#: What the scripted model says, whatever the question: look order 7 up, refund it, answer.
SCRIPT: list[str | list[dict[str, Any]]] = [
    [{"name": "lookup_order", "arguments": {"order_id": "7"}}],
    [{"name": "refund", "arguments": {"order_id": "7", "amount": 249.0}}],
    "Order 7 (the espresso machine) arrived damaged, so I asked for a full refund of 249.00; "
    "the refund's status above shows whether it was approved.",
]


@tool
def lookup_order(order_id: str) -> dict[str, Any]:
    """Look an order up by its id.

    Args:
        order_id: The order's id, as the customer gave it.
    """
    order = ORDERS.get(str(order_id).strip().lstrip("#"))
    if order is None:
        raise LookupError(f"there is no order {order_id!r}")
    return dict(order)


@tool(requires_approval=True)
def refund(ctx: ActivityContext, order_id: str, amount: float) -> dict[str, Any]:
    """Refund an amount of an order to the customer (a person approves every refund).

    Args:
        order_id: The order to refund.
        amount: How much to refund, at most the order's total.
    """
    order = lookup_order(order_id)
    if not 0 < float(amount) <= float(order["total"]):
        raise ValueError(f"cannot refund {amount} on an order of {order['total']}")
    # the payment provider de-duplicates on the idempotency key: a redelivered call refunds once
    reference = hashlib.blake2b(ctx.idempotency_key.encode(), digest_size=4).hexdigest().upper()
    return {"order": order["id"], "refunded": float(amount), "reference": f"RF-{reference}"}


def make_model() -> ChatModel:
    """The OpenAI-compatible model when one is configured, else the scripted one."""
    if os.environ.get("DURABLE_AGENT_BASE_URL") or os.environ.get("DURABLE_AGENT_API_KEY"):
        return OpenAIChatModel()
    return ScriptedModel(SCRIPT)


def build_agent(model: ChatModel | None = None) -> Agent:
    """The support agent, with ``model`` (default: :func:`make_model`)."""
    return Agent(
        "support",
        model=model or make_model(),
        tools=[lookup_order, refund],
        instructions=INSTRUCTIONS,
        max_steps=8,
        approval_timeout=dt.timedelta(hours=24),
    )


support_agent = build_agent()

QUESTION = "Hi! My order 7 arrived broken. Can I get my money back?"


def register(target: Worker) -> Worker:
    """Register the support agent (its orchestrations, tools and session entity) on ``target``."""
    return support_agent.register(target)


def converse(
    client: Client,
    session_id: str,
    *,
    question: str = QUESTION,
    approve: bool = True,
    timeout: float = 60,
    say: Callable[[str], object] = print,
) -> AgentReply:
    """One turn with a person in the loop: ask, approve (or deny) each refund, print the reply."""
    say(f"customer> {question}")
    turn = support_agent.start_turn(client, session_id, question)
    pending = support_agent.wait_for_approvals(client, session_id, turn_id=turn, timeout=timeout)
    for call in pending:
        verdict = "approves" if approve else "denies"
        say(f"supervisor {verdict} {call['name']}({call['arguments']})")
        support_agent.approve(
            client, session_id, call["id"], approved=approve, note=None if approve else "no"
        )
    reply = support_agent.wait_turn(client, turn, timeout=timeout)
    for call in reply.tool_calls:
        say(f"  tool {call['name']}({call['arguments']}) -> {call['status']}: {call['result']}")
    say(f"agent> {reply.text}")
    return reply


#: A worker with the agent registered, for ``durable worker orchestrations.agent:worker``. Creating
#: it connects to nothing: its Redis and hub are resolved when it starts.
worker = register(Worker())


def main() -> int:
    """Run one conversation with the worker and the client in this process."""
    with worker, Client() as client:
        converse(client, f"sample-{uuid.uuid4().hex[:8]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
