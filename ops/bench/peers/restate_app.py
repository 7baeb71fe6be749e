"""The Restate service of the benchmark, served by hypercorn (``hypercorn restate_app:app``).

Sequential steps are ``ctx.run_typed`` journal entries (Restate's durable side effects); the
fan-out calls another handler once per unit (``ctx.service_call``) and waits with
``restate.gather``, Restate's pattern for parallel work.
"""

from __future__ import annotations

import restate
from restate import Context, Service

bench = Service("Bench")


async def noop(x: int) -> int:
    return x


@bench.handler()
async def chain(ctx: Context, n: int) -> int:
    for i in range(n):
        await ctx.run_typed(f"step-{i}", noop, restate.RunOptions(), i)
    return n


@bench.handler()
async def unit(ctx: Context, x: int) -> int:
    return await ctx.run_typed("step", noop, restate.RunOptions(), x)


@bench.handler()
async def fan(ctx: Context, n: int) -> int:
    calls = [ctx.service_call(unit, i) for i in range(n)]
    await restate.gather(*calls)
    total = 0
    for call in calls:
        await call
        total += 1
    return total


app = restate.app([bench])
