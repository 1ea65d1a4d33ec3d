"""Waiting clients hear of an outcome from the journal stream itself.

The journal stream republishes each final entry it stored on ``<p>.journaled.<id>`` (core
NATS), and every control plane listens there. So an answer needs neither the record write nor
a message from the worker, and an entry the fence refused is never announced. A store made by
an older engine gets the republish added at start-up.
"""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest

from durable import Context, Service
from durable._store.config import EngineConfig
from durable._store.journal import Journal, JournalFenced
from durable._store.records import now_ts
from durable.internal.v1 import storage_pb2
from durable.v1 import types_pb2
from durable_server.natsd import EmbeddedNats
from durable_server.provision import _stream_configs, ensure_resources
from tests.engine_support import EngineFactory, start_ready, wait_status

S = types_pb2
push = Service("push")
RELEASE: dict[str, asyncio.Event] = {}


async def _hold(tag: str) -> str:
    await RELEASE.setdefault(tag, asyncio.Event()).wait()
    return tag


@push.handler()
async def held(ctx: Context, tag: str) -> str:
    first = await ctx.run("first", lambda: tag)
    return str(await ctx.run("hold", _hold, first))


def _final_entry(index: int, worker_id: str, value: str) -> storage_pb2.JournalRecord:
    final = storage_pb2.FinalOutcome(status=S.INVOCATION_STATUS_COMPLETED)
    final.output.CopyFrom(
        storage_pb2.StoredPayload(data=f'"{value}"'.encode(), content_type="application/json")
    )
    return storage_pb2.JournalRecord(
        index=index,
        kind=S.STEP_KIND_UNSPECIFIED,
        recorded_at=now_ts(),
        worker_id=worker_id,
        attempt=1,
        final=final,
    )


async def test_await_answers_from_the_journaled_outcome_alone(
    engine_factory: EngineFactory, nats_server: EmbeddedNats
) -> None:
    """An outcome appended to the journal (as a worker that dies right after journaling it
    leaves things) reaches a waiting AwaitResult while the record still says RUNNING; an
    append the fence refuses reaches nobody."""
    engine = await start_ready(engine_factory, [push])
    tag = uuid.uuid4().hex
    handle = await engine.client.start("push/held", tag)
    view = await wait_status(engine, handle.id, S.INVOCATION_STATUS_RUNNING)
    # Wait for step 0's entry: the worker journals it before running "hold".
    for _ in range(200):
        view = await engine.client.get(handle.id)
        if len(view.journal) == 1:
            break
        await asyncio.sleep(0.01)
    assert len(view.journal) == 1

    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        journal = Journal(js, engine.config)
        loaded = await journal.load(handle.id)
        waiting = asyncio.ensure_future(engine.client.result(handle.id, timeout=10))
        await asyncio.sleep(0.2)
        with pytest.raises(JournalFenced):  # a stale driver's outcome: refused, unheard
            await journal.append(handle.id, _final_entry(1, "stale", "wrong"), loaded.last_seq - 1)
        await asyncio.sleep(0.2)
        assert not waiting.done(), "an append the fence refused was announced"
        await journal.append(handle.id, _final_entry(1, "operator", "journaled"), loaded.last_seq)
        result = await asyncio.wait_for(waiting, 5)
    finally:
        await nc.close()
        RELEASE.setdefault(tag, asyncio.Event()).set()
    assert result == "journaled"
    still = await engine.client.get(handle.id)
    assert still.status == S.INVOCATION_STATUS_COMPLETED  # the journal's outcome


async def test_start_up_adds_the_republish_to_an_older_store(nats_server: EmbeddedNats) -> None:
    cfg = EngineConfig(nats_url=nats_server.url, prefix=f"old{uuid.uuid4().hex[:8]}")
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        journal_config = _stream_configs(cfg)[0]
        journal_config.republish = None  # as engines before the republish created it
        await js.add_stream(journal_config)
        await ensure_resources(js, cfg)
        info = await js.stream_info(cfg.journal_stream)
        assert info.config.republish is not None
        assert (info.config.republish.src, info.config.republish.dest) == (
            f"{cfg.prefix}.journal.*.f",
            f"{cfg.prefix}.journaled.{{{{wildcard(1)}}}}",
        )
        heard = await nc.subscribe(cfg.journaled_subject("*"))
        step = storage_pb2.JournalRecord(index=0, kind=S.STEP_KIND_RUN, name="a", worker_id="w")
        journal = Journal(js, cfg)
        seq = await journal.append("inv_x", step, 0)  # a step: not republished
        await journal.append("inv_x", _final_entry(1, "w", "x"), seq)
        msg = await heard.next_msg(timeout=5)
        assert msg.subject == cfg.journaled_subject("inv_x")
        assert storage_pb2.JournalRecord.FromString(msg.data).final.output.data == b'"x"'
        with pytest.raises(nats.errors.TimeoutError):
            await heard.next_msg(timeout=0.3)  # nothing else: the step was not republished
    finally:
        await nc.close()
