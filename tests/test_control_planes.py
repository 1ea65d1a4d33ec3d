"""Several control planes on one store answer as one: whichever accepted an invocation,
any of them shows it, steers it, completes its awakeables and returns its result, and once
things settle their List and Stats agree (each folds the same records bucket)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from durable import Client, Context, InvocationStatus, Service
from durable.contract import awakeable_id
from durable.testing import start_engine
from durable_server.control.server import ControlServer
from durable_server.natsd import EmbeddedNats

planes = Service("planes")


async def _eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + 20
    while not await check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.05)


@planes.handler()
async def wait_for(ctx: Context, n: int) -> int:
    _, woken = ctx.awakeable(int)
    got: int = await woken
    return n + got


async def test_two_control_planes_answer_as_one(nats_server: EmbeddedNats) -> None:
    async with (
        start_engine([planes], nats_url=nats_server.url) as engine,
        ControlServer(engine.config, "127.0.0.1:0") as other,
        Client(other.target) as second,
    ):
        first = engine.client
        ids = [(await first.invoke("planes/wait_for", i, wait=False)).id for i in range(20)]
        # The second one sees each invocation (even one only queued so far) ...
        for i in ids:
            assert (await second.get(i)).handler == "planes/wait_for"

        async def all_suspended() -> bool:
            views = await asyncio.gather(*(second.get(i) for i in ids))
            return all(v.status == InvocationStatus.SUSPENDED for v in views)

        await _eventually(all_suspended, "every invocation waits for its awakeable")
        # ... steers them, and completes their awakeables; the first returns the results.
        await second.cancel(ids[0], "not needed")
        for i in ids[1:]:
            await second.resolve_awakeable(awakeable_id(i, 0), 100)
        results = await asyncio.gather(*(first.result(i, timeout=30) for i in ids[1:]))
        assert results == [n + 100 for n in range(1, 20)]
        assert (await first.get(ids[0])).status == InvocationStatus.CANCELLED

        async def agree() -> bool:
            a, b = await asyncio.gather(first.stats(), second.stats())
            la, lb = await asyncio.gather(first.list(page_size=100), second.list(page_size=100))
            return (
                a.by_status == b.by_status
                and a.by_status.get(InvocationStatus.COMPLETED) == 19
                and [s.id for s in la.invocations] == [s.id for s in lb.invocations]
                and [s.status for s in la.invocations] == [s.status for s in lb.invocations]
            )

        await _eventually(agree, "both control planes list and count the same")
