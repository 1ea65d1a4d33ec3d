"""The control plane's lifecycle operations through real gRPC on a real engine: idempotent
Invoke (also concurrent, and past the JetStream duplicate window), Pause/Resume/Cancel with
their FAILED_PRECONDITION cases, ListWorkflows filters and paging, Stats, ListHandlers and
AwaitResult with a timeout."""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import nats
import pytest

from durable import (
    AlreadyExistsError,
    CancelledError,
    Context,
    FailedPreconditionError,
    Invocation,
    InvocationCancelledError,
    InvocationFailedError,
    InvocationHandle,
    InvocationStatus,
    ResultTimeoutError,
    RetryPolicy,
    Service,
    TerminalError,
)
from durable._client import is_terminal
from durable.testing import LocalEngine
from durable.v1 import control_pb2, control_pb2_grpc, types_pb2
from tests.engine_support import EngineFactory, start_ready, until, wait_status

S = types_pb2

RUNS: collections.Counter[str] = collections.Counter()
ENTERED: dict[str, asyncio.Event] = {}
RELEASE: dict[str, asyncio.Event] = {}
SEEN: dict[str, str] = {}

ctl = Service("ctl", retry=RetryPolicy(initial_interval=0.01, maximum_interval=0.05, jitter=0))


def _tag() -> str:
    return uuid.uuid4().hex[:8]


def _gate(tag: str) -> tuple[asyncio.Event, asyncio.Event]:
    return ENTERED.setdefault(tag, asyncio.Event()), RELEASE.setdefault(tag, asyncio.Event())


async def _start_at_gate(
    engine: LocalEngine, handler: str
) -> tuple[str, InvocationHandle, asyncio.Event]:
    """Start ``handler`` with a fresh tag; return once its gated step is running."""
    tag = _tag()
    entered, release = _gate(tag)
    handle = await engine.client.start(handler, tag)
    await asyncio.wait_for(entered.wait(), 5)
    return tag, handle, release


def _count(tag: str, step: str) -> str:
    RUNS[f"{tag}:{step}"] += 1
    return f"{step}-done"


async def _wait_gate(tag: str, step: str) -> str:
    """A step that blocks until the test releases it."""
    RUNS[f"{tag}:{step}"] += 1
    entered, release = _gate(tag)
    entered.set()
    await release.wait()
    return f"{step}-done"


@ctl.handler()
async def counted(ctx: Context, tag: str) -> str:
    """Counts how often it runs.

    Second paragraph, not part of the description."""
    return await ctx.run("work", _count, tag, "work")


@ctl.handler()
async def gated(ctx: Context, tag: str) -> list[str]:
    """Three steps; the second blocks until the test releases it."""
    one = await ctx.run("one", _count, tag, "one")
    two = await ctx.run("two", _wait_gate, tag, "two")
    three = await ctx.run("three", _count, tag, "three")
    return [one, two, three]


@ctl.handler()
async def gated_first(ctx: Context, tag: str) -> list[str]:
    """Two steps; the first blocks until the test releases it."""
    one = await ctx.run("one", _wait_gate, tag, "one")
    two = await ctx.run("two", _count, tag, "two")
    return [one, two]


async def _wait_then_fail(tag: str) -> str:
    await _wait_gate(tag, "flaky")
    raise ConnectionError("transient")


@ctl.handler(retry=RetryPolicy(initial_interval=0.5, maximum_interval=0.5, jitter=0))
async def flaky_first(ctx: Context, tag: str) -> str:
    """Its first step blocks until released, then fails with a retryable error."""
    return str(await ctx.run("flaky", _wait_then_fail, tag))


@ctl.handler()
async def saga(ctx: Context, tag: str) -> str:
    """Reserves, waits, charges; compensates when cancelled."""
    await ctx.run("reserve", _count, tag, "reserve")
    try:
        await ctx.run("wait", _wait_gate, tag, "wait")
        await ctx.run("charge", _count, tag, "charge")
    except CancelledError as err:
        SEEN[tag] = f"{type(err).__name__}: {err.message}"
        await ctx.run("compensate", _count, tag, "compensate")
        raise
    return "charged"


@ctl.handler()
async def doomed(ctx: Context, tag: str) -> None:
    raise TerminalError(f"doomed {tag}")


# -- helpers -------------------------------------------------------------------------------


def _stable(view: Invocation) -> control_pb2.GetWorkflowResponse:
    """The view as the wire carried it, without the in-memory progress hint (which may
    arrive at any time)."""
    out = control_pb2.GetWorkflowResponse(
        invocation=view.raw, journal=[e.raw for e in view.journal]
    )
    out.invocation.current_step.ClearField("kind")
    out.invocation.current_step.ClearField("name")
    return out


async def settled(engine: LocalEngine, invocation_id: str) -> Invocation:
    """The view once an ended invocation's record is written: a view taken between its
    journaled outcome and that write shows the outcome with the older ``updated_at``."""
    for _ in range(200):
        view = await engine.client.get(invocation_id)
        inv = view
        if not is_terminal(inv.status) or inv.raw.updated_at.ToNanoseconds() >= (
            inv.raw.ended_at.ToNanoseconds()
        ):
            return view
        await asyncio.sleep(0.01)
    raise AssertionError(f"the record of {invocation_id} was not written: {view}")


async def refused_unchanged(
    engine: LocalEngine, invocation_id: str, call: Callable[[], Awaitable[Any]]
) -> str:
    """Assert ``call`` fails FAILED_PRECONDITION and the invocation is exactly as before."""
    before = _stable(await settled(engine, invocation_id))
    with pytest.raises(FailedPreconditionError) as info:
        await call()
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    after = _stable(await engine.client.get(invocation_id))
    assert after == before, "a refused request changed the invocation"
    assert invocation_id in info.value.details
    return info.value.details


# -- idempotency ---------------------------------------------------------------------------


async def test_idempotent_invoke_returns_the_same_invocation(
    engine_factory: EngineFactory,
) -> None:
    engine = await start_ready(engine_factory, [ctl])
    tag = _tag()
    first = await engine.client.invoke("ctl/counted", tag, idempotency_key="order-1")
    assert not first.already_existed
    assert await first.result(timeout=10) == "work-done"

    again = await engine.client.invoke("ctl/counted", tag, idempotency_key="order-1", wait=True)
    assert again.id == first.id
    assert again.already_existed
    assert again.done and await again.result() == "work-done"
    # The same key with another input is a client bug: refused, nothing new starts.
    with pytest.raises(AlreadyExistsError) as refused:
        await engine.client.invoke("ctl/counted", "x", idempotency_key="order-1")
    assert "different input" in str(refused.value) and first.id in str(refused.value)

    view = await engine.client.get(first.id)
    assert view.idempotency_key == "order-1"
    assert view.attempt == 1
    assert RUNS[f"{tag}:work"] == 1

    # Another key is another invocation.
    second = await engine.client.invoke("ctl/counted", tag, idempotency_key="order-2")
    assert second.id != first.id and not second.already_existed
    await second.result(timeout=10)
    assert RUNS[f"{tag}:work"] == 2
    assert (await engine.client.list(handler="ctl/counted")).total_size == 2


async def test_concurrent_invokes_with_one_key_start_one_execution(
    engine_factory: EngineFactory,
) -> None:
    engine = await start_ready(engine_factory, [ctl])
    tag = _tag()
    handles = await asyncio.gather(
        *(engine.client.invoke("ctl/counted", tag, idempotency_key=f"k-{tag}") for _ in range(12))
    )
    assert len({h.id for h in handles}) == 1
    assert sorted(h.already_existed for h in handles) == [False] + [True] * 11
    results = await asyncio.gather(*(h.result(timeout=10) for h in handles))
    assert results == ["work-done"] * 12
    # A later invocation behind it in the queue has run, so a duplicate would have too.
    await engine.client.execute("ctl/counted", f"{tag}-marker", timeout=10)
    assert RUNS[f"{tag}:work"] == 1
    assert (await engine.client.list(handler="ctl/counted")).total_size == 2


async def test_idempotency_outlives_the_duplicate_window(
    engine_factory: EngineFactory,
) -> None:
    window = 0.5
    engine = await start_ready(engine_factory, [ctl], duplicate_window=window)
    nc = await nats.connect(engine.nats_url)
    try:
        info = await nc.jetstream().stream_info(engine.config.work_stream)
        assert info.config.duplicate_window == pytest.approx(window)
    finally:
        await nc.close()

    tag = _tag()
    first = await engine.client.invoke("ctl/counted", tag, idempotency_key="once")
    assert await first.result(timeout=10) == "work-done"
    await asyncio.sleep(window + 0.3)  # JetStream has forgotten every message id by now

    again = await engine.client.invoke("ctl/counted", tag, idempotency_key="once")
    assert again.id == first.id and again.already_existed
    assert again.status == S.INVOCATION_STATUS_COMPLETED
    await engine.client.execute("ctl/counted", f"{tag}-marker", timeout=10)
    assert RUNS[f"{tag}:work"] == 1
    assert (await engine.client.get(first.id)).attempt == 1


# -- pause / resume / cancel -----------------------------------------------------------------


@pytest.mark.parametrize("when", ["at-once", "once-running-is-shown"])
async def test_pause_at_step_boundary_frees_the_slot_and_resume_continues(
    engine_factory: EngineFactory, when: str
) -> None:
    engine = await start_ready(engine_factory, [ctl], slots=1)
    tag, handle, release = await _start_at_gate(engine, "ctl/gated")
    if when == "once-running-is-shown":
        await wait_status(engine, handle.id, S.INVOCATION_STATUS_RUNNING)

    paused = await engine.client.pause(handle.id, reason="maintenance window")
    assert paused.id == handle.id
    if when == "once-running-is-shown":
        assert paused.status == S.INVOCATION_STATUS_RUNNING, "it pauses at its next step"
        assert (await engine.client.get(handle.id)).pause_requested

    release.set()
    # The step in flight finished and was journaled; the next one was not started.
    view = await wait_status(engine, handle.id, S.INVOCATION_STATUS_PAUSED)
    inv = view
    assert not inv.pause_requested
    assert [e.name for e in view.journal] == ["one", "two"]
    assert inv.journal_length == 2 and inv.current_step.index == 2
    assert inv.ended_at is None
    assert (RUNS[f"{tag}:one"], RUNS[f"{tag}:two"], RUNS[f"{tag}:three"]) == (1, 1, 0)

    # Paused, it holds no worker slot: with one slot, another invocation runs to the end.
    other = _tag()
    assert await engine.client.execute("ctl/counted", other, timeout=5) == "work-done"
    assert (await engine.client.get(handle.id)).status == S.INVOCATION_STATUS_PAUSED
    assert RUNS[f"{tag}:three"] == 0

    resumed = await engine.client.resume(handle.id)
    assert resumed.status in (
        S.INVOCATION_STATUS_PENDING,
        S.INVOCATION_STATUS_RUNNING,
        S.INVOCATION_STATUS_COMPLETED,
    )
    assert await handle.result(timeout=10) == ["one-done", "two-done", "three-done"]
    # Resumed from the same journal position: the first two steps did not run again.
    assert (RUNS[f"{tag}:one"], RUNS[f"{tag}:two"], RUNS[f"{tag}:three"]) == (1, 1, 1)
    final = await engine.client.get(handle.id)
    assert [(e.name, e.attempt) for e in final.journal] == [
        ("one", 1),
        ("two", 1),
        ("three", 2),
    ]
    assert final.attempt == 2
    assert final.status_reason == ""


@pytest.mark.parametrize("action", ["pause", "cancel"])
async def test_operator_acting_before_the_first_entry_fences_the_fast_path(
    engine_factory: EngineFactory, action: str
) -> None:
    """A worker starts a fresh invocation without reading its record; Pause or Cancel before
    anything is journaled seals the journal, so the first append is fenced and the worker
    claims the record, which says what the operator asked."""
    engine = await start_ready(engine_factory, [ctl], slots=2, running_record_after=60.0)
    tag, handle, release = await _start_at_gate(engine, "ctl/gated_first")
    if action == "pause":
        summary = await engine.client.pause(handle.id, reason="hold on")
        assert summary.status == S.INVOCATION_STATUS_PAUSED
    else:
        summary = await engine.client.cancel(handle.id, reason="not wanted")
        assert summary.status == S.INVOCATION_STATUS_PENDING  # cancelled through the handler
    release.set()

    if action == "pause":
        view = await wait_status(engine, handle.id, S.INVOCATION_STATUS_PAUSED)
        # The released attempt ends (fenced): whatever it appended is in the journal now.
        await until(lambda: not engine.worker.driving(handle.id), "the fenced attempt ends")
        view = await engine.client.get(handle.id)
        assert view.status == S.INVOCATION_STATUS_PAUSED
        assert list(view.journal) == [], "the fenced worker journaled its step"
        assert RUNS[f"{tag}:two"] == 0
        await engine.client.resume(handle.id)
        assert await handle.result(timeout=10) == ["one-done", "two-done"]
        # Step one ran before the fence and again once resumed: at-least-once in flight.
        assert (RUNS[f"{tag}:one"], RUNS[f"{tag}:two"]) == (2, 1)
    else:
        with pytest.raises(InvocationCancelledError) as info:
            await handle.result(timeout=10)
        assert info.value.failure_message == "not wanted"
        assert (RUNS[f"{tag}:one"], RUNS[f"{tag}:two"]) == (1, 0)
        view = await engine.client.get(handle.id)
        assert [(e.name, e.failure.error_type) for e in view.journal] == [("one", "CancelledError")]


@pytest.mark.slow
async def test_pause_before_the_first_entry_holds_when_the_attempt_journals_nothing(
    engine_factory: EngineFactory,
) -> None:
    """The first step fails (retryably) after a Pause sealed the journal: the attempt has no
    entry to append, so no append meets the seal; the worker must still see the Pause instead
    of writing BACKING_OFF over it."""
    engine = await start_ready(engine_factory, [ctl], slots=2, running_record_after=60.0)
    tag, handle, release = await _start_at_gate(engine, "ctl/flaky_first")
    summary = await engine.client.pause(handle.id, reason="hold on")
    assert summary.status == S.INVOCATION_STATUS_PAUSED
    release.set()
    # The attempt fails and ends; a BACKING_OFF written over the Pause would be there now.
    await until(lambda: RUNS[f"{tag}:flaky"] == 1, "the first step runs")
    await until(lambda: not engine.worker.driving(handle.id), "the failed attempt ends")
    view = await engine.client.get(handle.id)
    assert view.status == S.INVOCATION_STATUS_PAUSED, view.invocation
    assert view.status_reason == "hold on"
    assert RUNS[f"{tag}:flaky"] == 1


async def test_pause_reason_is_shown_while_paused(engine_factory: EngineFactory) -> None:
    """PauseRequest.reason is documented as "shown in GetWorkflow"."""
    engine = await start_ready(engine_factory, [ctl], slots=1)
    _, handle, release = await _start_at_gate(engine, "ctl/gated")
    await wait_status(engine, handle.id, S.INVOCATION_STATUS_RUNNING)
    await engine.client.pause(handle.id, reason="maintenance window")
    release.set()
    view = await wait_status(engine, handle.id, S.INVOCATION_STATUS_PAUSED)
    assert "maintenance window" in view.status_reason
    await engine.client.cancel(handle.id)


@pytest.mark.parametrize("when", ["at-once", "once-running-is-shown"])
async def test_cancel_running_invocation_compensates(
    engine_factory: EngineFactory, when: str
) -> None:
    engine = await start_ready(engine_factory, [ctl])
    tag, handle, release = await _start_at_gate(engine, "ctl/saga")
    if when == "once-running-is-shown":
        await wait_status(engine, handle.id, S.INVOCATION_STATUS_RUNNING)

    cancelling = await engine.client.cancel(handle.id, reason="customer changed their mind")
    assert cancelling.status != S.INVOCATION_STATUS_CANCELLED, "the handler must see it first"
    if when == "once-running-is-shown":
        assert cancelling.status == S.INVOCATION_STATUS_RUNNING
    assert (await engine.client.get(handle.id)).cancel_requested

    release.set()
    with pytest.raises(InvocationCancelledError) as info:
        await handle.result(timeout=10)
    assert info.value.failure_message == "customer changed their mind"
    assert SEEN[tag] == "CancelledError: customer changed their mind"

    view = await engine.client.get(handle.id)
    inv = view
    assert inv.status == S.INVOCATION_STATUS_CANCELLED
    assert not inv.cancel_requested
    assert inv.failure.error_type == "CancelledError"
    assert inv.ended_at is not None
    assert [(e.name, e.raw.result.WhichOneof("outcome")) for e in view.journal] == [
        ("reserve", "value"),
        ("wait", "value"),
        ("charge", "failure"),
        ("compensate", "value"),
    ]
    assert view.journal[2].failure.error_type == "CancelledError"
    assert RUNS[f"{tag}:charge"] == 0
    assert (RUNS[f"{tag}:reserve"], RUNS[f"{tag}:wait"], RUNS[f"{tag}:compensate"]) == (1, 1, 1)


async def test_cancel_paused_invocation_wakes_it_to_compensate(
    engine_factory: EngineFactory,
) -> None:
    engine = await start_ready(engine_factory, [ctl])
    tag, handle, release = await _start_at_gate(engine, "ctl/saga")
    await wait_status(engine, handle.id, S.INVOCATION_STATUS_RUNNING)
    await engine.client.pause(handle.id)
    release.set()
    await wait_status(engine, handle.id, S.INVOCATION_STATUS_PAUSED)

    await engine.client.cancel(handle.id, reason="abandoned")
    with pytest.raises(InvocationCancelledError):
        await handle.result(timeout=10)
    view = await engine.client.get(handle.id)
    assert [e.name for e in view.journal] == ["reserve", "wait", "charge", "compensate"]
    assert (RUNS[f"{tag}:reserve"], RUNS[f"{tag}:wait"]) == (1, 1)
    assert (RUNS[f"{tag}:charge"], RUNS[f"{tag}:compensate"]) == (0, 1)
    assert SEEN[tag] == "CancelledError: abandoned"


async def test_cancel_pending_invocation_never_runs_it(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, [ctl], slots=1)
    busy = _tag()
    entered, release = _gate(busy)
    blocker = await engine.client.start("ctl/gated", busy)
    await asyncio.wait_for(entered.wait(), 5)

    tag = _tag()
    queued = await engine.client.start("ctl/counted", tag)
    assert (await engine.client.get(queued.id)).status == S.INVOCATION_STATUS_PENDING

    summary = await engine.client.cancel(queued.id, reason="not needed")
    # Either ended at once, or cancel_requested until a worker delivers it to the handler.
    assert summary.status in (S.INVOCATION_STATUS_CANCELLED, S.INVOCATION_STATUS_PENDING)
    assert RUNS[f"{tag}:work"] == 0

    release.set()
    assert await blocker.result(timeout=10) == ["one-done", "two-done", "three-done"]
    with pytest.raises(InvocationCancelledError) as info:
        await engine.client.result(queued.id, timeout=5)
    assert info.value.failure_message == "not needed"
    # The cancelled item was ahead of this one in the queue: it has been handled by now.
    await engine.client.execute("ctl/counted", f"{tag}-marker", timeout=10)
    assert RUNS[f"{tag}:work"] == 0, "a step of a cancelled, never started invocation ran"

    view = await engine.client.get(queued.id)
    inv = view
    assert inv.status == S.INVOCATION_STATUS_CANCELLED
    assert not inv.cancel_requested
    assert inv.failure.error_type == "CancelledError"
    assert inv.failure.message == "not needed"
    assert inv.attempt <= 1
    # Nothing but the cancellation itself may be journaled.
    for entry in view.journal:
        assert entry.failure.error_type == "CancelledError", entry


async def test_failed_precondition_changes_nothing(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, [ctl], slots=1)

    # Ended invocations: nothing is left to pause, resume or cancel.
    done = await engine.client.start("ctl/counted", _tag())
    await done.result(timeout=10)
    for call in (
        lambda: engine.client.pause(done.id),
        lambda: engine.client.resume(done.id),
        lambda: engine.client.cancel(done.id),
    ):
        details = await refused_unchanged(engine, done.id, call)
        assert "COMPLETED" in details

    # A running invocation (it holds the only slot) cannot be resumed.
    busy = _tag()
    entered, release = _gate(busy)
    running = await engine.client.start("ctl/gated", busy)
    await asyncio.wait_for(entered.wait(), 5)
    await wait_status(engine, running.id, S.INVOCATION_STATUS_RUNNING)
    details = await refused_unchanged(engine, running.id, lambda: engine.client.resume(running.id))
    assert "RUNNING" in details and "paused" in details

    # A pending invocation pauses at once; pausing it again is refused.
    tag = _tag()
    queued = await engine.client.start("ctl/counted", tag)
    assert (await engine.client.pause(queued.id)).status == S.INVOCATION_STATUS_PAUSED
    details = await refused_unchanged(engine, queued.id, lambda: engine.client.pause(queued.id))
    assert "already paused" in details

    # Pausing twice while the pause is pending is refused too.
    await engine.client.pause(running.id)
    await refused_unchanged(engine, running.id, lambda: engine.client.pause(running.id))
    await engine.client.resume(running.id)  # withdraws the pending pause

    # Cancelling twice: the second is refused while the first is being delivered...
    cancelling = await engine.client.cancel(running.id)
    assert cancelling.status == S.INVOCATION_STATUS_RUNNING
    details = await refused_unchanged(engine, running.id, lambda: engine.client.cancel(running.id))
    assert "already being cancelled" in details
    release.set()
    with pytest.raises(InvocationCancelledError):
        await running.result(timeout=10)
    assert RUNS[f"{busy}:three"] == 0
    # ... and after it ended.
    for call in (
        lambda: engine.client.cancel(running.id),
        lambda: engine.client.pause(running.id),
        lambda: engine.client.resume(running.id),
    ):
        details = await refused_unchanged(engine, running.id, call)
        assert "CANCELLED" in details

    # The paused one was untouched by all this; it resumes and runs once.
    assert RUNS[f"{tag}:work"] == 0
    await engine.client.resume(queued.id)
    assert await queued.result(timeout=10) == "work-done"
    assert RUNS[f"{tag}:work"] == 1


async def test_await_result_with_timeout_while_running(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, [ctl])
    _, handle, release = await _start_at_gate(engine, "ctl/gated")
    await wait_status(engine, handle.id, S.INVOCATION_STATUS_RUNNING)

    async with grpc.aio.insecure_channel(engine.target) as channel:
        stub = control_pb2_grpc.DurableControlStub(channel)
        request = control_pb2.AwaitResultRequest(invocation_id=handle.id)
        request.timeout.FromMilliseconds(300)
        started = time.monotonic()
        response = await stub.AwaitResult(request, timeout=5)
        elapsed = time.monotonic() - started
        assert not response.done
        assert response.invocation_id == handle.id
        assert response.status == S.INVOCATION_STATUS_RUNNING
        assert not response.HasField("result")
        assert 0.25 <= elapsed < 2.0

        with pytest.raises(ResultTimeoutError):
            await handle.result(timeout=0.2)

        release.set()
        request.timeout.FromSeconds(10)
        response = await stub.AwaitResult(request, timeout=15)
        assert response.done
        assert response.status == S.INVOCATION_STATUS_COMPLETED
        assert response.result.value.json.list_value.values[2].string_value == "three-done"


# -- listing -------------------------------------------------------------------------------


async def test_list_workflows_filters_and_paging(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, [ctl])
    created: list[tuple[str, str]] = []  # (handler, id), oldest first
    for i, handler in enumerate("ccdccdcc"):
        if handler == "c":
            h = await engine.client.invoke("ctl/counted", f"l{i}", wait=True, wait_timeout=10)
            created.append(("ctl/counted", h.id))
        else:
            h = await engine.client.invoke("ctl/doomed", f"l{i}", wait=True, wait_timeout=10)
            with pytest.raises(InvocationFailedError):
                await h.result()
            created.append(("ctl/doomed", h.id))
    newest_first = [i for _, i in reversed(created)]
    counted_ids = [i for h, i in reversed(created) if h == "ctl/counted"]
    doomed_ids = [i for h, i in reversed(created) if h == "ctl/doomed"]

    everything = await engine.client.list()
    assert [s.id for s in everything.invocations] == newest_first
    assert everything.total_size == 8 and everything.next_page_token == ""
    first = everything.invocations[0]
    assert first.handler == "ctl/counted" and first.status == S.INVOCATION_STATUS_COMPLETED
    assert first.attempt == 1 and first.created_at is not None and first.ended_at is not None

    # Every page through next_page_token, newest first, total_size on each.
    seen, token, pages = [], "", 0
    while True:
        page = await engine.client.list(page_size=3, page_token=token)
        pages += 1
        assert page.total_size == 8
        assert len(page.invocations) <= 3
        seen += [s.id for s in page.invocations]
        token = page.next_page_token
        if not token:
            break
    assert pages == 3 and seen == newest_first

    # Exactly one page's worth: no token pointing at an empty page.
    exact = await engine.client.list(page_size=8)
    assert len(exact.invocations) == 8 and exact.next_page_token == ""

    by_handler = [s.id async for s in engine.client.list_all(handler="ctl/counted")]
    assert by_handler == counted_ids
    page = await engine.client.list(handler="ctl/counted", page_size=4)
    assert page.total_size == 6 and len(page.invocations) == 4 and page.next_page_token
    rest = await engine.client.list(
        handler="ctl/counted", page_size=4, page_token=page.next_page_token
    )
    assert [s.id for s in [*page.invocations, *rest.invocations]] == counted_ids
    assert rest.next_page_token == ""

    failed = await engine.client.list(statuses=["failed"])
    assert [s.id for s in failed.invocations] == doomed_ids
    assert failed.total_size == 2
    both = await engine.client.list(statuses=["completed", "failed"], page_size=5)
    assert both.total_size == 8 and len(both.invocations) == 5
    none = await engine.client.list(statuses=["cancelled"])
    assert list(none.invocations) == [] and none.total_size == 0 and none.next_page_token == ""
    mixed = await engine.client.list(statuses=["completed"], handler="ctl/doomed")
    assert mixed.total_size == 0 and list(mixed.invocations) == []
    keyed = await engine.client.list(key="no-such-key")
    assert keyed.total_size == 0 and list(keyed.invocations) == []
    unknown = await engine.client.list(handler="ctl/nothing")
    assert unknown.total_size == 0


async def test_stats_counts_by_status_and_handler(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, [ctl])
    empty = await engine.client.stats()
    assert empty.total == 0
    assert list(empty.by_status) == list(range(1, 10))
    assert all(n == 0 for n in empty.by_status.values()) and empty.by_handler == {}

    for i in range(3):
        await engine.client.execute("ctl/counted", f"s{i}", timeout=10)
    for i in range(2):
        with pytest.raises(InvocationFailedError):
            await engine.client.execute("ctl/doomed", f"s{i}", timeout=10)

    stats = await engine.client.stats()
    assert stats.total == 5
    counts = stats.by_status
    assert len(counts) == 9 and S.INVOCATION_STATUS_UNSPECIFIED not in counts
    assert counts[S.INVOCATION_STATUS_COMPLETED] == 3
    assert counts[S.INVOCATION_STATUS_FAILED] == 2
    assert sum(counts.values()) == 5
    assert [(name, h.total) for name, h in stats.by_handler.items()] == [
        ("ctl/counted", 3),
        ("ctl/doomed", 2),
    ]
    assert stats.by_handler["ctl/counted"].by_status == {InvocationStatus.COMPLETED: 3}
    assert stats.by_handler["ctl/doomed"].by_status == {InvocationStatus.FAILED: 2}


async def test_list_handlers(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, [ctl])
    handlers = await engine.client.handlers()
    assert [h.name for h in handlers] == [
        "ctl/counted",
        "ctl/doomed",
        "ctl/flaky_first",
        "ctl/gated",
        "ctl/gated_first",
        "ctl/saga",
    ]
    by_name = {h.name: h for h in handlers}
    for h in handlers:
        assert h.kind == S.HANDLER_KIND_SERVICE
        assert h.service == "ctl"
        assert h.name == f"ctl/{h.handler}"
        assert h.input_type == "str"
        assert h.input_message == ""
        assert h.live_workers == 1
        assert h.last_seen is not None
    assert by_name["ctl/counted"].output_type == "str"
    assert by_name["ctl/gated"].output_type == "list[str]"
    assert by_name["ctl/counted"].description == "Counts how often it runs."
    assert (
        by_name["ctl/saga"].description == "Reserves, waits, charges; compensates when cancelled."
    )
