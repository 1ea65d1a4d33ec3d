"""An object key's line must keep moving when a process dies (or JetStream times out) between
the writes that accept an exclusive invocation: the record, the inbox message, the lock, the
work item. The client repeating its idempotent Invoke finishes what the first one started;
the reconciler repairs a key nobody will come back for (a free key with a line, a key still
held by an invocation that ended).

Each test leaves the key as the dying Invoke or worker would have, using the engine's own
stores, then checks that the waiting invocations run.
"""

from __future__ import annotations

import uuid

import pytest

from durable import Context, VirtualObject
from durable._store.ids import idempotent_invocation_id, token
from durable._store.objects import lock_key
from durable._store.records import now_ts
from durable.contract import EngineConfig, Store
from durable.internal.v1 import storage_pb2
from durable.v1 import types_pb2
from tests.engine_support import EngineFactory, StoreOpener, start_ready

S = types_pb2
NEVER = 1e6

tally = VirtualObject("tally")


@tally.handler()
async def bump(ctx: Context, n: int) -> int:
    total = int(await ctx.get("total", int) or 0) + n
    ctx.set("total", total)
    return total


async def _accepted_record(store: Store, key: str, idem: str, n: int) -> str:
    """What Invoke writes first for an exclusive invocation (records.create)."""
    now = now_ts()
    record = storage_pb2.InvocationRecord(
        id=idempotent_invocation_id("tally/bump", key, idem),
        handler="tally/bump",
        key=key,
        input=storage_pb2.StoredPayload(data=str(n).encode(), content_type="application/json"),
        status=S.INVOCATION_STATUS_PENDING,
        idempotency_key=idem,
        created_at=now,
        updated_at=now,
        generation=1,
    )
    assert await store.records.create(record) is not None
    return record.id


async def _publish_inbox(store: Store, cfg: EngineConfig, key: str, invocation_id: str) -> None:
    """The inbox message KeyQueue.enqueue publishes before it tries to take the lock."""
    await store.js.publish(
        cfg.inbox_subject("tally", token(key)),
        invocation_id.encode(),
        headers={"Nats-Msg-Id": f"inbox:{invocation_id}"},
    )


@pytest.mark.parametrize("died_after", ["record", "inbox message"])
async def test_repeated_exclusive_invoke_finishes_what_the_first_started(
    engine_factory: EngineFactory, died_after: str, engine_store: StoreOpener
) -> None:
    engine = await start_ready(engine_factory, [tally], reconcile_after=NEVER)
    store = await engine_store(engine)
    key, idem = uuid.uuid4().hex[:8], "once"
    inv = await _accepted_record(store, key, idem, 5)
    if died_after == "inbox message":
        await _publish_inbox(store, engine.config, key, inv)

    again = await engine.client.invoke("tally/bump", 5, key=key, idempotency_key=idem)
    assert again.already_existed and again.id == inv
    assert await again.result(timeout=15) == 5
    # The key is free again, and queued only once: the next one runs after it.
    later = await engine.client.invoke("tally/bump", 1, key=key, wait=True, wait_timeout=15)
    assert await later.result(timeout=15) == 6


@pytest.mark.slow
async def test_reconciler_hands_on_a_free_key_with_a_line(
    engine_factory: EngineFactory, engine_store: StoreOpener
) -> None:
    engine = await start_ready(engine_factory, [tally], reconcile_after=0.5)
    store = await engine_store(engine)
    key = uuid.uuid4().hex[:8]
    first = await _accepted_record(store, key, "a", 2)
    await _publish_inbox(store, engine.config, key, first)
    # Queued behind the first in the inbox; the key is free, so nobody enqueues either.
    second = await _accepted_record(store, key, "b", 3)
    await _publish_inbox(store, engine.config, key, second)

    assert await engine.client.result(first, timeout=30) == 2
    assert await engine.client.result(second, timeout=30) == 5


@pytest.mark.slow
async def test_reconciler_passes_on_a_key_its_ended_holder_kept(
    engine_factory: EngineFactory, engine_store: StoreOpener
) -> None:
    engine = await start_ready(engine_factory, [tally], reconcile_after=0.5)
    store = await engine_store(engine)
    key = uuid.uuid4().hex[:8]
    done = await engine.client.invoke("tally/bump", 1, key=key, wait=True, wait_timeout=15)
    assert await done.result(timeout=15) == 1
    # The holder's worker died after its record said COMPLETED, before passing the key on.
    waiting = await _accepted_record(store, key, "w", 4)
    await _publish_inbox(store, engine.config, key, waiting)
    lock = storage_pb2.KeyLock(holder=done.id, inbox_seq=1)
    await store.js.publish(
        f"$KV.{engine.config.locks_bucket}.{lock_key('tally', key)}", lock.SerializeToString()
    )

    assert await engine.client.result(waiting, timeout=30) == 5


async def test_a_late_state_apply_by_an_earlier_holder_is_refused(
    engine_factory: EngineFactory, engine_store: StoreOpener
) -> None:
    """A worker that froze between journaling an exclusive invocation's outcome and applying
    its state changes must not apply them after the key moved on: another worker applied
    them for it, the next holder changed the state since, and a late apply would put the
    old values back (chaos seed 432344: two adds to one counter returned the same count).
    Changes are applied under the revision of the holder's lock entry, once, and never
    under an earlier one than the state's last. The revision, not the inbox sequence: a
    repair may hand a key out of inbox order (here: c queued before d, d took the key)."""
    engine = await start_ready(engine_factory, [tally])
    store = await engine_store(engine)
    key = f"late-{uuid.uuid4().hex[:8]}"
    a, b = "inv_" + "a" * 26, "inv_" + "b" * 26

    def total(n: int) -> dict[str, storage_pb2.StoredPayload | None]:
        value = storage_pb2.StoredPayload(data=str(n).encode(), content_type="application/json")
        return {"total": value}

    assert await store.keys.enqueue("tally", key, a)
    assert not await store.keys.enqueue("tally", key, b)  # in line behind a
    seq_a = await store.keys.held_revision("tally", key, a)
    assert seq_a and await store.keys.held_revision("tally", key, b) is None
    assert await store.state.apply("tally", key, total(7), False, holder=seq_a)
    # The same holder's changes again (another worker finishing its outcome): nothing.
    assert not await store.state.apply("tally", key, total(7), False, holder=seq_a)
    assert await store.keys.release("tally", key, a) == b
    seq_b = await store.keys.held_revision("tally", key, b)
    assert seq_b is not None and seq_b > seq_a
    assert await store.state.apply("tally", key, total(8), False, holder=seq_b)
    # a's frozen worker thaws and applies its changes: refused, b's state stands.
    assert not await store.state.apply("tally", key, total(7), False, holder=seq_a)
    assert (await store.state.load("tally", key))["total"].data == b"8"

    # Out of inbox order: c's Invoke died between its inbox message and the lock, d came
    # after and took the free key; once d is done, a repair hands the key to c.
    c, d = "inv_" + "c" * 26, "inv_" + "d" * 26
    assert await store.keys.release("tally", key, b) is None  # free again
    await _publish_inbox(store, engine.config, key, c)
    assert await store.keys.enqueue("tally", key, d)
    seq_d = await store.keys.held_revision("tally", key, d)
    assert seq_d is not None
    assert await store.state.apply("tally", key, total(9), False, holder=seq_d)
    assert await store.keys.release("tally", key, d) is None  # c is before d in the inbox
    assert await store.keys.take_if_free("tally", key) == c
    seq_c = await store.keys.held_revision("tally", key, c)
    assert seq_c is not None and seq_c > seq_d
    assert await store.state.apply("tally", key, total(10), False, holder=seq_c)
    assert (await store.state.load("tally", key))["total"].data == b"10"
