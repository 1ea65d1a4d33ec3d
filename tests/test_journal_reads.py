"""A journal read sent while the journal stream elects a leader is never answered; the read
is tried again in short tries, so the attempt behind it goes on as soon as a leader answers
(before, one try waited the whole JetStream timeout, and timers behind it ran late)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg

from durable._store import patience
from durable._store.config import EngineConfig
from durable._store.journal import BATCH, Journal
from durable.internal.v1 import storage_pb2
from durable_server.natsd import EmbeddedNats
from durable_server.provision import provision
from tests.nats_cluster import NODES, Cluster, connect


class _ElectingStream:
    """Answers nothing to the first read (a request to a dead leader), then answers."""

    def __init__(self) -> None:
        self.reads = 0
        self.abandoned = 0

    async def get_msg(self, stream: str, **query: Any) -> str:
        self.reads += 1
        if self.reads == 1:
            try:
                await asyncio.Event().wait()  # the dead leader: no answer, ever
            except asyncio.CancelledError:
                self.abandoned += 1
                raise
        return f"answer from {stream}"


async def test_a_read_sent_during_an_election_is_tried_again_in_a_short_try(
    monkeypatch: Any,
) -> None:
    monkeypatch.setattr(patience, "TRY_TIMEOUT", 0.2)
    stream = _ElectingStream()
    journal = Journal(stream, EngineConfig(prefix="jr"))  # type: ignore[arg-type]
    got = await journal._read(subject="jr.journal.x.*")
    assert got == "answer from JR_JOURNAL"
    assert (stream.reads, stream.abandoned) == (2, 1)


@pytest.mark.slow
async def test_a_long_journal_is_read_in_a_few_requests(nats_server: EmbeddedNats) -> None:
    """A 2,000-step journal costs two batched direct gets on a single node (counted on the
    wire), and reads exactly as one get per entry does."""
    cfg = EngineConfig(nats_url=nats_server.url, prefix=f"jr{uuid.uuid4().hex[:8]}")
    nc = await nats.connect(nats_server.url)
    spy = await nats.connect(nats_server.url)
    try:
        await provision(nc, cfg)
        js = nc.jetstream()
        journal = Journal(js, cfg, nc)
        invocation_id = "inv_" + "a" * 26
        last = 0
        for index in range(2000):
            entry = storage_pb2.JournalRecord(index=index, name=f"step-{index}", attempt=1)
            last = await journal.append(invocation_id, entry, last)

        requests: list[str] = []

        async def count(msg: Msg) -> None:
            requests.append(msg.subject)

        await spy.subscribe("$JS.API.DIRECT.GET.>", cb=count)
        await spy.subscribe("$JS.API.STREAM.MSG.GET.>", cb=count)
        await spy.flush()
        batched = await journal.load(invocation_id)
        await nc.flush()
        await spy.flush()
        assert [e.index for e in batched.entries] == list(range(2000))
        assert batched.last_seq == last and not batched.sealed
        assert len(requests) <= 2000 // BATCH + 1, requests

        one_by_one = await Journal(js, cfg).load(invocation_id)
        assert one_by_one.entries == batched.entries and one_by_one.last_seq == last
        for a, b in zip(one_by_one.stored_ns, batched.stored_ns, strict=True):
            assert abs(a - b) < 1_000_000  # the per-entry path reads microseconds

        # A sealed (purged) journal reads as sealed, naming what was purged.
        await journal.purge(invocation_id, 12345)
        gone = await journal.load(invocation_id)
        assert gone.entries == [] and gone.sealed and gone.purged == 12345
    finally:
        await spy.close()
        await nc.close()


@pytest.mark.slow
async def test_a_long_journal_on_a_cluster_is_read_through_one_ordered_consumer(
    nats_cluster: Cluster,
) -> None:
    """On a replicated store a 2,000-step journal costs a handful of JetStream API requests
    (the leader's newest sequence, the ordered consumer's creation), not one per entry, and
    reads exactly as the leader's per-entry reads do."""
    cfg = EngineConfig(
        nats_url=nats_cluster.url, prefix=f"jc{uuid.uuid4().hex[:8]}", replicas=NODES
    )
    nc = await connect(nats_cluster)
    spy = await connect(nats_cluster)
    try:
        await provision(nc, cfg)
        js = nc.jetstream(timeout=10.0)
        journal = Journal(js, cfg, nc)
        invocation_id = "inv_" + "b" * 26
        last = 0
        for index in range(2000):
            entry = storage_pb2.JournalRecord(index=index, name=f"step-{index}", attempt=1)
            last = await journal.append(invocation_id, entry, last)

        requests: list[str] = []

        async def count(msg: Msg) -> None:
            requests.append(msg.subject)

        await spy.subscribe("$JS.API.>", cb=count)
        await spy.flush()
        ordered = await journal.load(invocation_id)
        await nc.flush()
        await spy.flush()
        assert [e.index for e in ordered.entries] == list(range(2000))
        assert ordered.last_seq == last and not ordered.sealed
        assert len(requests) <= 4, requests
        assert all(ns > 0 for ns in ordered.stored_ns)

        # The leader's per-entry reads, which the ordered read replaces, agree.
        by_entry = Journal(js, cfg)
        by_entry._ordered_reads = False
        one_by_one = await by_entry.load(invocation_id)
        assert one_by_one.entries == ordered.entries and one_by_one.last_seq == last
        assert (await journal.load("inv_" + "c" * 26)).entries == []

        # A short journal makes no consumer (a proposal to the meta leader): a few leader
        # reads cost less, and a busy cluster is not left with a consumer per read.
        short_id, last = "inv_" + "d" * 26, 0
        for index in range(5):
            entry = storage_pb2.JournalRecord(index=index, name=f"step-{index}", attempt=1)
            last = await journal.append(short_id, entry, last)
        requests.clear()
        short = await journal.load(short_id)
        await spy.flush()
        assert [e.index for e in short.entries] == list(range(5)) and short.last_seq == last
        assert not [r for r in requests if ".CONSUMER.CREATE." in r], requests
    finally:
        await spy.close()
        await nc.close()
