"""Handlers the chaos run's worker processes host (``--module tests.chaos.handlers``).

Every step body appends one JSON line to the ledger file named by ``DURABLE_TEST_LEDGER``
just before it returns, with one ``os.write`` on an ``O_APPEND`` descriptor (lines from
concurrent processes never mix)::

    {"i": invocation, "n": step name, "a": attempt, "p": pid, "s": start ns, "e": end ns,
     "prev": value it was given, "v": fresh random value it returns, "x": extra}

The value is fresh randomness, so the run whose value the journal holds is the journaled one
and every other run of that step is a duplicate; ``prev`` is the journaled value of the step
before, which proves each run was handed the journaled result. ``s`` and ``e`` (wall clock,
as nats-server stamps stored messages) tell a run in flight when the entry was journaled from
one that started after it. The ledger write is the step's side effect: a run killed before it
leaves no line.

* ``chaos/chain``: five steps (``s0``..``s4``). Like ``nap`` it may first do some local work
  (``before_ms``, no step): a worker frozen there and thawed after another worker ran the
  first step must not run it again, although it has nothing to append before it.
* ``chaos/nap``: a step, a durable timer, a step; the journal's SLEEP entry has the due time.
* ``chaos/approve``: an awakeable whose id the step ``ask`` hands out (``x``, read by the
  driver from the ledger), then a step once it is resolved.
* ``chaosobj/add``: an exclusive virtual-object handler: reads ``count``, a step, writes
  ``count + 1``; per key the outputs must be 1..n and the state n.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import time

from durable import Context, Service, VirtualObject

LEDGER_ENV = "DURABLE_TEST_LEDGER"
CHAIN_STEPS = 5
# Below 2**53, so values survive any JSON number handling as they are.
_VALUE_LIMIT = 2**50

_ledger_fd: int | None = None


@dataclasses.dataclass
class Job:
    """One invocation's input: its idempotency key (so the output names it), how long each
    step body takes, and how long ``nap`` sleeps."""

    key: str
    ms: list[int]
    sleep: float = 0.0
    before_ms: int = 0  # local work before the first step (not a step: nothing journaled)


def _write(line: dict[str, object]) -> None:
    global _ledger_fd
    path = os.environ.get(LEDGER_ENV)
    if not path:
        return
    if _ledger_fd is None:
        _ledger_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_ledger_fd, (json.dumps(line, separators=(",", ":")) + "\n").encode())


async def _body(
    invocation_id: str, name: str, attempt: int, prev: int, ms: int, extra: str = ""
) -> int:
    start = time.time_ns()
    await asyncio.sleep(ms / 1000)
    value = random.randrange(1, _VALUE_LIMIT)
    line = {"i": invocation_id, "n": name, "a": attempt, "p": os.getpid(), "s": start}
    _write({**line, "e": time.time_ns(), "prev": prev, "v": value, "x": extra})
    return value


def _ms(job: Job, i: int) -> int:
    return job.ms[i % len(job.ms)] if job.ms else 5


chaos = Service("chaos", description="chaos run: steps, timers and awakeables")


@chaos.handler()
async def chain(ctx: Context, job: Job) -> dict[str, object]:
    """Five steps, each handed the journaled value of the one before."""
    await asyncio.sleep(job.before_ms / 1000)
    value = 0
    for i in range(CHAIN_STEPS):
        value = await ctx.run(
            f"s{i}", _body, ctx.invocation_id, f"s{i}", ctx.attempt, value, _ms(job, i)
        )
    return {"key": job.key, "value": value}


@chaos.handler()
async def nap(ctx: Context, job: Job) -> dict[str, object]:
    """A step, a durable timer of ``job.sleep`` seconds, a step."""
    await asyncio.sleep(job.before_ms / 1000)
    before = await ctx.run(
        "before", _body, ctx.invocation_id, "before", ctx.attempt, 0, _ms(job, 0)
    )
    await ctx.sleep(job.sleep)
    after = await ctx.run(
        "after", _body, ctx.invocation_id, "after", ctx.attempt, before, _ms(job, 1)
    )
    return {"key": job.key, "value": after}


@chaos.handler()
async def approve(ctx: Context, job: Job) -> dict[str, object]:
    """Hands out an awakeable id in a step, waits for it, then one more step."""
    awakeable, decision = ctx.awakeable(str)
    asked = await ctx.run(
        "ask", _body, ctx.invocation_id, "ask", ctx.attempt, 0, _ms(job, 0), awakeable
    )
    answer = await decision
    after = await ctx.run(
        "after", _body, ctx.invocation_id, "after", ctx.attempt, asked, _ms(job, 1)
    )
    return {"key": job.key, "value": after, "answer": answer}


counters = VirtualObject("chaosobj", description="chaos run: one counter per key")


@counters.handler()
async def add(ctx: Context, job: Job) -> dict[str, object]:
    """Exclusive per key: count + 1 around one step."""
    count = int(await ctx.get("count", int) or 0)
    value = await ctx.run("work", _body, ctx.invocation_id, "work", ctx.attempt, count, _ms(job, 0))
    ctx.set("count", count + 1)
    return {"key": job.key, "value": value, "count": count + 1}
