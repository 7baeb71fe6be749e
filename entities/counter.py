"""Counter: the function form of an entity.

A function entity is called once per operation with the entity's context and the operation's
input. It reads and replaces its state through the context; whatever it returns answers a call
(``ctx.call_entity`` in an orchestration) and is ignored for a signal.

========== ============ ===========================================================
Operation  Input        Effect
========== ============ ===========================================================
``add``    an integer   adds it (default 1); returns the new value
``reset``  --           sets the value to 0
``get``    --           returns the value (0 for a counter that does not exist yet)
``delete`` --           removes the counter
========== ============ ===========================================================

Signal it from anywhere: ``client.signal_entity("@counter@visits", "add", input=1)``, from an
orchestration or another entity, or with one ``XADD`` from any language (docs/wire-format.md).
"""

from __future__ import annotations

from typing import Any

from durable import EntityContext

#: The registered name of :func:`counter` (entity ids ``@counter@<key>``).
COUNTER = "counter"


def counter(ctx: EntityContext, amount: Any = None) -> int | None:
    """A counter entity (function form); see the module docstring for its operations."""
    operation = ctx.operation
    if operation == "add":
        step = 1 if amount is None else amount
        if not isinstance(step, int) or isinstance(step, bool):
            raise TypeError(f"counter: 'add' expects an integer, got {amount!r}")
        value = int(ctx.get_state(0)) + step
        ctx.set_state(value)
        return value
    if operation == "reset":
        ctx.set_state(0)
        return 0
    if operation == "get":
        return int(ctx.get_state(0))
    if operation == "delete":
        ctx.delete_state()
        return None
    raise ValueError(f"counter has no operation {operation!r} (add, reset, get, delete)")
