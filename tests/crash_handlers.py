"""Handlers run by real ``durable worker`` processes in the crash and fencing tests.

Every step body appends one line to the ledger file named by ``DURABLE_TEST_LEDGER`` just
before it returns::

    <invocation_id> <step> <attempt> <pid> <prev> <value>

with one ``os.write`` on an ``O_APPEND`` descriptor, so lines from concurrent processes never
mix. A step's value is the previous step's value plus a fresh random number, so the chain of
values proves which journaled result each later step was given: a re-executed step would
produce a different value.
"""

from __future__ import annotations

import asyncio
import os
import random

from durable import Context, Service

LEDGER_ENV = "DURABLE_TEST_LEDGER"
STEPS = 5
#: The step of ``crash/fence_chain`` that takes long enough to freeze a worker inside it.
FENCE_STEP = 2
FENCE_STEP_SECONDS = 2.0

crash = Service("crash", description="five-step workflows for crash tests")

_ledger_fd: int | None = None


def _record(invocation_id: str, step: int, attempt: int, prev: int, value: int) -> None:
    global _ledger_fd
    path = os.environ.get(LEDGER_ENV)
    if not path:
        return
    if _ledger_fd is None:
        _ledger_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    line = f"{invocation_id} {step} {attempt} {os.getpid()} {prev} {value}\n"
    os.write(_ledger_fd, line.encode())


async def _step(
    invocation_id: str, step: int, attempt: int, prev: int, low: float, high: float
) -> int:
    await asyncio.sleep(random.uniform(low, high))
    value = prev + random.randrange(1, 1_000_000_000)
    _record(invocation_id, step, attempt, prev, value)
    return value


async def _chain(ctx: Context, seed: int, durations: list[tuple[float, float]]) -> dict[str, int]:
    value = seed
    for step, (low, high) in enumerate(durations):
        value = await ctx.run(
            f"step{step}", _step, ctx.invocation_id, step, ctx.attempt, value, low, high
        )
    return {"seed": seed, "value": value}


@crash.handler()
async def chain(ctx: Context, seed: int) -> dict[str, int]:
    """Five steps of 5-30 ms each."""
    return await _chain(ctx, seed, [(0.005, 0.030)] * STEPS)


@crash.handler()
async def slow_chain(ctx: Context, seed: int) -> dict[str, int]:
    """Five steps of 150-300 ms each: long enough to kill the control plane mid-wait."""
    return await _chain(ctx, seed, [(0.150, 0.300)] * STEPS)


@crash.handler()
async def fence_chain(ctx: Context, seed: int) -> dict[str, int]:
    """Five short steps, except step FENCE_STEP which takes FENCE_STEP_SECONDS."""
    durations = [(0.005, 0.010)] * STEPS
    durations[FENCE_STEP] = (FENCE_STEP_SECONDS, FENCE_STEP_SECONDS)
    return await _chain(ctx, seed, durations)
