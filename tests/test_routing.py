"""Routing by service, with real worker processes as separate deployments would run them:
an item reaches only workers that host its service, a worker hosting several takes from
each, and a service whose only worker died waits (visibly) while the others go on.

Every step writes ``<invocation> <service> <pid> <attempt>`` to a ledger (tests/routing),
so which process ran which service's steps is known; the work consumers' counters say
whether any item was ever delivered twice (a nak-and-redeliver would be).
"""

from __future__ import annotations

import asyncio
import collections
import random
import statistics
import time
import uuid
from pathlib import Path

import nats
import pytest

from durable import Client, InvocationStatus
from durable._store.config import EngineConfig
from durable_server.natsd import EmbeddedNats
from tests.procs import EngineProc, ProcGroup, free_port, wait_healthy

pytestmark = pytest.mark.slow

SERVICES = ("orders", "payments", "notices")
MODULES = {s: f"tests.routing.{s}" for s in SERVICES}
INVOCATIONS = 300
IN_FLIGHT = 24
#: A bounce (nak with a delay, then redelivery) costs at least 1 s per hop; the machine's
#: own spread on this load is tens of milliseconds. A routed p50 this much above the
#: single pool's can only come from items that went to a worker that could not run them.
BOUNCE = 0.9


def _ledger(path: Path) -> list[tuple[str, str, int, int]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        inv, service, pid, attempt = line.split()
        out.append((inv, service, int(pid), int(attempt)))
    return out


async def _run_load(client: Client, count: int, seed: int) -> tuple[list[str], float]:
    """``count`` invocations of every service's ``fast``, spread evenly, at most IN_FLIGHT
    at once; (their ids, the median seconds from Invoke to result)."""
    rng = random.Random(seed)
    handlers = [f"{s}/fast" for s in SERVICES]
    gate = asyncio.Semaphore(IN_FLIGHT)
    ids: list[str] = []
    took: list[float] = []

    async def one(i: int) -> None:
        async with gate:
            started = time.monotonic()
            handle = await client.invoke(handlers[i % 3], rng.randrange(1000), wait=False)
            ids.append(handle.id)
            await handle.result(timeout=60)
            took.append(time.monotonic() - started)

    await asyncio.gather(*(one(i) for i in range(count)))
    return ids, statistics.median(took)


async def _deliveries(url: str, cfg: EngineConfig, within: float = 30.0) -> dict[str, int]:
    """How many deliveries each work consumer has made, once none is pending or unacked
    (results reach clients before the worker acks the item)."""
    nc = await nats.connect(url)
    deadline = time.monotonic() + within
    try:
        while True:
            infos = await nc.jetstream().consumers_info(cfg.work_stream)
            if all(not ci.num_pending and not ci.num_ack_pending for ci in infos):
                return {ci.name: int(ci.delivered.consumer_seq or 0) for ci in infos}
            assert time.monotonic() < deadline, [
                (ci.name, ci.num_pending, ci.num_ack_pending) for ci in infos
            ]
            await asyncio.sleep(0.05)
    finally:
        await nc.close()


async def _hosting(client: Client, service: str, live: int, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while True:
        handlers = await client.handlers()
        if sum(h.live_workers for h in handlers if h.name == f"{service}/fast") >= live:
            return
        assert time.monotonic() < deadline, f"{live} live workers of {service} never registered"
        await asyncio.sleep(0.1)


async def test_each_item_goes_only_to_workers_hosting_its_service(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    prefix = f"r{uuid.uuid4().hex[:8]}"
    group = ProcGroup(tmp_path / "logs", nats_server.url, prefix, ack_wait=10.0, ledger=ledger)
    port = free_port()
    target = f"127.0.0.1:{port}"
    try:
        server = group.server(port).start()
        await wait_healthy(target, proc=server)
        async with Client(target) as client:
            # The reference: one pool hosting all three services, on the same machine now.
            single = group.worker("single", modules=list(MODULES.values())).start()
            for s in SERVICES:
                await _hosting(client, s, 1)
            _, single_p50 = await _run_load(client, INVOCATIONS, seed=1)
            # Until it has acked every item (after the results went out), then stopped.
            cfg = EngineConfig(prefix=prefix)
            first = await _deliveries(nats_server.url, cfg)
            single.stop()
            for s in SERVICES:
                await _hosting(client, s, 0)
            # Three deployments of one service each, and one hosting two of them.
            workers: dict[str, EngineProc] = {}
            hosts: dict[str, set[str]] = {}
            for s in SERVICES:
                workers[s] = group.worker(s, slots=16, modules=[MODULES[s]]).start()
                hosts[s] = {s}
            workers["combo"] = group.worker(
                "combo", slots=16, modules=[MODULES["orders"], MODULES["payments"]]
            ).start()
            hosts["combo"] = {"orders", "payments"}
            for s, live in (("orders", 2), ("payments", 2), ("notices", 1)):
                await _hosting(client, s, live)
            before = len(_ledger(ledger))
            ids, routed_p50 = await _run_load(client, INVOCATIONS, seed=2)

            views = await asyncio.gather(*(client.get(i) for i in ids))
            assert {v.status for v in views} == {InvocationStatus.COMPLETED}
            assert [v.id for v in views if v.attempt != 1] == []  # nobody bounced or retried

        by_pid = {w.pid: name for name, w in workers.items()}
        ran: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for _, service, pid, attempt in _ledger(ledger)[before:]:
            assert attempt == 1
            ran[by_pid[pid]][service] += 1
        for name, services in ran.items():
            assert set(services) <= hosts[name], (name, dict(services))
        # The worker hosting two services took work from both.
        assert ran["combo"]["orders"] > 0 and ran["combo"]["payments"] > 0, dict(ran["combo"])
        # Each item was delivered once: nothing was handed back, bounced or redelivered.
        counts = await _deliveries(nats_server.url, cfg)
        assert set(counts) == {f"run_{s}" for s in SERVICES}, counts
        assert {c: counts[c] - first[c] for c in counts} == {
            f"run_{s}": INVOCATIONS // 3 for s in SERVICES
        }, (first, counts)
        for w in workers.values():
            assert "no handler" not in w.log(), w.tail()
        print(
            f"\n[routing] p50 {routed_p50 * 1000:.1f} ms over 4 routed workers, "
            f"{single_p50 * 1000:.1f} ms over one pool; runs per worker "
            f"{ {k: dict(v) for k, v in ran.items()} }"
        )
        assert routed_p50 < single_p50 + BOUNCE
    finally:
        group.close()


async def test_a_service_whose_only_worker_died_waits_while_the_others_go_on(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    prefix = f"r{uuid.uuid4().hex[:8]}"
    group = ProcGroup(
        tmp_path / "logs",
        nats_server.url,
        prefix,
        ack_wait=3.0,
        ledger=ledger,
        heartbeat_interval=0.5,
    )
    port = free_port()
    target = f"127.0.0.1:{port}"
    try:
        server = group.server(port).start()
        await wait_healthy(target, proc=server)
        async with Client(target) as client:
            for s in ("orders", "payments"):
                group.worker(s, slots=16, modules=[MODULES[s]]).start()
            notices = group.worker("notices", slots=2, modules=[MODULES["notices"]]).start()
            for s in SERVICES:
                await _hosting(client, s, 1)
            queued = [(await client.invoke("notices/slow", i, wait=False)).id for i in range(50)]
            # Killed while it runs its first two and the other 48 wait in its queue.
            deadline = time.monotonic() + 20
            while not any(service == "notices" for _, service, _, _ in _ledger(ledger)):
                assert time.monotonic() < deadline, notices.tail()
                await asyncio.sleep(0.02)
            killed = notices.kill()

            # The rest of the fleet goes on, with nothing to wait for.
            for i in range(60):
                handler = ("orders/fast", "payments/fast")[i % 2]
                assert await client.execute(handler, i, timeout=30) == i + 2
            # The waiting ones say nobody serves them now, and since when.
            deadline = time.monotonic() + 20
            while True:
                pending = [
                    v
                    for v in await asyncio.gather(*(client.get(i) for i in queued[-5:]))
                    if v.status == InvocationStatus.PENDING
                ]
                if pending and all(v.no_worker_since is not None for v in pending):
                    break
                assert time.monotonic() < deadline, pending
                await asyncio.sleep(0.2)
            stats = (await client.stats()).by_service["notices"]
            assert stats.live_workers == 0 and stats.no_worker_since is not None

            # A worker for it comes back: every one of the 50 completes, once.
            group.worker("notices-again", slots=8, modules=[MODULES["notices"]]).start()
            results = await asyncio.gather(*(client.result(i, timeout=120) for i in queued))
            assert results == [i + 1 for i in range(50)]
        runs = collections.Counter(
            inv for inv, service, pid, _ in _ledger(ledger) if service == "notices"
        )
        killed_runs = {inv for inv, _, pid, _ in _ledger(ledger) if pid == killed}
        for inv in queued:
            # A step journaled is never run again; only one in flight on the killed worker
            # (its result never journaled) may have run twice.
            assert runs[inv] == 1 or (runs[inv] == 2 and inv in killed_runs), (inv, runs[inv])
    finally:
        group.close()


async def test_items_of_a_store_made_before_routing_are_moved_and_run(
    nats_server: EmbeddedNats,
) -> None:
    """A store made by engine 0.1 has items on ``<p>.work.<id>`` for the one consumer
    ``workers`` (and schedules that still fire there): a control plane moves them onto
    their services' subjects, where the workers hosting them take them."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    from durable.internal.v1 import storage_pb2
    from durable.testing import start_engine
    from durable.v1 import types_pb2
    from durable_server.provision import ensure_resources
    from tests.routing.orders import orders

    prefix = f"r{uuid.uuid4().hex[:8]}"
    cfg = EngineConfig(nats_url=nats_server.url, prefix=prefix)
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await ensure_resources(js, cfg)
        await js.add_consumer(
            cfg.work_stream,
            ConsumerConfig(
                durable_name=cfg.legacy_consumer,
                filter_subjects=cfg.legacy_filters,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
            ),
        )
        initial = storage_pb2.InvocationRecord(
            id="inv_" + "a" * 26,
            handler="orders/fast",
            input=storage_pb2.StoredPayload(data=b"41", content_type="application/json"),
            status=types_pb2.INVOCATION_STATUS_PENDING,
            generation=1,
        )
        initial.created_at.GetCurrentTime()
        item = storage_pb2.WorkItem(
            invocation_id=initial.id, reason="invoke", initial=initial, generation=1
        )
        await js.publish(cfg.legacy_work_subject(initial.id), item.SerializeToString())
    finally:
        await nc.close()
    async with start_engine([orders], nats_url=nats_server.url, prefix=prefix) as engine:
        assert await engine.client.result(initial.id, timeout=30) == 43
        assert (await engine.client.get(initial.id)).attempt == 1
