"""Waits under crashes, with real processes: a durable timer and an awakeable survive SIGKILL
of the worker, the control plane and nats-server; a delayed send is made once across a crash
right after it; a call chain A -> B -> C with a crash in B runs each step once; a thousand
sleepers share ten worker slots without holding them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from durable import Client
from durable.v1 import types_pb2
from durable_server.natsd import EmbeddedNats
from tests.procs import FAST_RECONNECT, EngineProc, ProcGroup, free_port, read_ledger, wait_healthy

pytestmark = pytest.mark.slow
S = types_pb2


async def _wait_handler(client: Client, name: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if any(h.name == name for h in await client.handlers()):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"handler {name} never registered")


async def _wait_status(
    client: Client, invocation_id: str, status: int, within: float = 20.0
) -> types_pb2.Invocation:
    deadline = time.monotonic() + within
    while True:
        view = (await client.get(invocation_id)).invocation
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


async def test_sleep_and_awakeable_survive_every_process_killed(
    isolated_nats: EmbeddedNats, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    group = ProcGroup(tmp_path / "logs", isolated_nats.url, "waitkill", ack_wait=2.0, ledger=ledger)
    port = free_port()
    target = f"127.0.0.1:{port}"
    try:
        server = group.server(port).start()
        worker = group.worker(slots=8).start()
        await wait_healthy(target, proc=server)
        async with Client(target, options=FAST_RECONNECT) as client:
            await _wait_handler(client, "waitcrash/nap")
            sleeper = await client.start("waitcrash/nap", 6.0)
            approval = await client.start("waitcrash/approve", 120)
            await _wait_status(client, sleeper.id, S.INVOCATION_STATUS_SUSPENDED)
            view = await _wait_status(client, approval.id, S.INVOCATION_STATUS_SUSPENDED)
            awakeable = view.waiting_for[0].awakeable_id

            worker.kill()
            server.kill()
            isolated_nats.kill()
            await asyncio.sleep(0.5)
            isolated_nats.start()
            server.start()
            worker.start()
            await wait_healthy(target, proc=server)

            await client.resolve_awakeable(awakeable, "approved")
            assert await approval.result(timeout=30) == f"120: approved ({awakeable})"
            slept = await sleeper.result(timeout=30)
            assert 6.0 <= slept < 15.0
        for inv in (sleeper.id, approval.id):
            assert _runs(ledger, inv) == {0: 1, 1: 1}, read_ledger(ledger)
    finally:
        group.close()


async def test_delayed_send_is_made_once_across_a_crash_right_after_it(
    isolated_nats: EmbeddedNats, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    group = ProcGroup(tmp_path / "logs", isolated_nats.url, "sendkill", ack_wait=1.0, ledger=ledger)
    port = free_port()
    target = f"127.0.0.1:{port}"
    done = asyncio.Event()
    try:
        server = group.server(port).start()
        worker = group.worker(slots=8).start()
        await wait_healthy(target, proc=server)
        keeper = asyncio.create_task(_keep_alive(worker, done))
        async with Client(target, options=FAST_RECONNECT) as client:
            await _wait_handler(client, "waitcrash/delayed_sender")
            child = await client.execute("waitcrash/delayed_sender", 2.0, timeout=60)
            assert worker.runs >= 2, "the worker never died"
            assert await client.result(child, timeout=30) == 42
            children = await client.list(handler="waitcrash/target")
            assert [s.invocation_id for s in children.invocations] == [child]
            assert _runs(ledger, child) == {0: 1}
        done.set()
        await keeper
    finally:
        done.set()
        group.close()


async def test_call_chain_with_a_crash_in_the_middle(
    isolated_nats: EmbeddedNats, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    group = ProcGroup(
        tmp_path / "logs", isolated_nats.url, "chainkill", ack_wait=1.0, ledger=ledger
    )
    port = free_port()
    target = f"127.0.0.1:{port}"
    done = asyncio.Event()
    try:
        server = group.server(port).start()
        worker = group.worker(slots=8).start()
        await wait_healthy(target, proc=server)
        keeper = asyncio.create_task(_keep_alive(worker, done))
        async with Client(target, options=FAST_RECONNECT) as client:
            await _wait_handler(client, "waitcrash/chain_a")
            a = await client.start("waitcrash/chain_a", 4)
            assert await a.result(timeout=60) == 5 * 10 + 1
            assert worker.runs >= 2, "B's worker never died"
            ids = {s.handler: s.invocation_id for s in (await client.list()).invocations}
            for handler in ("waitcrash/chain_a", "waitcrash/chain_b"):
                assert _runs(ledger, ids[handler]) == {0: 1, 1: 1}, read_ledger(ledger)
            assert _runs(ledger, ids["waitcrash/chain_c"]) == {0: 1}
            b = (await client.get(ids["waitcrash/chain_b"])).invocation
            assert b.caller_id == a.id and b.status == S.INVOCATION_STATUS_COMPLETED
        done.set()
        await keeper
    finally:
        done.set()
        group.close()


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
    ledger = tmp_path / "ledger.txt"
    group = ProcGroup(tmp_path / "logs", isolated_nats.url, "sleepers", ack_wait=5.0, ledger=ledger)
    port = free_port()
    target = f"127.0.0.1:{port}"
    try:
        server = group.server(port).start()
        worker = group.worker(slots=10).start()
        await wait_healthy(target, proc=server)
        async with Client(target, options=FAST_RECONNECT) as client:
            await _wait_handler(client, "waitcrash/nap")
            # Warm the worker up, so its memory afterwards compares with a running process.
            await asyncio.gather(
                *[(await client.start("waitcrash/nap", 0.0)).result(timeout=30) for _ in range(20)]
            )
            rss_before = _rss_kb(worker.pid)
            started = time.monotonic()
            gate = asyncio.Semaphore(50)

            async def one() -> float:
                async with gate:
                    handle = await client.start("waitcrash/nap", sleep)
                return float(await handle.result(timeout=120))

            slept = await asyncio.gather(*[one() for _ in range(count)])
            wall = time.monotonic() - started
            rss_after = _rss_kb(worker.pid)
        assert all(s >= sleep for s in slept)
        # Holding a slot per sleeper would take count / 10 * sleep = 300 s.
        assert wall < 4 * sleep + 20, f"{count} sleepers took {wall:.1f}s"
        grown = (rss_after - rss_before) / 1024
        assert grown < 40, f"worker memory grew {grown:.1f} MiB over {count} sleepers"
        print(
            f"{count} sleepers of {sleep}s on 10 slots: {wall:.1f}s wall, worker +{grown:.1f} MiB"
        )
    finally:
        group.close()
