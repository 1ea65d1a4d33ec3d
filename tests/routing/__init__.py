"""Three services, each in its own module, for the routing tests (tests/test_routing.py):
worker processes host one or several of them, as separate deployments would.

Every step appends ``<invocation> <service> <pid> <attempt>`` to the ledger file named by
``DURABLE_TEST_LEDGER`` (one ``os.write`` on an ``O_APPEND`` descriptor, so lines from
concurrent processes never mix): which process ran which service's steps.
"""

from __future__ import annotations

import asyncio
import os

from durable import Context, Service
from tests.crash_handlers import LEDGER_ENV

_fd: int | None = None


def _note(invocation_id: str, service: str, attempt: int) -> None:
    global _fd
    path = os.environ.get(LEDGER_ENV)
    if not path:
        return
    if _fd is None:
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, f"{invocation_id} {service} {os.getpid()} {attempt}\n".encode())


async def _step(invocation_id: str, service: str, attempt: int, n: int, seconds: float) -> int:
    await asyncio.sleep(seconds)
    _note(invocation_id, service, attempt)
    return n + 1


def make_service(name: str) -> Service:
    """A service with ``fast`` (two 5 ms steps) and ``slow`` (one 300 ms step)."""
    svc = Service(name, description=f"the {name} deployment of the routing tests")

    @svc.handler()
    async def fast(ctx: Context, n: int) -> int:
        n = await ctx.run("one", _step, ctx.invocation_id, name, ctx.attempt, n, 0.005)
        return await ctx.run("two", _step, ctx.invocation_id, name, ctx.attempt, n, 0.005)

    @svc.handler()
    async def slow(ctx: Context, n: int) -> int:
        return await ctx.run("one", _step, ctx.invocation_id, name, ctx.attempt, n, 0.3)

    return svc
