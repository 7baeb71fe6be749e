"""The orchestration patterns' part of ``durable demo``: every pattern once (human interaction
twice, retries twice), with the output each one should produce, and the support agent of
:mod:`orchestrations.agent` with its scripted model.

``durable demo`` (:mod:`durable._cli.demo`) imports this module, registers the patterns and the
agent on its in-process worker with :func:`register` and runs :func:`cases`.
"""

from __future__ import annotations

from typing import Any

from durable import OrchestrationStatus, Worker
from durable._cli.demo_cases import (
    Case,
    DemoRun,
    DemoSettings,
    OrchestrationCase,
    Outcome,
    ScriptCase,
    expect,
)
from durable.agents import SESSION_ENTITY, ScriptedModel

from . import agent, patterns

__all__ = ["GROUP", "cases", "register"]

#: The name of these patterns in the demo's summary.
GROUP = "Orchestrations"

#: The sample support agent, always with its scripted model here (offline and deterministic).
DEMO_AGENT = agent.build_agent(ScriptedModel(agent.SCRIPT))
#: Generous: the demo's own timeout bounds every wait.
_WAIT_S = 3600.0


def register(worker: Worker) -> Worker:
    """Register the patterns and the demo's support agent on ``worker``; returns it."""
    patterns.register(worker)
    return DEMO_AGENT.register(worker)


async def support_agent_script(run: DemoRun) -> dict[str, Any]:
    """One turn of the support agent: it looks the order up, asks for a refund, which waits for
    the supervisor (played by the demo), then answers."""
    session = run.entity(SESSION_ENTITY, "support").key  # the session entity, deleted at the end
    turn = run.key("support-turn")
    for instance_id in DEMO_AGENT.instance_ids(turn):
        run.track(instance_id)
    await DEMO_AGENT.start_turn_async(run.client, session, agent.QUESTION, turn_id=turn)
    run.progress("the model asks for tools")
    pending = await DEMO_AGENT.wait_for_approvals_async(run.client, session, turn_id=turn, timeout=_WAIT_S)
    for call in pending:
        run.progress(f"supervisor approves {call['name']} of {call['arguments'].get('amount')}")
        await DEMO_AGENT.approve_async(run.client, session, call["id"])
    reply = await DEMO_AGENT.wait_turn_async(run.client, turn, timeout=_WAIT_S)
    history = await DEMO_AGENT.history_async(run.client, session)
    return {
        "tools": [(c["name"], c["status"]) for c in reply.tool_calls],
        "approved": [c["name"] for c in pending],
        "results": [c["result"] for c in reply.tool_calls],
        "text": reply.text,
        "messages": len(history),
    }


def _agent_text(o: Outcome) -> str:
    refund = o.output["results"][-1]
    return (
        f"looked order 7 up, refund of {refund['refunded']} approved and paid ({refund['reference']}), "
        f"answered; {o.output['messages']} messages in the session"
    )


def cases(settings: DemoSettings) -> list[Case]:
    """The demo's orchestration instances."""
    fan_out = settings.fan_out
    order = patterns.sample_order(1)
    total_squares = sum(i * i for i in range(1, fan_out + 1))
    sub_count = 5
    monitor_input = {"job": "nightly-export", "interval_s": 0.4, "max_checks": 10, "ready_after": 4}
    retry_input = {"fail_times": 2, "max_attempts": 4, "first_retry_s": 0.2}
    give_up_input = {"fail_times": 5, "max_attempts": 2, "first_retry_s": 0.2}

    def chaining_text(o: Outcome) -> str:
        out = o.output
        return f"order {out['order']} {out['status']}, total {out['total']}, {out['tracking']}"

    def fan_text(o: Outcome) -> str:
        return f"{o.output['items']} results aggregated, total {o.output['total']}"

    def monitor_text(o: Outcome) -> str:
        out = o.output
        return f"job {out['job']} {out['status']} after {out['checks']} checks (continue-as-new)"

    def sub_text(o: Outcome) -> str:
        return f"{o.output['orders']} child orchestrations, revenue {o.output['revenue']}"

    def children(parent_id: str) -> list[str]:
        return [
            patterns.child_instance_id(parent_id, patterns.sample_order(i)) for i in range(1, sub_count + 1)
        ]

    return [
        OrchestrationCase(
            "chaining",
            "function chaining",
            patterns.function_chaining,
            order,
            check=lambda o: expect(o.output["status"] == "shipped", "order not shipped"),
            describe=chaining_text,
        ),
        OrchestrationCase(
            "fan-out",
            f"fan-out/fan-in ({fan_out})",
            patterns.fan_out_fan_in,
            {"count": fan_out},
            check=lambda o: expect(
                o.output == {"items": fan_out, "total": total_squares}, f"wrong aggregate {o.output!r}"
            ),
            describe=fan_text,
            progress_activity=(patterns.process_item.__name__, fan_out),
            rate_label="Fan-out/fan-in",
        ),
        OrchestrationCase(
            "approved",
            "human interaction: approved",
            patterns.human_interaction,
            {"subject": "new laptop", "approver": "alice", "timeout_s": 30},
            check=lambda o: expect(o.output == "approved", f"got {o.output!r}"),
            describe=lambda o: str(o.output),
            approve_event=patterns.APPROVAL_EVENT,
        ),
        OrchestrationCase(
            "timeout",
            "human interaction: timeout",
            patterns.human_interaction,
            {"subject": "conference trip", "approver": "bob", "timeout_s": 2},
            check=lambda o: expect(o.output == "timed out", f"got {o.output!r}"),
            describe=lambda o: f"{o.output} (no approval within 2s)",
        ),
        OrchestrationCase(
            "monitor",
            "monitor",
            patterns.monitor,
            monitor_input,
            check=lambda o: expect(
                o.output == {"job": "nightly-export", "status": "done", "checks": 4}, f"got {o.output!r}"
            ),
            describe=monitor_text,
        ),
        OrchestrationCase(
            "sub",
            f"sub-orchestrations ({sub_count})",
            patterns.sub_orchestrations,
            {"count": sub_count},
            check=lambda o: expect(
                o.output["orders"] == sub_count and len(o.output["tracking"]) == sub_count,
                f"got {o.output!r}",
            ),
            describe=sub_text,
            children=children,
        ),
        OrchestrationCase(
            "retry",
            "retry: recovers",
            patterns.retry_with_backoff,
            retry_input,
            check=lambda o: expect(o.output["attempts"] == 3, f"got {o.output!r}"),
            describe=lambda o: str(o.output["result"]),
            hint="calling a flaky service: fails twice, up to 4 attempts with backoff",
        ),
        OrchestrationCase(
            "give-up",
            "retry: gives up",
            patterns.retry_with_backoff,
            give_up_input,
            check=lambda o: expect(
                o.failure is not None and "attempt 2" in o.failure, "missing failure details"
            ),
            describe=lambda o: f"gave up: {o.failure}" if o.failure else "failed",
            hint="calling a flaky service: fails 5 times, only 2 attempts allowed",
            expected_status=OrchestrationStatus.FAILED,
        ),
        ScriptCase(
            "agent",
            "AI agent: tools and approval",
            support_agent_script,
            check=lambda o: expect(
                o.output["tools"] == [("lookup_order", "ok"), ("refund", "ok")]
                and o.output["approved"] == ["refund"]
                and o.output["text"] == agent.SCRIPT[-1],
                f"got {o.output!r}",
            ),
            describe=_agent_text,
            hint="a support agent (scripted model) with a tool that needs approval",
        ),
    ]
