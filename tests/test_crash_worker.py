"""Crash recovery with real processes: the worker process is SIGKILLed at random moments
while a load of five-step workflows runs through the gRPC control plane.

Proves (docs/guarantees.md): no accepted invocation is lost, a journaled step never runs
again, and every later step and the output use the journaled result. From the ledger the
step bodies write, a step may run more than once only when a worker was killed while it was
in flight: every execution but the last one comes from a killed worker process.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import pytest

from durable import Client
from durable._codec import from_payload
from durable.v1 import types_pb2
from durable_server.natsd import EmbeddedNats
from tests.crash_handlers import STEPS
from tests.procs import FAST_RECONNECT, Execution, ProcGroup, free_port, read_ledger, wait_healthy

pytestmark = pytest.mark.slow

INVOCATIONS = 250
MAX_INVOCATIONS = 600
KILLS = 6
SLOTS = 32
ACK_WAIT = 2.0
SUBMIT_INTERVAL = 0.05  # seconds between invocations: the load spans all the kills


async def wait_for_handler(client: Client, name: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if any(h.name == name for h in await client.handlers()):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"handler {name} never registered")


def journal_values(view: Any) -> list[int]:
    """The journaled result of each step, in journal order."""
    values = []
    for i, entry in enumerate(view.journal):
        assert entry.index == i, f"journal index {entry.index} at position {i}"
        assert entry.name == f"step{i}", f"entry {i} is {entry.name!r}"
        assert entry.raw.result.WhichOneof("outcome") == "value", f"entry {i}: {entry.result}"
        values.append(int(from_payload(entry.raw.result.value)))
    return values


def check_chain(
    inv: str,
    seed: int,
    output: dict[str, int],
    journal: list[int],
    executions: dict[tuple[str, int], list[Execution]],
    killed: set[int],
) -> tuple[int, list[str]]:
    """Check one invocation against its journal and ledger.

    Returns its duplicate executions and the violations found (empty when all is well).
    """
    problems: list[str] = []
    if len(journal) != STEPS:
        return 0, [f"{inv}: journal has {len(journal)} entries, not {STEPS}"]
    if output != {"seed": seed, "value": journal[-1]}:
        problems.append(f"{inv}: output {output} is not the journal's last value {journal}")
    duplicates = 0
    prev = seed
    for step in range(STEPS):
        runs = executions.get((inv, step), [])
        if not runs:
            problems.append(f"{inv}: step {step} has a journal entry but never ran")
            continue
        duplicates += len(runs) - 1
        # Every execution of a step was handed the journaled result of the step before.
        if any(r.prev != prev for r in runs):
            problems.append(f"{inv} step {step}: not given the journaled {prev}: {runs}")
        # The journaled result is the last execution's; earlier ones died unjournaled.
        if runs[-1].value != journal[step]:
            problems.append(
                f"{inv} step {step}: ran again after its result {journal[step]} was "
                f"journaled: {runs}"
            )
        if any(early.pid not in killed for early in runs[:-1]):
            problems.append(f"{inv} step {step}: ran again, no earlier runner was killed: {runs}")
        attempts = [r.attempt for r in runs]
        if attempts != sorted(set(attempts)):
            problems.append(f"{inv} step {step}: attempts not increasing {attempts}: {runs}")
        prev = journal[step]
    return duplicates, problems


async def test_worker_sigkilled_under_load(
    isolated_nats: EmbeddedNats, tmp_path: Path, crash_rng: random.Random
) -> None:
    ledger = tmp_path / "ledger.txt"
    group = ProcGroup(
        tmp_path / "logs", isolated_nats.url, "crashw", ack_wait=ACK_WAIT, ledger=ledger
    )
    rng = crash_rng
    started = time.monotonic()
    try:
        port = free_port()
        target = f"127.0.0.1:{port}"
        server = group.server(port).start()
        worker = group.worker(slots=SLOTS).start()
        await wait_healthy(target, proc=server)
        await worker.wait_for_log("serving")

        async with Client(target, options=FAST_RECONNECT, unavailable_retry=None) as client:
            await wait_for_handler(client, "crash/chain")
            seeds: dict[str, int] = {}
            kill_times: list[float] = []

            killing = True

            async def submit() -> None:
                # At least INVOCATIONS, and on until the last kill, so that every kill
                # lands on a loaded worker even when the machine is slow.
                t0 = time.monotonic()
                for i in range(MAX_INVOCATIONS):
                    if i >= INVOCATIONS and not killing:
                        break
                    seed = rng.randrange(1_000_000)
                    handle = await client.start("crash/chain", seed)
                    seeds[handle.id] = seed
                    await asyncio.sleep(max(0.0, t0 + (i + 1) * SUBMIT_INTERVAL - time.monotonic()))

            async def killer() -> None:
                nonlocal killing
                for _ in range(KILLS):
                    await worker.wait_for_log("serving")
                    # Wait until this worker process runs steps, then kill it at random.
                    mark = f" {worker.pid} "
                    for _poll in range(200):
                        if ledger.exists() and mark in ledger.read_text():
                            break
                        await asyncio.sleep(0.05)
                    await asyncio.sleep(rng.uniform(0.1, 1.2))
                    worker.kill()
                    kill_times.append(time.monotonic() - started)
                    await asyncio.sleep(rng.uniform(0.0, 0.3))
                    worker.start()
                killing = False

            await asyncio.wait_for(asyncio.gather(submit(), killer()), 150)
            assert len(seeds) >= INVOCATIONS
            load_done = time.monotonic() - started

            sem = asyncio.Semaphore(32)

            async def finish(inv: str) -> tuple[dict[str, int], Any]:
                async with sem:
                    output = await client.result(inv, timeout=60)
                    return output, await client.get(inv)

            ids = list(seeds)
            results = await asyncio.wait_for(asyncio.gather(*(finish(i) for i in ids)), 90)
            all_done = time.monotonic() - started

            executions = read_ledger(ledger)
            killed = set(worker.killed_pids)
            assert len(killed) == KILLS
            duplicates = 0
            attempts_total = 0
            problems: list[str] = []
            for inv, (output, view) in zip(ids, results, strict=True):
                assert view.status == types_pb2.INVOCATION_STATUS_COMPLETED, view
                attempts_total += view.attempt
                dups, found = check_chain(
                    inv, seeds[inv], output, journal_values(view), executions, killed
                )
                duplicates += dups
                problems += found
            stray = {inv for inv, _ in executions} - set(seeds)
            assert not stray, f"ledger holds steps of unknown invocations: {sorted(stray)[:5]}"
            stats = await client.stats()
            by_status = stats.by_status
            assert stats.total == len(seeds)
            assert by_status[types_pb2.INVOCATION_STATUS_COMPLETED] == len(seeds)

            by_killed = sum(1 for runs in executions.values() for r in runs if r.pid in killed)
            working_kills = len({r.pid for runs in executions.values() for r in runs} & killed)
            summary = (
                f"\n[crash-worker] invocations={len(seeds)} kills={KILLS} at "
                f"{[round(t, 1) for t in kill_times]}s, killed workers that ran steps="
                f"{working_kills}, step executions={sum(len(r) for r in executions.values())} "
                f"(by killed pids {by_killed}), duplicate executions={duplicates} "
                f"(bound {KILLS * SLOTS}), attempts={attempts_total}, load {load_done:.1f}s, "
                f"all completed at {all_done:.1f}s"
            )
            print(summary)
            assert not problems, f"{len(problems)} violations{summary}\n" + "\n".join(problems[:20])
            # A kill interrupts at most one step per slot, so the bound is meaningful.
            assert duplicates <= KILLS * SLOTS
            # The kills landed on workers that were doing work (not only on idle ones).
            assert working_kills == KILLS, f"only {working_kills} killed workers ran steps"
    finally:
        group.close()
