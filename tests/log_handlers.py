"""A handler whose first attempt fails after one step (tests/test_log_format.py)."""

from __future__ import annotations

from durable import Context, RetryPolicy, Service

shaky = Service("shaky", retry=RetryPolicy(initial_interval=0.05, maximum_attempts=5))


async def _one() -> int:
    return 1


@shaky.handler()
async def once(ctx: Context, n: int) -> int:
    got = await ctx.run("first", _one)
    if ctx.attempt == 1:
        raise RuntimeError("the first attempt fails")
    return n + got
