"""The handler `make bench` measures: a service whose workflow is three trivial durable steps.

Hosted by a ``durable worker --module durable_server.bench_handlers`` process started by
:mod:`durable_server.bench`. Each step is a ``ctx.run`` of a trivial async function that
adds one, so the figures measure the engine (journal writes, scheduling, gRPC), not the work.
(A sync function adds a hop to a worker thread and back, about 0.1 ms per step.)
"""

from __future__ import annotations

from durable import Context, Service

__all__ = ["HANDLER", "LONG_HANDLER", "STEPS", "bench", "long_wait", "three_steps"]

bench = Service("bench", description="Benchmark workload: three trivial durable steps")

#: Full name clients pass to Invoke.
HANDLER = "bench/three_steps"
#: Durable steps per invocation of :data:`HANDLER`.
STEPS = 3


async def _add_one(x: int) -> int:
    return x + 1


@bench.handler()
async def three_steps(ctx: Context, x: int) -> int:
    """Runs three journaled steps, each adding one; returns ``x + 3``."""
    a = await ctx.run("one", _add_one, x)
    b = await ctx.run("two", _add_one, a)
    return await ctx.run("three", _add_one, b)


#: Full name of :func:`long_wait`.
LONG_HANDLER = "bench/long_wait"


@bench.handler()
async def long_wait(ctx: Context, steps: int) -> int:
    """Journals ``steps`` trivial steps, then waits for an awakeable (step ``steps``, id
    ``awk_<invocation>_<steps>``): its wake-up reads the whole journal and replays it."""
    x = 0
    for i in range(steps):
        x = await ctx.run(f"s{i}", _add_one, x)
    _, woken = ctx.awakeable(int)
    woke: int = await woken
    return x + woke
