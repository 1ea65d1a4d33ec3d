"""Code that changes between attempts is caught on replay: the invocation stops PAUSED with a
reason naming both steps, its journal is left exactly as it was, and it continues once the
old code is back."""

from __future__ import annotations

import asyncio
import collections
import sys
import uuid

import pytest

from durable import Context, InvocationCancelledError, RetryPolicy, Service
from durable.testing import LocalEngine
from durable.v1 import types_pb2
from tests.engine_support import EngineFactory, start_ready, wait_status

S = types_pb2
THIS = sys.modules[__name__]

# "The deployed code": handlers read these at run time, tests change them between attempts.
VERSION = "v1"
STEPS = 3
CLOCK_FIRST = False

RUNS: collections.Counter[str] = collections.Counter()
FAILED: dict[str, asyncio.Event] = {}

nd = Service("nd", retry=RetryPolicy(initial_interval=0.2, backoff_coefficient=1.0, jitter=0))


def _tag() -> str:
    return uuid.uuid4().hex[:8]


def _count(tag: str, step: str) -> str:
    RUNS[f"{tag}:{step}"] += 1
    return f"{step}-done"


def _fail_once(tag: str) -> None:
    """Fail the first attempt with a retryable error, after its steps were journaled."""
    failed = FAILED.setdefault(tag, asyncio.Event())
    if not failed.is_set():
        failed.set()
        raise RuntimeError("transient: retry me")


@nd.handler()
async def renamed(ctx: Context, tag: str) -> str:
    await ctx.run(f"reserve-{VERSION}", _count, tag, "reserve")
    _fail_once(tag)
    await ctx.run("ship", _count, tag, "ship")
    return "shipped"


@nd.handler()
async def shrinking(ctx: Context, tag: str) -> int:
    for i in range(STEPS):
        await ctx.run(f"step-{i}", _count, tag, f"step-{i}")
    _fail_once(tag)
    return STEPS


@nd.handler()
async def reordered(ctx: Context, tag: str) -> str:
    if CLOCK_FIRST:
        await ctx.now()
    await ctx.run("charge", _count, tag, "charge")
    _fail_once(tag)
    return "charged"


async def _start_then_fail_once(engine: LocalEngine, handler: str, tag: str) -> str:
    handle = await engine.client.start(handler, tag)
    await asyncio.wait_for(FAILED.setdefault(tag, asyncio.Event()).wait(), 5)
    return handle.id


async def test_changed_step_name_pauses_with_both_steps_named(
    engine_factory: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = await start_ready(engine_factory, [nd])
    tag = _tag()
    monkeypatch.setattr(THIS, "VERSION", "v1")
    invocation_id = await _start_then_fail_once(engine, "nd/renamed", tag)
    monkeypatch.setattr(THIS, "VERSION", "v2")  # a deploy while it backs off

    view = await wait_status(engine, invocation_id, S.INVOCATION_STATUS_PAUSED)
    inv = view
    reason = inv.status_reason
    assert "non-determinis" in reason, reason
    assert "'reserve-v1'" in reason and "'reserve-v2'" in reason, reason
    assert "step 0" in reason, reason
    assert inv.attempt == 2
    assert not inv.raw.HasField("result") and inv.ended_at is None
    assert inv.journal_length == 1
    # The journal is what attempt 1 wrote, untouched.
    [entry] = view.journal
    assert (entry.index, entry.kind, entry.name, entry.attempt) == (
        0,
        S.STEP_KIND_RUN,
        "reserve-v1",
        1,
    )
    assert entry.summary == '"reserve-done"'
    assert (RUNS[f"{tag}:reserve"], RUNS[f"{tag}:ship"]) == (1, 0)
    paused = await engine.client.list(statuses=["paused"], handler="nd/renamed")
    assert [s.id for s in paused.invocations] == [invocation_id]

    # Resumed with the new code still deployed: detected again, journal byte-for-byte equal.
    await engine.client.resume(invocation_id)
    again = await wait_status(engine, invocation_id, S.INVOCATION_STATUS_PAUSED)
    assert again.attempt == 3
    assert list(again.journal) == list(view.journal)
    assert "'reserve-v2'" in again.status_reason

    # With the old code back, it continues where it stopped; no step runs twice.
    monkeypatch.setattr(THIS, "VERSION", "v1")
    await engine.client.resume(invocation_id)
    assert await engine.client.result(invocation_id, timeout=10) == "shipped"
    final = await engine.client.get(invocation_id)
    assert final.journal[0] == view.journal[0]
    assert [(e.name, e.attempt) for e in final.journal] == [("reserve-v1", 1), ("ship", 4)]
    assert (RUNS[f"{tag}:reserve"], RUNS[f"{tag}:ship"]) == (1, 1)


async def test_fewer_steps_than_the_journal_holds_pauses(
    engine_factory: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = await start_ready(engine_factory, [nd])
    tag = _tag()
    monkeypatch.setattr(THIS, "STEPS", 3)
    invocation_id = await _start_then_fail_once(engine, "nd/shrinking", tag)
    monkeypatch.setattr(THIS, "STEPS", 2)

    view = await wait_status(engine, invocation_id, S.INVOCATION_STATUS_PAUSED)
    inv = view
    assert "non-determinis" in inv.status_reason
    assert "2 steps" in inv.status_reason and "holds 3" in inv.status_reason
    assert not inv.raw.HasField("result")
    assert inv.journal_length == 3
    assert [(e.name, e.attempt, e.summary) for e in view.journal] == [
        ("step-0", 1, '"step-0-done"'),
        ("step-1", 1, '"step-1-done"'),
        ("step-2", 1, '"step-2-done"'),
    ]
    assert [RUNS[f"{tag}:step-{i}"] for i in range(3)] == [1, 1, 1]

    monkeypatch.setattr(THIS, "STEPS", 3)
    await engine.client.resume(invocation_id)
    assert await engine.client.result(invocation_id, timeout=10) == 3
    final = await engine.client.get(invocation_id)
    assert list(final.journal) == list(view.journal)
    assert [RUNS[f"{tag}:step-{i}"] for i in range(3)] == [1, 1, 1]


async def test_changed_step_kind_is_detected(
    engine_factory: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = await start_ready(engine_factory, [nd])
    tag = _tag()
    monkeypatch.setattr(THIS, "CLOCK_FIRST", False)
    invocation_id = await _start_then_fail_once(engine, "nd/reordered", tag)
    monkeypatch.setattr(THIS, "CLOCK_FIRST", True)

    view = await wait_status(engine, invocation_id, S.INVOCATION_STATUS_PAUSED)
    reason = view.status_reason
    assert "non-determinis" in reason
    assert "run 'charge'" in reason and "now" in reason, reason
    assert [(e.kind, e.name) for e in view.journal] == [(S.STEP_KIND_RUN, "charge")]
    assert RUNS[f"{tag}:charge"] == 1


async def test_cancel_ends_an_invocation_stopped_by_non_determinism(
    engine_factory: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The status reason advises "deploy the old code, or cancel it": cancelling must work
    while the new code is still deployed."""
    engine = await start_ready(engine_factory, [nd])
    tag = _tag()
    monkeypatch.setattr(THIS, "VERSION", "v1")
    invocation_id = await _start_then_fail_once(engine, "nd/renamed", tag)
    monkeypatch.setattr(THIS, "VERSION", "v2")
    view = await wait_status(engine, invocation_id, S.INVOCATION_STATUS_PAUSED)
    assert "cancel it" in view.status_reason

    await engine.client.cancel(invocation_id, reason="abandon the old version")
    with pytest.raises(InvocationCancelledError):
        await engine.client.result(invocation_id, timeout=2)
    final = await engine.client.get(invocation_id)
    assert final.status == S.INVOCATION_STATUS_CANCELLED
    assert final.journal[0] == view.journal[0]
    assert RUNS[f"{tag}:ship"] == 0


async def test_cancel_ends_an_invocation_whose_code_returns_before_its_journal_ends(
    engine_factory: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other non-determinism stop (the handler returns with journaled steps left over)
    is cancellable too, while the new code is still deployed."""
    engine = await start_ready(engine_factory, [nd])
    tag = _tag()
    monkeypatch.setattr(THIS, "STEPS", 3)
    invocation_id = await _start_then_fail_once(engine, "nd/shrinking", tag)
    monkeypatch.setattr(THIS, "STEPS", 2)
    view = await wait_status(engine, invocation_id, S.INVOCATION_STATUS_PAUSED)

    await engine.client.cancel(invocation_id, reason="abandon the old version")
    with pytest.raises(InvocationCancelledError):
        await engine.client.result(invocation_id, timeout=5)
    final = await engine.client.get(invocation_id)
    assert final.status == S.INVOCATION_STATUS_CANCELLED
    assert not final.cancel_requested
    assert list(final.journal) == list(view.journal)
    assert [RUNS[f"{tag}:step-{i}"] for i in range(3)] == [1, 1, 1]
