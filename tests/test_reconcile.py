"""The reconciler enqueues again an invocation whose work item never made it to the stream
(a process died between writing the record and the item), and only then."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest

from durable import Context, Service
from durable._store.ids import new_invocation_id
from durable._store.records import now_ts
from durable.internal.v1 import storage_pb2
from durable.v1 import types_pb2
from tests.engine_support import EngineFactory, StoreOpener, until

S = types_pb2
RUNS: Counter[str] = Counter()

rec = Service("reconcile")


@rec.handler()
async def once(ctx: Context, tag: str) -> str:
    """One step, counted."""

    def work() -> str:
        RUNS[tag] += 1
        return f"{tag}-done"

    return await ctx.run("work", work)


def _pending_record(tag: str, generation: int) -> storage_pb2.InvocationRecord:
    now = now_ts()
    return storage_pb2.InvocationRecord(
        id=new_invocation_id(),
        handler="reconcile/once",
        input=storage_pb2.StoredPayload(data=f'"{tag}"'.encode(), content_type="application/json"),
        status=S.INVOCATION_STATUS_PENDING,
        created_at=now,
        updated_at=now,
        generation=generation,
    )


async def test_record_without_its_work_item_is_enqueued_again(
    engine_factory: EngineFactory, engine_store: StoreOpener
) -> None:
    engine = await engine_factory([rec], reconcile_after=0.3)
    store = await engine_store(engine)
    tag = uuid.uuid4().hex[:8]
    # As left by a control plane that died after writing the record of a Resume (gen 2)
    # but before enqueueing its item: the newest item is the older generation's.
    record = _pending_record(tag, generation=2)
    handled = engine.worker.handled
    await store.work.enqueue(record.id, record.handler, 1, "invoke")
    # A worker takes (and acks) that stale generation-1 item before the record exists.
    await until(lambda: engine.worker.handled > handled, "the stale item is handled")
    assert await store.records.create(record) is not None

    assert await engine.client.result(record.id, timeout=10) == f"{tag}-done"
    assert RUNS[tag] == 1
    item = await store.work.latest_item(record.id)
    assert item is not None and item.generation == 2 and item.reason == "reconcile"


@pytest.mark.slow
async def test_queued_item_of_the_records_generation_is_left_alone(
    engine_factory: EngineFactory, engine_store: StoreOpener
) -> None:
    engine = await engine_factory([rec], reconcile_after=0.2)
    plane = engine.control.plane
    assert plane is not None
    store = await engine_store(engine)
    await engine.worker.stop()  # nobody takes the item: it stays queued
    record = _pending_record(uuid.uuid4().hex[:8], generation=1)
    assert await store.records.create(record) is not None
    await store.work.enqueue(record.id, record.handler, 1, "invoke")
    rounds = plane.reconcile_rounds
    await until(lambda: plane.reconcile_rounds >= rounds + 3, "three reconcile rounds")
    item = await store.work.latest_item(record.id)
    assert item is not None and item.generation == 1 and item.reason == "invoke"


async def test_scheduled_start_whose_schedule_was_lost_is_enqueued(
    engine_factory: EngineFactory, engine_store: StoreOpener
) -> None:
    """A delayed send whose sender died between creating the record and publishing its
    schedule: once its time has passed, the reconciler starts it."""
    engine = await engine_factory([rec], reconcile_after=0.3)
    store = await engine_store(engine)
    tag = uuid.uuid4().hex[:8]
    record = _pending_record(tag, generation=1)
    record.status = S.INVOCATION_STATUS_SCHEDULED
    record.scheduled_at.FromNanoseconds(now_ts().ToNanoseconds() - 10**9)
    assert await store.records.create(record) is not None
    assert await engine.client.result(record.id, timeout=10) == f"{tag}-done"
    assert RUNS[tag] == 1
