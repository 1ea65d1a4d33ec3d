"""A handler whose every payload carries a marker (tests/test_no_payload_logs.py): input,
step result, state, awakeable value, output."""

from __future__ import annotations

from durable import ObjectContext, VirtualObject

MARK = "S3CR3T-MARK-7f1c"

vault = VirtualObject("vault")


async def _echo(text: str) -> str:
    return f"{text}-step"


@vault.handler()
async def keep(ctx: ObjectContext, text: str) -> str:
    step = await ctx.run("echo", _echo, text)
    ctx.set("value", f"{step}-state")
    _, woken = ctx.awakeable(str)
    got: str = await woken
    return f"{text}-{got}-out"
