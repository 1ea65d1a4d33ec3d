"""Handlers for ``tests/test_cluster.py``, importable by real ``durable worker`` processes.

``spread/tagged`` runs three steps; each returns the pid of the process that ran it, and when
``DURABLE_TEST_LEDGER`` names a file, appends ``<invocation_id> <step> <pid>`` to it with one
``os.write`` on an ``O_APPEND`` descriptor (lines from concurrent processes never mix), so a
test can count how often each step body ran across all worker processes.
"""

from __future__ import annotations

import asyncio
import os

from durable import Context, Service

LEDGER_ENV = "DURABLE_TEST_LEDGER"
STEPS = 3
STEP_SECONDS = 0.03

spread = Service("spread", description="three steps that report the worker pid")

_ledger_fd: int | None = None


async def _step(invocation_id: str, step: int) -> int:
    global _ledger_fd
    await asyncio.sleep(STEP_SECONDS)
    pid = os.getpid()
    path = os.environ.get(LEDGER_ENV)
    if path:
        if _ledger_fd is None:
            _ledger_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(_ledger_fd, f"{invocation_id} {step} {pid}\n".encode())
    return pid


@spread.handler()
async def tagged(ctx: Context, n: int) -> dict[str, object]:
    """Three journaled steps; the output names the input and the pid of every step."""
    pids = [await ctx.run(f"step{i}", _step, ctx.invocation_id, i) for i in range(STEPS)]
    return {"n": n, "pids": pids}
