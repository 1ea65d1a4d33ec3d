"""Waits under crashes, with real processes: a durable timer and an awakeable survive SIGKILL
of the worker, the control plane and nats-server; a delayed send is made once across a crash
right after it; a call chain A -> B -> C with a crash in B runs each step once; a thousand
sleepers share ten worker slots without holding them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from durable import Client, Invocation
from durable.v1 import types_pb2
from durable_server.natsd import EmbeddedNats
from tests.procs import FAST_RECONNECT, EngineProc, ProcGroup, free_port, read_ledger, wait_healthy
from tests.test_crash_worker import wait_for_handler

pytestmark = pytest.mark.slow
S = types_pb2


async def _wait_status(
    client: Client, invocation_id: str, status: int, within: float = 20.0
) -> Invocation:
    deadline = time.monotonic() + within
    while True:
        view = await client.get(invocation_id)
        if view.status == status:
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"{invocation_id} is {view.status}, wanted {status}")
        await asyncio.sleep(0.05)


def _runs(ledger: Path, invocation_id: str) -> dict[int, int]:
    return {
        step: len(ex) for (inv, step), ex in read_ledger(ledger).items() if inv == invocation_id
    }


async def _keep_alive(proc: EngineProc, until: asyncio.Event) -> None:
    """Restart a worker that killed itself (the handlers' _die_once)."""
    while not until.is_set():
        if not proc.running:
            proc.start()
        await asyncio.sleep(0.1)


@dataclass
class Engine:
    """A control plane and a worker as processes, a client, and the steps' ledger."""

    group: ProcGroup
    server: EngineProc
    worker: EngineProc
    client: Client
    target: str
    ledger: Path


@contextlib.asynccontextmanager
async def engine(
    nats: EmbeddedNats,
    tmp_path: Path,
    prefix: str,
    *,
    ack_wait: float,
    slots: int = 8,
    restart_worker: bool = False,
) -> AsyncIterator[Engine]:
    """Start both processes; with ``restart_worker``, start the worker again whenever it
    killed itself (the handlers' _die_once)."""
    ledger = tmp_path / "ledger.txt"
    group = ProcGroup(tmp_path / "logs", nats.url, prefix, ack_wait=ack_wait, ledger=ledger)
    port = free_port()
    target = f"127.0.0.1:{port}"
    done = asyncio.Event()
    try:
        server = group.server(port).start()
        worker = group.worker(slots=slots).start()
        await wait_healthy(target, proc=server)
        keeper = asyncio.create_task(_keep_alive(worker, done)) if restart_worker else None
        async with Client(target, options=FAST_RECONNECT, unavailable_retry=None) as client:
            await wait_for_handler(client, "waitcrash/nap")
            yield Engine(group, server, worker, client, target, ledger)
        done.set()
        if keeper is not None:
            await keeper
    finally:
        done.set()
        group.close()


async def test_sleep_and_awakeable_survive_every_process_killed(
    isolated_nats: EmbeddedNats, tmp_path: Path
) -> None:
    async with engine(isolated_nats, tmp_path, "waitkill", ack_wait=2.0) as e:
        client = e.client
        sleeper = await client.start("waitcrash/nap", 6.0)
        approval = await client.start("waitcrash/approve", 120)
        await _wait_status(client, sleeper.id, S.INVOCATION_STATUS_SUSPENDED)
        view = await _wait_status(client, approval.id, S.INVOCATION_STATUS_SUSPENDED)
        awakeable = view.waiting_for[0].awakeable_id

        e.worker.kill()
        e.server.kill()
        isolated_nats.kill()
        await asyncio.sleep(0.5)
        isolated_nats.start()
        e.server.start()
        e.worker.start()
        await wait_healthy(e.target, proc=e.server)

        await client.resolve_awakeable(awakeable, "approved")
        assert await approval.result(timeout=30) == f"120: approved ({awakeable})"
        slept = await sleeper.result(timeout=30)
        assert 6.0 <= slept < 15.0
        for inv in (sleeper.id, approval.id):
            assert _runs(e.ledger, inv) == {0: 1, 1: 1}, read_ledger(e.ledger)


async def test_delayed_send_is_made_once_across_a_crash_right_after_it(
    isolated_nats: EmbeddedNats, tmp_path: Path
) -> None:
    async with engine(isolated_nats, tmp_path, "sendkill", ack_wait=1.0, restart_worker=True) as e:
        child = await e.client.execute("waitcrash/delayed_sender", 2.0, timeout=60)
        assert e.worker.runs >= 2, "the worker never died"
        assert await e.client.result(child, timeout=30) == 42
        children = await e.client.list(handler="waitcrash/target")
        assert [s.id for s in children.invocations] == [child]
        assert _runs(e.ledger, child) == {0: 1}


async def test_call_chain_with_a_crash_in_the_middle(
    isolated_nats: EmbeddedNats, tmp_path: Path
) -> None:
    async with engine(isolated_nats, tmp_path, "chainkill", ack_wait=1.0, restart_worker=True) as e:
        a = await e.client.start("waitcrash/chain_a", 4)
        assert await a.result(timeout=60) == 5 * 10 + 1
        assert e.worker.runs >= 2, "B's worker never died"
        ids = {s.handler: s.id for s in (await e.client.list()).invocations}
        for handler in ("waitcrash/chain_a", "waitcrash/chain_b"):
            assert _runs(e.ledger, ids[handler]) == {0: 1, 1: 1}, read_ledger(e.ledger)
        assert _runs(e.ledger, ids["waitcrash/chain_c"]) == {0: 1}
        b = await e.client.get(ids["waitcrash/chain_b"])
        assert b.caller_id == a.id and b.status == S.INVOCATION_STATUS_COMPLETED


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_a_thousand_sleepers_share_ten_slots(
    isolated_nats: EmbeddedNats, tmp_path: Path
) -> None:
    sleep = 3.0
    count = 1000
    async with engine(isolated_nats, tmp_path, "sleepers", ack_wait=5.0, slots=10) as e:
        client = e.client
        # Warm the worker up, so its memory afterwards compares with a running process.
        await asyncio.gather(
            *[(await client.start("waitcrash/nap", 0.0)).result(timeout=30) for _ in range(20)]
        )
        rss_before = _rss_kb(e.worker.pid)
        started = time.monotonic()
        gate = asyncio.Semaphore(50)

        async def one() -> float:
            async with gate:
                handle = await client.start("waitcrash/nap", sleep)
            return float(await handle.result(timeout=120))

        slept = await asyncio.gather(*[one() for _ in range(count)])
        wall = time.monotonic() - started
        rss_after = _rss_kb(e.worker.pid)
    assert all(s >= sleep for s in slept)
    # Holding a slot per sleeper would take count / 10 * sleep = 300 s.
    assert wall < 4 * sleep + 20, f"{count} sleepers took {wall:.1f}s"
    grown = (rss_after - rss_before) / 1024
    assert grown < 40, f"worker memory grew {grown:.1f} MiB over {count} sleepers"
    print(f"{count} sleepers of {sleep}s on 10 slots: {wall:.1f}s wall, worker +{grown:.1f} MiB")
