"""A record change and the work item it needs are two writes; a process can die between
them. Whoever meets the change afterwards (the redelivered or a later wake-up, the client
repeating its call) makes sure the item exists, so the reconciler is never the path.

Each test makes the engine's own code die in that window: it runs the engine's classes
with a work queue on a closed NATS connection, so the CAS lands and the enqueue fails
exactly as when the process dies there. The reconciler is off (``reconcile_after`` huge).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import nats
import pytest
from nats.errors import ConnectionClosedError

from durable import Context, Service
from durable._store.ids import idempotent_invocation_id
from durable._store.records import now_ts
from durable._store.waking import Waker
from durable._store.workqueue import WorkQueue
from durable.errors import AlreadyExistsError, FailedPreconditionError
from durable.internal.v1 import storage_pb2
from durable.testing import LocalEngine
from durable.v1 import types_pb2
from durable_server.control.plane import ControlPlane
from tests.engine_support import EngineFactory, StoreOpener, start_ready, wait_status

pytestmark = pytest.mark.slow  # real processes or long waits: not in make test-fast

S = types_pb2
NEVER = 1e6
RUNS: Counter[str] = Counter()

lost = Service("lost")


@lost.handler()
async def nap(ctx: Context, tag: str) -> str:
    await ctx.sleep(2.0)
    return await ctx.run("after", _count, tag)


@lost.handler()
async def ask(ctx: Context, tag: str) -> str:
    _, answer = ctx.awakeable(str)
    return f"{await answer} {await ctx.run('after', _count, tag)}"


@lost.handler()
async def counted(ctx: Context, tag: str) -> str:
    return await ctx.run("once", _count, tag)


@lost.handler()
async def held(ctx: Context, tag: str) -> str:
    """Its first step waits for the test to open ``GATES[tag]``."""
    await ctx.run("held", _held, tag)
    return await ctx.run("after", _count, tag)


GATES: dict[str, asyncio.Event] = {}


async def _held(tag: str) -> None:
    await GATES.setdefault(tag, asyncio.Event()).wait()


def _count(tag: str) -> str:
    RUNS[tag] += 1
    return tag


def _tag() -> str:
    return uuid.uuid4().hex[:8]


def _plane(engine: LocalEngine) -> ControlPlane:
    assert engine.control.plane is not None
    return engine.control.plane


@contextlib.asynccontextmanager
async def _dead_queue(engine: LocalEngine) -> AsyncIterator[WorkQueue]:
    """A work queue whose every enqueue fails, as if its process died before it."""
    nc = await nats.connect(engine.nats_url)
    queue = WorkQueue(nc.jetstream(), engine.config)
    await nc.close()
    yield queue


async def test_timer_wake_up_repairs_a_waker_that_died_before_enqueueing(
    engine_factory: EngineFactory, engine_store: StoreOpener
) -> None:
    """A wake-up's CAS (SUSPENDED -> PENDING) landed but its item did not: the timer's own
    wake-up, finding the record PENDING with no item of its generation, enqueues it."""
    engine = await start_ready(engine_factory, [lost], reconcile_after=NEVER)
    store = await engine_store(engine)
    tag = _tag()
    handle = await engine.client.start("lost/nap", tag)
    await wait_status(engine, handle.id, S.INVOCATION_STATUS_SUSPENDED)
    async with _dead_queue(engine) as dead:
        dying = Waker(store.js, engine.config, store.records, dead)
        with pytest.raises(ConnectionClosedError):
            await dying.wake(handle.id, "completed")
    record = (await store.records.get(handle.id)).record
    item = await store.work.latest_item(handle.id)
    assert record.status == S.INVOCATION_STATUS_PENDING
    assert item is not None and item.generation < record.generation

    started = time.monotonic()
    assert await handle.result(timeout=10) == tag
    print(f"woken {time.monotonic() - started:.2f} s after the lost enqueue (timer of 2 s)")
    assert RUNS[tag] == 1


async def test_a_wake_up_that_failed_to_enqueue_is_tried_again_soon(
    engine_factory: EngineFactory, engine_store: StoreOpener
) -> None:
    """The worker taking the timer's wake-up fails to enqueue after its CAS (NATS trouble):
    the wake-up comes back a second later, not after ack_wait (30 s here), and finds the
    record PENDING without its item."""
    engine = await start_ready(engine_factory, [lost], reconcile_after=NEVER)
    store = await engine_store(engine)
    tag = _tag()
    handle = await engine.client.start("lost/nap", tag)
    await wait_status(engine, handle.id, S.INVOCATION_STATUS_SUSPENDED)
    waker = engine.worker._waker
    queue = waker._work
    async with _dead_queue(engine) as dead:
        waker._work = dead
        try:
            # The timer fires: the wake-up's CAS lands, its enqueue fails.
            await wait_status(engine, handle.id, S.INVOCATION_STATUS_PENDING, timeout=10)
        finally:
            waker._work = queue
    item = await store.work.latest_item(handle.id)
    assert item is not None and item.reason != "timer"
    assert await handle.result(timeout=10) == tag


async def test_repeated_resolve_repairs_a_lost_wake_up(
    engine_factory: EngineFactory, engine_store: StoreOpener
) -> None:
    """ResolveAwakeable stored the resolution and woke the record, then died before the
    item: the client's retry is told ALREADY_EXISTS, and the invocation goes on."""
    engine = await start_ready(engine_factory, [lost], reconcile_after=NEVER)
    store = await engine_store(engine)
    tag = _tag()
    handle = await engine.client.start("lost/ask", tag)
    view = await wait_status(engine, handle.id, S.INVOCATION_STATUS_SUSPENDED)
    awakeable_id = view.waiting_for[0].awakeable_id
    index = view.waiting_for[0].step_index
    resolution = storage_pb2.JournalRecord()
    resolution.value.data = b'"yes"'
    resolution.value.content_type = "application/json"
    async with _dead_queue(engine) as dead:
        dying = Waker(store.js, engine.config, store.records, dead)
        with pytest.raises(ConnectionClosedError):
            await dying.complete_awakeable(handle.id, index, resolution)

    with pytest.raises(AlreadyExistsError):
        await engine.client.resolve_awakeable(awakeable_id, "again")
    assert await handle.result(timeout=10) == f"yes {tag}"


async def test_repeated_idempotent_invoke_enqueues_what_the_first_did_not(
    engine_factory: EngineFactory, engine_store: StoreOpener
) -> None:
    """An idempotent Invoke created the record and died before its item: the client's
    retry is told the invocation exists, and that invocation runs."""
    engine = await start_ready(engine_factory, [lost], reconcile_after=NEVER)
    store = await engine_store(engine)
    tag, key = _tag(), _tag()
    now = now_ts()
    # What Invoke writes first (records.create), before its enqueue.
    record = storage_pb2.InvocationRecord(
        id=idempotent_invocation_id("lost/counted", "", key),
        handler="lost/counted",
        input=storage_pb2.StoredPayload(data=f'"{tag}"'.encode(), content_type="application/json"),
        status=S.INVOCATION_STATUS_PENDING,
        idempotency_key=key,
        created_at=now,
        updated_at=now,
        generation=1,
    )
    assert await store.records.create(record) is not None

    again = await engine.client.invoke("lost/counted", tag, idempotency_key=key)
    assert again.already_existed and again.id == record.id
    assert await again.result(timeout=10) == tag
    assert RUNS[tag] == 1


@pytest.mark.parametrize("call", ["cancel", "resume"])
async def test_repeated_steering_enqueues_what_the_first_did_not(
    engine_factory: EngineFactory, call: str, engine_store: StoreOpener
) -> None:
    """Cancel (or Resume) of a paused invocation moved it to PENDING and died before the
    item: the client's retry is refused as already done, and the invocation goes on."""
    engine = await start_ready(engine_factory, [lost], reconcile_after=NEVER)
    plane = _plane(engine)
    store = await engine_store(engine)
    tag = _tag()
    handle = await engine.client.start("lost/held", tag)
    await wait_status(engine, handle.id, S.INVOCATION_STATUS_RUNNING)
    await engine.client.pause(handle.id)
    GATES.setdefault(tag, asyncio.Event()).set()
    await wait_status(engine, handle.id, S.INVOCATION_STATUS_PAUSED)
    queue = plane.steering._work
    async with _dead_queue(engine) as dead:
        plane.steering._work = dead
        try:
            with pytest.raises(ConnectionClosedError):
                await (
                    plane.steering.cancel(handle.id, "")
                    if call == "cancel"
                    else plane.steering.resume(handle.id)
                )
        finally:
            plane.steering._work = queue
    assert (await store.records.get(handle.id)).record.status == S.INVOCATION_STATUS_PENDING

    retry = engine.client.cancel if call == "cancel" else engine.client.resume
    with pytest.raises(FailedPreconditionError):
        await retry(handle.id)
    ended = S.INVOCATION_STATUS_CANCELLED if call == "cancel" else S.INVOCATION_STATUS_COMPLETED
    await wait_status(engine, handle.id, ended, timeout=10)
