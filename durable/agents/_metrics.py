"""The agents' metrics (families defined with the others in ``durable._runtime.metrics``).

* ``durable_agent_model_calls_total{agent, status}``: every model call attempt, counted by the
  model activity (``completed`` or ``failed``; a failed attempt may be retried).
* ``durable_agent_tool_calls_total{agent, tool, status}``: every tool call's outcome (``ok``,
  ``error``, ``denied``), counted by the turn when the outcome is recorded (not when replaying).
* ``durable_agent_approvals_waiting{agent}``: tool calls waiting for approval in the turns this
  worker process runs. A wait counts from when the turn reaches it (live or in a replay) until
  the decision is applied, or until its deadline (``approval_timeout``) has passed; summed over
  workers it is exact, except that after a partition moves between two live workers a wait may
  count on both until it is decided. :meth:`Agent.pending_approvals` is the exact view.
"""

from __future__ import annotations

import threading
import time

from durable._runtime import metrics as m


def model_call(agent: str, status: str) -> None:
    """Count one model call attempt (``completed`` or ``failed``)."""
    m.AGENT_MODEL_CALLS.labels(agent=agent, status=status).inc()


def tool_call(agent: str, tool: str, status: str) -> None:
    """Count one tool call outcome (``ok``, ``error`` or ``denied``)."""
    m.AGENT_TOOL_CALLS.labels(agent=agent, tool=tool, status=status).inc()


class ApprovalWaits:
    """The approval waits of this process, by (agent, instance id, call id), with deadlines.

    The gauge reads them when it is scraped, so a wait past its deadline (plus
    :attr:`GRACE_S`) stops counting even if nothing else happens."""

    #: how long past its deadline a wait that was never decided here still counts
    GRACE_S = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waits: dict[tuple[str, str, str], float] = {}
        self._agents: set[str] = set()

    def waiting(self, agent: str, instance_id: str, call_id: str, timeout_s: float | None) -> None:
        """A turn waits for a decision on a call (idempotent: replays may report it again)."""
        now = time.monotonic()
        deadline = now + timeout_s + self.GRACE_S if timeout_s is not None else float("inf")
        with self._lock:
            self._waits.setdefault((agent, instance_id, call_id), deadline)
            for key in [k for k, d in self._waits.items() if d < now]:
                del self._waits[key]
            if agent not in self._agents:
                self._agents.add(agent)
                m.AGENT_APPROVALS_WAITING.labels(agent=agent).set_function(lambda: self.count(agent))

    def decided(self, agent: str, instance_id: str, call_id: str) -> None:
        """The decision on a call was applied (idempotent)."""
        with self._lock:
            self._waits.pop((agent, instance_id, call_id), None)

    def count(self, agent: str) -> int:
        """Waits of ``agent`` now (those past their deadline and grace excluded)."""
        now = time.monotonic()
        with self._lock:
            return sum(1 for (name, _, _), d in self._waits.items() if name == agent and d >= now)


#: The process's approval waits (one per process, like the metric families).
APPROVAL_WAITS = ApprovalWaits()
