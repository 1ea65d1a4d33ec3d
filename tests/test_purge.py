"""Purged means gone: the writers that could bring a purged invocation back, each stopped at
the exact moment that would let it (a worker that journaled the outcome but has not written
the record; a worker holding a redelivery of the fresh item; a replay starting a callee
again). The race with Invoke and the PENDING-record timer is in test_races.py."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from typing import Any

import pytest

from durable import Context, Service
from durable._store.ids import child_invocation_id, new_invocation_id
from durable._store.journal import LoadedJournal
from durable._store.records import Record, is_terminal, now_ts
from durable._store.waking import HandlerKinds, Waker
from durable._worker.runtime import Worker
from durable.errors import NotFoundError
from durable.internal.v1 import storage_pb2
from durable.testing import LocalEngine
from durable.v1 import types_pb2
from tests.engine_support import EngineFactory, StoreOpener, start_ready

S = types_pb2
EFFECTS: Counter[str] = Counter()

gone = Service("gone")


@gone.handler()
async def once(ctx: Context, tag: str) -> str:
    def effect() -> str:
        EFFECTS[tag] += 1
        return tag

    return await ctx.run("effect", effect)


def _tag() -> str:
    return uuid.uuid4().hex[:8]


async def _not_found(engine: LocalEngine, invocation_id: str) -> None:
    with pytest.raises(NotFoundError):
        await engine.client.get(invocation_id)


async def _done_with(worker: Worker, invocation_id: str) -> None:
    """Wait until the worker no longer drives the invocation."""
    deadline = time.monotonic() + 10
    while True:
        if not worker.driving(invocation_id):
            return
        assert time.monotonic() < deadline, f"{invocation_id} still driven"
        await asyncio.sleep(0.005)


def _hold_final_record(worker: Worker, tag: str) -> tuple[asyncio.Event, asyncio.Event]:
    """Stop ``worker`` right before it writes the ended record of the invocation of ``tag``
    (its outcome is journaled by then); returns (reached, release)."""
    records = worker._records
    create = records.create
    reached, release = asyncio.Event(), asyncio.Event()

    async def held(record: Record, **kwargs: Any) -> int | None:
        if is_terminal(record.status) and tag.encode() in record.input.data:
            reached.set()
            await release.wait()
        return await create(record, **kwargs)

    records.create = held  # type: ignore[method-assign]
    return reached, release


async def test_the_worker_writes_no_record_for_an_invocation_purged_after_its_outcome(
    engine_factory: EngineFactory,
) -> None:
    engine = await start_ready(engine_factory, [gone])
    tag = _tag()
    reached, release = _hold_final_record(engine.worker, tag)
    handle = await engine.client.start("gone/once", tag)
    await asyncio.wait_for(reached.wait(), 10)
    await engine.client.purge(handle.id)  # the journal says it ended
    release.set()
    await _done_with(engine.worker, handle.id)
    await _not_found(engine, handle.id)
    assert EFFECTS[tag] == 1


@pytest.mark.slow
async def test_a_redelivered_fresh_item_of_a_purged_invocation_does_not_run_it(
    engine_factory: EngineFactory,
) -> None:
    """The worker that journaled the outcome dies before writing the record; a second worker
    gets the item again (after ``ack_wait``), finds no record, and is about to load the
    journal when the invocation is purged. It must find the purge, not an empty journal to
    run afresh."""
    engine = await start_ready(engine_factory, [gone], ack_wait=2.0)
    tag = _tag()
    reached, _ = _hold_final_record(engine.worker, tag)
    handle = await engine.client.start("gone/once", tag)
    await asyncio.wait_for(reached.wait(), 10)

    second = Worker(engine.config, [gone], worker_id=f"second-{tag}")
    await second.start()
    journal = second._executor._journal
    load = journal.load
    loading, release_load = asyncio.Event(), asyncio.Event()

    async def held_load(invocation_id: str) -> LoadedJournal:
        if invocation_id == handle.id:
            loading.set()
            await release_load.wait()
        return await load(invocation_id)

    journal.load = held_load  # type: ignore[method-assign]
    try:
        # The first worker dies: its connection goes, its item is redelivered after ack_wait.
        await engine.worker.nc.close()
        await asyncio.wait_for(loading.wait(), 20)
        await engine.client.purge(handle.id)
        release_load.set()
        await _done_with(second, handle.id)
        await _not_found(engine, handle.id)
        assert EFFECTS[tag] == 1
    finally:
        await second.stop()


async def test_a_record_written_as_the_purge_runs_does_not_run_it_again(
    engine_factory: EngineFactory, engine_store: StoreOpener
) -> None:
    """A worker journaled the outcome and died before the record; a Pause (``get_record``)
    writes the record from the fresh item while Purge runs, after the journal was deleted
    and before the record goes. A worker that claims that record must not take the empty
    journal for a fresh start: the purge's seal names the invocation."""
    engine = await start_ready(engine_factory, [gone])
    plane = engine.control.plane
    assert plane is not None
    store = await engine_store(engine)
    await engine.worker.stop()  # nothing takes the items until the second worker below
    tag = _tag()
    now = now_ts()
    initial = storage_pb2.InvocationRecord(
        id=new_invocation_id(),
        handler="gone/once",
        input=storage_pb2.StoredPayload(data=f'"{tag}"'.encode(), content_type="application/json"),
        status=S.INVOCATION_STATUS_PENDING,
        created_at=now,
        updated_at=now,
        generation=1,
    )
    invocation_id = initial.id
    await store.work.enqueue(invocation_id, initial.handler, 1, "invoke", initial=initial)
    # As left by a worker that journaled the outcome and died before writing the record.
    final = storage_pb2.JournalRecord(index=0, worker_id="dead", attempt=1)
    final.final.status = S.INVOCATION_STATUS_COMPLETED
    await store.journal.append(invocation_id, final, 0)
    late = await store.work.fresh_record(invocation_id)  # what get_record writes
    assert late is not None

    purge_record = plane.store.records.purge
    at_record, release = asyncio.Event(), asyncio.Event()

    async def held_purge(target: str) -> None:
        at_record.set()
        await release.wait()
        await purge_record(target)

    # Fault injection: the control plane's own record store pauses before the record goes.
    plane.store.records.purge = held_purge  # type: ignore[method-assign]
    purging = asyncio.create_task(engine.client.purge(invocation_id))
    await asyncio.wait_for(at_record.wait(), 10)
    assert await store.records.create(late) is not None
    await store.work.enqueue_record(late, "operator")

    second = Worker(engine.config, [gone], worker_id=f"second-{tag}")
    await second.start()
    try:
        deadline = time.monotonic() + 10
        while True:  # until the item is handled (acked)
            info = await store.js.consumer_info(
                engine.config.work_stream, engine.config.run_consumer("gone")
            )
            if not info.num_pending and not info.num_ack_pending:
                break
            assert time.monotonic() < deadline, info
            await asyncio.sleep(0.02)
    finally:
        await second.stop()
    release.set()
    await purging
    await _not_found(engine, invocation_id)
    assert EFFECTS[tag] == 0


async def test_a_replay_does_not_start_a_purged_callee_again(
    engine_factory: EngineFactory, engine_store: StoreOpener
) -> None:
    """A caller's replay runs ctx.call's start again when the attempt that started the
    callee died before journaling the call. If the callee has ended and been purged by
    then, it stays purged (the caller's await then says so)."""
    engine = await start_ready(engine_factory, [gone])
    store = await engine_store(engine)
    tag = _tag()
    caller = new_invocation_id()

    def callee() -> storage_pb2.InvocationRecord:
        """What the caller's ctx.call at step 1 asks ``Waker.start`` for, every time."""
        now = now_ts()
        return storage_pb2.InvocationRecord(
            id=child_invocation_id(caller, 1),
            handler="gone/once",
            input=storage_pb2.StoredPayload(
                data=f'"{tag}"'.encode(), content_type="application/json"
            ),
            status=S.INVOCATION_STATUS_PENDING,
            created_at=now,
            updated_at=now,
            generation=1,
            caller_id=caller,
        )

    # The Waker a worker's ctx.call uses, over the same store.
    kinds = HandlerKinds({}, store.workers)  # as the worker knows them: registrations
    waker = Waker(store.js, engine.config, store.records, store.work, keys=store.keys, kinds=kinds)
    started = await waker.start(callee())
    assert await engine.client.result(started, timeout=10) == tag
    await engine.client.purge(started)

    assert await waker.start(callee()) == started  # the replay
    # Nothing was written that could run it: no record, no work item.
    await _not_found(engine, started)
    assert await store.work.latest_item(started) is None
    assert EFFECTS[tag] == 1
