"""Version 2: ``pinned/flow`` and ``loose/drifting`` renamed their first step (not
replayable over a v1 journal); ``loose/steady`` is unchanged."""

from durable import Context, Service
from tests.versions import NAP

pinned = Service("pinned", pin_version=True)
loose = Service("loose")


async def _same(n: int) -> int:
    return n


@pinned.handler()
async def flow(ctx: Context, n: int) -> str:
    await ctx.run("first-v2", _same, n)
    await ctx.sleep(NAP)
    await ctx.run("second", _same, n)
    return f"v2:{n}"


@loose.handler()
async def steady(ctx: Context, n: int) -> str:
    await ctx.run("first", _same, n)
    await ctx.sleep(NAP)
    await ctx.run("second", _same, n)
    return f"v2:{n}"


@loose.handler()
async def drifting(ctx: Context, n: int) -> str:
    await ctx.run("first-renamed", _same, n)
    await ctx.sleep(NAP)
    await ctx.run("second", _same, n)
    return f"v2:{n}"
