"""Virtual objects with real processes: exclusivity of one key across two worker processes,
and state that is never half-applied when the worker dies in the middle of a handler."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest

from durable_server.natsd import EmbeddedNats
from tests.procs import Execution, read_ledger
from tests.test_crash_waits import engine

pytestmark = pytest.mark.slow


def _runs_of(ledger: dict[tuple[str, int], list[Execution]], ids: set[str]) -> list[Execution]:
    return [x for (inv, _), runs in ledger.items() if inv in ids for x in runs]


async def test_fifty_increments_over_two_workers(
    isolated_nats: EmbeddedNats, tmp_path: Path
) -> None:
    async with engine(isolated_nats, tmp_path, "objtwo", ack_wait=5.0, slots=16) as e:
        second = e.group.worker("worker2", slots=16).start()
        await second.wait_for_log("serving")
        hot = await asyncio.gather(
            *[e.client.start("objcrash/increment", 1, key="hot") for _ in range(50)]
        )
        await hot[0].result(timeout=60)  # the hot key's queue is being worked through
        cold = await asyncio.gather(
            *[e.client.start("objcrash/increment", 1, key=f"cold{i}") for i in range(10)]
        )
        results = [await h.result(timeout=60) for h in [*hot, *cold]]
        assert sorted(results[:50]) == list(range(1, 51))
        assert results[50:] == [1] * 10
        assert await e.client.get_state("objcrash", "hot") == {"total": 50}
        ledger = read_ledger(e.ledger)
        spans = sorted((x.prev, x.value, x.pid) for x in _runs_of(ledger, {h.id for h in hot}))
        assert len(spans) == 50
        overlaps = [(a, b) for a, b in itertools.pairwise(spans) if b[0] < a[1]]
        assert not overlaps, f"exclusive handlers of one key overlapped: {overlaps[:3]}"
        assert len({pid for _, _, pid in spans}) == 2, "both workers should have taken some"
        # Other keys do not queue behind the hot one: queued while it was busy, each ran
        # before the hot key's queue drained.
        cold_spans = [(x.prev, x.value) for x in _runs_of(ledger, {h.id for h in cold})]
        assert len(cold_spans) == 10
        busy_from, busy_until = spans[0][0], spans[-1][1]
        late = [c for c in cold_spans if not (busy_from < c[0] and c[1] < busy_until)]
        assert not late, f"other keys waited for the hot key: {late[:3]} vs {busy_from, busy_until}"


async def test_state_is_never_half_applied_when_the_worker_dies(
    isolated_nats: EmbeddedNats, tmp_path: Path
) -> None:
    async with engine(isolated_nats, tmp_path, "objkill", ack_wait=1.0, slots=8) as e:
        await e.client.execute("objcrash/set_three", 1, key="k", timeout=20)
        seen: list[dict[str, object]] = []
        stop = asyncio.Event()

        async def watch_state() -> None:
            while not stop.is_set():
                seen.append(await e.client.get_state("objcrash", "k"))
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch_state())
        handle = await e.client.start("objcrash/set_three", 2, key="k")
        queued = await e.client.start("objcrash/increment", 5, key="k")
        # Inside the slow step: a and b journaled, the step started (the worker says so).
        deadline = time.monotonic() + 20
        while True:
            view = await e.client.get(handle.id)
            if len(view.journal) >= 2 and view.current_step and view.current_step.name == "slow":
                break
            assert time.monotonic() < deadline, view
            await asyncio.sleep(0.02)
        e.worker.kill()
        await asyncio.sleep(0.3)
        e.worker.start()
        assert await handle.result(timeout=30) == 2
        assert await queued.result(timeout=30) == 5  # the key was not left stuck
        stop.set()
        await watcher
        before = {"a": 1, "b": 1, "c": 1}
        after = {"a": 2, "b": 2, "c": 2}
        assert all(s in (before, after, {**after, "total": 5}) for s in seen), [
            s for s in seen if s not in (before, after, {**after, "total": 5})
        ][:3]
        assert before in seen and after in seen
        assert len(e.worker.killed_pids) == 1
