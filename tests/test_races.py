"""Races on one invocation or one key, with the real engine: Pause, Resume and Cancel from
many clients at once; Purge racing the invocation it deletes; an operator's state edit
racing an exclusive handler of the same key."""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import nats
import pytest

from durable import Client, Context, Invocation, Service, VirtualObject
from durable._store.ids import new_invocation_id
from durable._store.records import now_ts
from durable.contract import open_store
from durable.errors import FailedPreconditionError, NotFoundError
from durable.internal.v1 import storage_pb2
from durable.testing import LocalEngine
from durable.v1 import types_pb2
from tests.engine_support import EngineFactory, start_ready

pytestmark = pytest.mark.slow  # real processes or long waits: not in make test-fast

S = types_pb2
# The reconciler never runs in these tests unless one says so: every wake-up must come
# from the path that made the change.
NEVER = 1e6
STEPS = 30
EFFECTS: Counter[str] = Counter()
STATE_RUNS: Counter[str] = Counter()

races = Service("races")
account = VirtualObject("account")


async def _effect(tag: str) -> None:
    EFFECTS[tag] += 1
    await asyncio.sleep(0.01)


@races.handler()
async def steps(ctx: Context, tag: str) -> int:
    """STEPS steps of 10 ms each, so steering finds it between steps."""
    for i in range(STEPS):
        await ctx.run(f"s{i}", _effect, tag)
    return STEPS


@races.handler()
async def once(ctx: Context, tag: str) -> str:
    """One side effect."""

    def effect() -> str:
        EFFECTS[tag] += 1
        return tag

    return await ctx.run("effect", effect)


@account.handler()
async def deposit(ctx: Context, tag: str) -> int:
    """Read-modify-write of ``n``, and a pair of entries that only ever change together."""
    n = int(await ctx.get("n", int) or 0) + 1
    ctx.set("h1", tag)
    await ctx.run("think", asyncio.sleep, 0.005)
    ctx.set("h2", tag)
    ctx.set("n", n)
    ctx.set("shared", f"h:{tag}")
    STATE_RUNS[ctx.key] += 1
    return n


def _tag() -> str:
    return uuid.uuid4().hex[:8]


@contextlib.asynccontextmanager
async def _clients(engine: LocalEngine, n: int) -> AsyncIterator[list[Client]]:
    """``n`` clients, each with its own gRPC channel."""
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(Client(engine.target)) for _ in range(n)]


# -- Pause, Resume and Cancel from ten clients at once ---------------------------------------


async def _steer(
    client: Client, invocation_id: str, rng: random.Random, cancels: bool, done: list[str]
) -> None:
    """A few random steering calls (one in ten a Cancel, if ``cancels``); refusals are
    expected, any other error is not."""
    for _ in range(3):
        await asyncio.sleep(rng.uniform(0, 0.02))
        op = rng.choice(("pause", "resume") * 9 + (("cancel",) * 2 if cancels else ()))
        try:
            if op == "pause":
                await client.pause(invocation_id)
            elif op == "resume":
                await client.resume(invocation_id)
            else:
                await client.cancel(invocation_id)
        except FailedPreconditionError:
            continue
        done.append(op)


def _settled(inv: types_pb2.Invocation) -> bool:
    """Whether the record needs nothing more from anyone but time: ended, paused for good,
    or running with no request pending. PENDING, or a request not yet taken up by the
    worker, is on its way somewhere."""
    if inv.status in (S.INVOCATION_STATUS_COMPLETED, S.INVOCATION_STATUS_CANCELLED):
        return True
    if inv.status == S.INVOCATION_STATUS_PAUSED:
        assert not inv.cancel_requested, f"paused with a cancellation pending: {inv}"
        return True
    return inv.status == S.INVOCATION_STATUS_RUNNING and not (
        inv.pause_requested or inv.cancel_requested
    )


async def _until(
    engine: LocalEngine, invocation_id: str, done: object, within: float = 20.0
) -> Invocation:
    """Poll GetWorkflow until ``done(invocation)``; fail after ``within`` seconds (only a lost
    work item takes that long: the reconciler is off)."""
    deadline = time.monotonic() + within
    while True:
        inv = await engine.client.get(invocation_id, skip_journal=True)
        if done(inv):  # type: ignore[operator]
            return inv
        if time.monotonic() > deadline:
            raise AssertionError(f"{invocation_id} never settled: {inv}")
        await asyncio.sleep(0.005)


def _ended(inv: types_pb2.Invocation) -> bool:
    return inv.status in (S.INVOCATION_STATUS_COMPLETED, S.INVOCATION_STATUS_CANCELLED)


async def test_steering_from_ten_clients_at_once_never_loses_the_work_item(
    engine_factory: EngineFactory,
) -> None:
    """20 rounds of ten clients sending Pause, Resume and Cancel to one live invocation.
    Every round settles (ended, paused, or running with nothing pending) and then ends,
    with the reconciler off: each change brought the work item it needed."""
    engine = await start_ready(engine_factory, [races], reconcile_after=NEVER, slots=8)
    rng = random.Random(1234)
    settle_ms: list[float] = []
    async with _clients(engine, 10) as clients:
        for round_no in range(20):
            tag = _tag()
            handle = await engine.client.start("races/steps", tag)
            if round_no % 2:  # half the rounds steer a fresh invocation, before any record
                await _until(engine, handle.id, lambda i: i.status == S.INVOCATION_STATUS_RUNNING)
            done: list[str] = []
            cancels = round_no < 14  # the other rounds only pause and resume
            await asyncio.gather(*(_steer(c, handle.id, rng, cancels, done) for c in clients))
            started = time.monotonic()
            inv = await _until(engine, handle.id, _settled)
            settle_ms.append((time.monotonic() - started) * 1000)
            if inv.status == S.INVOCATION_STATUS_PAUSED:
                await engine.client.resume(handle.id)
            final = await _until(engine, handle.id, _ended)
            if final.status == S.INVOCATION_STATUS_CANCELLED:
                assert "cancel" in done, (done, final)
            print(
                f"round {round_no:2d}: {len(done):2d} calls took effect "
                f"({Counter(done)}), settled in {settle_ms[-1]:6.1f} ms as "
                f"{S.InvocationStatus.Name(inv.status)}, "
                f"ended {S.InvocationStatus.Name(final.status)}"
            )
    print(
        f"settle time over {len(settle_ms)} rounds: median {statistics.median(settle_ms):.1f} ms,"
        f" max {max(settle_ms):.1f} ms"
    )


# -- Purge racing Invoke and the worker ---------------------------------------------------


async def _purge_once_ended(engine: LocalEngine, invocation_id: str) -> None:
    """Purge as soon as the engine allows it (FAILED_PRECONDITION until it ended)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            await engine.client.purge(invocation_id)
            return
        except FailedPreconditionError:
            assert time.monotonic() < deadline, f"{invocation_id} never ended"
            await asyncio.sleep(0.001)


async def _after_delayed_writers(engine: LocalEngine) -> None:
    """Return once every PENDING-record timer armed so far has run, and a reconcile round
    that began after them has run too."""
    plane = engine.control.plane
    assert plane is not None
    fired = asyncio.Event()
    # Armed after every timer of the Invokes so far, with the same delay: fires after them.
    asyncio.get_running_loop().call_later(engine.config.pending_record_after, fired.set)
    await fired.wait()
    while True:  # the PENDING-record writes those timers started
        if not plane.invocations.pending_writes:
            break
        await asyncio.sleep(0.01)
    # A record with no work item: the reconciler's next round enqueues one for it.
    now = now_ts()
    record = storage_pb2.InvocationRecord(
        id=new_invocation_id(),
        handler="races/once",
        input=storage_pb2.StoredPayload(data=b'"marker"', content_type="application/json"),
        status=S.INVOCATION_STATUS_PENDING,
        created_at=now,
        updated_at=now,
        generation=1,
    )
    nc = await nats.connect(engine.nats_url)
    try:
        store = await open_store(nc, engine.config)
        assert await store.records.create(record) is not None
        deadline = time.monotonic() + 20
        while await store.work.latest_item(record.id) is None:
            assert time.monotonic() < deadline, "the reconciler never ran"
            await asyncio.sleep(0.02)
    finally:
        await nc.close()


async def test_a_purged_invocation_never_comes_back(engine_factory: EngineFactory) -> None:
    """Purge as soon as each invocation ends (often before the worker wrote its record, and
    before the control plane's PENDING-record timer fired): nothing recreates it, and its
    side effect is not repeated, after the timer and a reconcile round."""
    engine = await start_ready(
        engine_factory, [races], pending_record_after=0.2, reconcile_after=0.2
    )
    rng = random.Random(99)
    purged: dict[str, tuple[str, int]] = {}
    for _ in range(40):
        tag = _tag()
        handle = await engine.client.start("races/once", tag)
        await asyncio.sleep(rng.choice((0, 0, 0.001, 0.005, 0.02)))
        await _purge_once_ended(engine, handle.id)
        purged[handle.id] = (tag, EFFECTS[tag])
    await _after_delayed_writers(engine)
    for invocation_id, (tag, effects) in purged.items():
        try:
            view = await engine.client.get(invocation_id)
        except NotFoundError:
            pass
        else:
            raise AssertionError(f"purged {invocation_id} came back: {view.invocation}")
        assert EFFECTS[tag] == effects == 1, (invocation_id, EFFECTS[tag], effects)
    listed = {s.id for s in (await engine.client.list()).invocations}
    assert not listed & set(purged)


# -- SetObjectState racing an exclusive handler -------------------------------------------


async def test_state_edits_racing_an_exclusive_handler_lose_nothing(
    engine_factory: EngineFactory,
) -> None:
    """An operator edits a key's state while exclusive handlers of that key run. Each write
    applies atomically (one CAS of the whole state): no reader ever sees half of one, the
    handlers' read-modify-write of ``n`` loses no increment (the operator never writes it),
    and an entry both write ends with whichever write came last."""
    engine = await start_ready(engine_factory, [account])
    key = _tag()
    handlers = 30
    seen_torn: list[dict[str, object]] = []
    stop = asyncio.Event()

    async def operator(client: Client) -> list[str]:
        tokens = []
        for i in range(handlers):
            token = f"{i}"
            await client.set_state("account", key, {"o1": token, "o2": token, "shared": f"o:{i}"})
            tokens.append(token)
            await asyncio.sleep(0.002)
        return tokens

    async def reader(client: Client) -> None:
        while not stop.is_set():
            state = await client.get_state("account", key)
            if state.get("h1") != state.get("h2") or state.get("o1") != state.get("o2"):
                seen_torn.append(state)
            await asyncio.sleep(0.001)

    async with _clients(engine, 3) as (op_client, read_client, call_client):
        reading = asyncio.create_task(reader(read_client))
        handles = [
            await call_client.start("account/deposit", f"d{i}", key=key) for i in range(handlers)
        ]
        tokens = await operator(op_client)
        results = [await h.result(timeout=30) for h in handles]
        stop.set()
        await reading
        final = await op_client.get_state("account", key)

    assert not seen_torn, seen_torn[:3]
    assert sorted(results) == list(range(1, handlers + 1))  # no increment lost
    assert final["n"] == handlers and STATE_RUNS[key] == handlers
    assert final["h1"] == final["h2"]
    assert final["o1"] == final["o2"] == tokens[-1]
    # The last write of "shared" is the last operator edit or the last handler's changes.
    last_handler = next(f"d{n}" for n in range(handlers) if results[n] == handlers)
    assert final["shared"] in (f"o:{tokens[-1]}", f"h:{last_handler}")
    assert final["h1"] == last_handler
