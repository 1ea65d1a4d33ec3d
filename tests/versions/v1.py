"""Version 1: each handler runs ``first``, sleeps, then runs ``second``."""

from durable import Context, Service
from tests.versions import NAP

pinned = Service("pinned", pin_version=True)
loose = Service("loose")


async def _same(n: int) -> int:
    return n


@pinned.handler()
async def flow(ctx: Context, n: int) -> str:
    await ctx.run("first", _same, n)
    await ctx.sleep(NAP)
    await ctx.run("second", _same, n)
    return f"v1:{n}"


@loose.handler()
async def steady(ctx: Context, n: int) -> str:
    await ctx.run("first", _same, n)
    await ctx.sleep(NAP)
    await ctx.run("second", _same, n)
    return f"v1:{n}"


@loose.handler()
async def drifting(ctx: Context, n: int) -> str:
    await ctx.run("first", _same, n)
    await ctx.sleep(NAP)
    await ctx.run("second", _same, n)
    return f"v1:{n}"
