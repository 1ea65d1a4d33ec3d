"""Steps started concurrently journal in call order, replay as such, and a step that fails
while later ones have finished does not hang the invocation."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

from durable import Context, RetryPolicy, Service
from tests.engine_support import EngineFactory, start_ready

RUNS: Counter[str] = Counter()
FAILED_ONCE: set[str] = set()

conc = Service("conc", retry=RetryPolicy(initial_interval=0.05, maximum_interval=0.1))


async def _step(tag: str, name: str, delay: float) -> str:
    RUNS[f"{tag}:{name}"] += 1
    await asyncio.sleep(delay)
    return f"{name}-done"


@conc.handler()
async def fan_out(ctx: Context, tag: str) -> list[str]:
    """Three steps at once, the last one quickest; fails once after them (replay)."""
    results = await asyncio.gather(
        ctx.run("a", _step, tag, "a", 0.06),
        ctx.run("b", _step, tag, "b", 0.03),
        ctx.run("c", _step, tag, "c", 0.0),
    )
    if tag not in FAILED_ONCE:
        FAILED_ONCE.add(tag)
        raise RuntimeError("fail once after the fan-out, to replay it")
    last = await ctx.run("d", _step, tag, "d", 0.0)
    return [*results, last]


async def _flaky(tag: str) -> str:
    RUNS[f"{tag}:flaky"] += 1
    await asyncio.sleep(0.05)
    if RUNS[f"{tag}:flaky"] == 1:
        raise RuntimeError("transient")
    return "flaky-done"


@conc.handler()
async def background_failure(ctx: Context, tag: str) -> list[str]:
    """A step left running in the background fails while later steps finish."""
    slow = asyncio.ensure_future(ctx.run("flaky", _flaky, tag))
    await asyncio.sleep(0)  # let it start first: it takes step 0
    quick = await ctx.run("quick", _step, tag, "quick", 0.0)
    after = await ctx.run("after", _step, tag, "after", 0.0)
    return [await slow, quick, after]


async def test_concurrent_steps_journal_in_call_order_and_replay(
    engine_factory: EngineFactory,
) -> None:
    engine = await start_ready(engine_factory, [conc])
    tag = uuid.uuid4().hex[:8]
    handle = await engine.client.start("conc/fan_out", tag)
    assert await handle.result(timeout=10) == ["a-done", "b-done", "c-done", "d-done"]
    view = await engine.client.get(handle.id)
    assert [(e.index, e.name) for e in view.journal] == [(0, "a"), (1, "b"), (2, "c"), (3, "d")]
    assert view.attempt == 2
    # The second attempt replayed the fan-out from the journal.
    assert [RUNS[f"{tag}:{n}"] for n in "abcd"] == [1, 1, 1, 1]


async def test_failing_background_step_retries_instead_of_hanging(
    engine_factory: EngineFactory,
) -> None:
    engine = await start_ready(engine_factory, [conc])
    tag = uuid.uuid4().hex[:8]
    handle = await engine.client.start("conc/background_failure", tag)
    assert await handle.result(timeout=10) == ["flaky-done", "quick-done", "after-done"]
    view = await engine.client.get(handle.id)
    # "after" had to wait for step 0 ("flaky") to be journaled before running.
    assert [e.name for e in view.journal] == ["flaky", "quick", "after"]
    assert RUNS[f"{tag}:flaky"] == 2
