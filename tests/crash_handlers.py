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
import signal
import time

from durable import Context, RetryPolicy, Service, VirtualObject

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


# -- a worker that freezes itself (test_fencing.py) ----------------------------------------
#
# ``_stop_once(tag)`` stops the worker process with SIGSTOP the first time the handler's code
# passes it (a marker file beside the ledger remembers), as a long pause of the process would;
# the test thaws it with SIGCONT once another worker has taken the invocation over.

#: The step of ``crash/stop_in_retry`` whose first try fails and freezes the worker.
RETRIED_STEP = 2


def stop_marker(ledger: str, tag: str) -> str:
    return f"{ledger}.stopped-{tag}"


def _stop_once(tag: str) -> bool:
    """Stop this process once per tag; True when it did (and has been thawed since)."""
    path = os.environ.get(LEDGER_ENV)
    if not path or os.path.exists(stop_marker(path, tag)):
        return False
    with open(stop_marker(path, tag), "w") as f:
        f.write(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGSTOP)
    return True


@crash.handler()
async def stop_at_start(ctx: Context, seed: int) -> dict[str, int]:
    """Five short steps; the first worker to run it freezes before the first one."""
    _stop_once(f"start-{ctx.invocation_id}")
    return await _chain(ctx, seed, [(0.005, 0.010)] * STEPS)


def _fail_first_try(invocation_id: str, step: int, attempt: int, prev: int) -> None:
    """The first try (of all workers) is recorded, freezes the worker, then fails."""
    path = os.environ.get(LEDGER_ENV, "")
    if path and not os.path.exists(stop_marker(path, f"retry-{invocation_id}")):
        _record(invocation_id, step, attempt, prev, 0)
        _stop_once(f"retry-{invocation_id}")
        raise RuntimeError("the first try fails")


def release_marker(ledger: str, invocation_id: str) -> str:
    return f"{ledger}.release-{invocation_id}"


async def _held_step(invocation_id: str, step: int, attempt: int, prev: int) -> int:
    """Waits until the test creates the release marker, then runs as ``_step``."""
    path = os.environ.get(LEDGER_ENV, "")
    while path:
        if await asyncio.to_thread(os.path.exists, release_marker(path, invocation_id)):
            break
        await asyncio.sleep(0.02)
    return await _step(invocation_id, step, attempt, prev, 0.005, 0.010)


@crash.handler()
async def stop_then_hold(ctx: Context, seed: int) -> dict[str, int]:
    """Like ``stop_at_start``, but the first step waits for the test's release, so the worker
    that takes over claims the invocation and holds it without journaling anything."""
    _stop_once(f"hold-{ctx.invocation_id}")
    return await _held_chain(ctx, seed)


@crash.handler()
async def held(ctx: Context, seed: int) -> dict[str, int]:
    """Five short steps, the first of which waits for the test's release."""
    return await _held_chain(ctx, seed)


async def _held_chain(ctx: Context, seed: int) -> dict[str, int]:
    value = await ctx.run("step0", _held_step, ctx.invocation_id, 0, ctx.attempt, seed)
    for step in range(1, STEPS):
        value = await ctx.run(
            f"step{step}", _step, ctx.invocation_id, step, ctx.attempt, value, 0.005, 0.010
        )
    return {"seed": seed, "value": value}


async def _flaky_step(invocation_id: str, step: int, attempt: int, prev: int) -> int:
    _fail_first_try(invocation_id, step, attempt, prev)
    return await _step(invocation_id, step, attempt, prev, 0.005, 0.010)


@crash.handler()
async def stop_in_retry(ctx: Context, seed: int) -> dict[str, int]:
    """Five short steps; step RETRIED_STEP retries in place, and the first worker freezes in
    its failed first try, so it wakes up to retry a step another worker has journaled."""
    value = seed
    for step in range(STEPS):
        if step == RETRIED_STEP:
            value = await ctx.run(
                f"step{step}",
                _flaky_step,
                ctx.invocation_id,
                step,
                ctx.attempt,
                value,
                retry=RetryPolicy(initial_interval=0.05, maximum_attempts=10),
            )
        else:
            value = await ctx.run(
                f"step{step}", _step, ctx.invocation_id, step, ctx.attempt, value, 0.005, 0.010
            )
    return {"seed": seed, "value": value}


# -- waits (test_crash_waits.py) ----------------------------------------------------------
#
# Steps record ``<invocation> <step> <attempt> <pid> 0 <time>``; ``_die_once(tag)`` kills the
# worker process the first time the handler's code passes it (a marker file beside the
# ledger remembers), outside any step: the crash lands between two steps.

waits = Service("waitcrash", description="timers, awakeables, sends and calls under crashes")


async def _mark(invocation_id: str, step: int, attempt: int) -> float:
    now = time.time()
    _record(invocation_id, step, attempt, 0, int(now * 1000))
    return now


def _die_once(tag: str) -> None:
    path = os.environ.get(LEDGER_ENV)
    if not path:
        return
    marker = f"{path}.died-{tag}"
    if os.path.exists(marker):
        return
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGKILL)


@waits.handler()
async def nap(ctx: Context, seconds: float) -> float:
    """A step, a durable sleep, a step; returns the seconds between the two steps."""
    before = await ctx.run("before", _mark, ctx.invocation_id, 0, ctx.attempt)
    await ctx.sleep(seconds)
    after = await ctx.run("after", _mark, ctx.invocation_id, 1, ctx.attempt)
    return float(after - before)


@waits.handler()
async def approve(ctx: Context, amount: int) -> str:
    """Waits for an awakeable; the id is published by a step."""
    awk, decision = ctx.awakeable(str)
    await ctx.run("ask", _mark, ctx.invocation_id, 0, ctx.attempt)
    answer = await decision
    await ctx.run("after", _mark, ctx.invocation_id, 1, ctx.attempt)
    return f"{amount}: {answer} ({awk})"


@waits.handler()
async def target(ctx: Context, n: int) -> int:
    await ctx.run("target", _mark, ctx.invocation_id, 0, ctx.attempt)
    return n + 1


@waits.handler()
async def delayed_sender(ctx: Context, delay: float) -> str:
    """Sends ``target`` with a delay and dies right after, before the send is journaled."""
    child = await ctx.send(target, 41, delay=delay)
    _die_once(f"send-{ctx.invocation_id}")
    await ctx.run("after", _mark, ctx.invocation_id, 1, ctx.attempt)
    return child


@waits.handler()
async def chain_c(ctx: Context, n: int) -> int:
    await ctx.run("c1", _mark, ctx.invocation_id, 0, ctx.attempt)
    return n * 10


@waits.handler()
async def chain_b(ctx: Context, n: int) -> int:
    await ctx.run("b1", _mark, ctx.invocation_id, 0, ctx.attempt)
    c = await ctx.call(chain_c, n + 1)
    _die_once(f"b-{ctx.invocation_id}")  # B's worker dies with C's result in hand
    await ctx.run("b2", _mark, ctx.invocation_id, 1, ctx.attempt)
    return int(c) + 1


@waits.handler()
async def chain_a(ctx: Context, n: int) -> int:
    await ctx.run("a1", _mark, ctx.invocation_id, 0, ctx.attempt)
    b = await ctx.call(chain_b, n)
    await ctx.run("a2", _mark, ctx.invocation_id, 1, ctx.attempt)
    return int(b)


# -- virtual objects (test_crash_objects.py) -----------------------------------------------

objects = VirtualObject("objcrash", description="counters for exclusivity and crash tests")


async def _span(invocation_id: str, attempt: int, seconds: float) -> int:
    """Records (enter, exit) in microseconds as the ledger's (prev, value)."""
    enter = int(time.time() * 1e6)
    await asyncio.sleep(seconds)
    exit_ = int(time.time() * 1e6)
    _record(invocation_id, 0, attempt, enter, exit_)
    return exit_


@objects.handler()
async def increment(ctx: Context, n: int) -> int:
    total = int(await ctx.get("total", int) or 0) + n
    await ctx.run("work", _span, ctx.invocation_id, ctx.attempt, 0.02)
    ctx.set("total", total)
    return total


@objects.handler()
async def set_three(ctx: Context, n: int) -> int:
    """Sets three entries around a slow step: a kill lands between them."""
    ctx.set("a", n)
    ctx.set("b", n)
    await ctx.run("slow", _span, ctx.invocation_id, ctx.attempt, 1.5)
    ctx.set("c", n)
    return n
