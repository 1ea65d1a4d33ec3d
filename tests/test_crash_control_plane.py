"""The control-plane process SIGKILLed and restarted under load, with real processes.

Clients keep invoking five-step workflows through gRPC while ``durable server`` is killed at
random moments. An Invoke that answered OK is *accepted*; one that failed with UNAVAILABLE is
retried with the same idempotency key until it answers. Then (docs/guarantees.md): every
accepted invocation completes, exactly once (the worker is never killed here, so the ledger
must show no step body running twice), and retries never create a second invocation.

A second phase kills the control plane while ``Invoke(wait=true)`` calls are blocked waiting
for their results, and re-awaits them through ``AwaitResult`` after the restart.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from durable import Client, RPCError
from durable.v1 import types_pb2
from durable_server.natsd import EmbeddedNats
from tests.crash_handlers import STEPS
from tests.procs import (
    FAST_RECONNECT,
    EngineProc,
    ProcGroup,
    free_port,
    read_ledger,
    wait_healthy,
)

pytestmark = pytest.mark.slow

KEYED = 160  # invocations with an idempotency key, retried until accepted
KEYLESS = 40  # invocations without one: accepted only when the first Invoke answered OK
WAITERS = 16  # Invoke(wait=true) calls cut by a kill, then re-awaited
SUBMITTERS = 4
RANDOM_KILLS = 3
ACK_WAIT = 3.0
RETRY_FOR = 60.0  # seconds an invocation keeps being retried while the server is down


async def wait_for_handler(client: Client, name: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if any(h.name == name for h in await client.handlers()):
                return
        except RPCError as err:
            if err.code != grpc.StatusCode.UNAVAILABLE:
                raise
        await asyncio.sleep(0.1)
    raise AssertionError(f"handler {name} never registered")


class Retrier:
    """Calls that retry on UNAVAILABLE (the control plane is down or restarting)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.unavailable = 0

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + RETRY_FOR
        while True:
            try:
                return await fn(*args, **kwargs)
            except RPCError as err:
                if err.code != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                self.unavailable += 1
                await asyncio.sleep(0.1)


async def restart(server: EngineProc, target: str) -> None:
    server.start()
    await wait_healthy(target, within=30, proc=server)


def journal_values(view: Any) -> list[int]:
    return [int(e.output) for e in view.journal]


async def test_control_plane_sigkilled_under_load(
    isolated_nats: EmbeddedNats, tmp_path: Path, crash_rng: random.Random
) -> None:
    ledger = tmp_path / "ledger.txt"
    group = ProcGroup(
        tmp_path / "logs", isolated_nats.url, "crashc", ack_wait=ACK_WAIT, ledger=ledger
    )
    rng = crash_rng
    started = time.monotonic()
    try:
        port = free_port()
        target = f"127.0.0.1:{port}"
        server = group.server(port).start()
        worker = group.worker(slots=64).start()
        await wait_healthy(target, proc=server)
        await worker.wait_for_log("serving")

        async with Client(target, options=FAST_RECONNECT, unavailable_retry=None) as client:
            await wait_for_handler(client, "crash/chain")
            await wait_for_handler(client, "crash/slow_chain")
            retrier = Retrier(client)
            accepted: dict[str, int] = {}  # invocation id -> seed
            keyed_ids: dict[str, str] = {}  # idempotency key -> invocation id
            keyless_refused = 0

            # -- phase 1: random kills under a steady load --------------------------------
            jobs: list[tuple[str, int]] = [
                (f"k{i}", rng.randrange(1_000_000)) for i in range(KEYED)
            ]
            jobs += [("", rng.randrange(1_000_000)) for _ in range(KEYLESS)]
            rng.shuffle(jobs)
            queue: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
            for job in jobs:
                queue.put_nowait(job)

            async def submitter() -> None:
                nonlocal keyless_refused
                while not queue.empty():
                    key, seed = queue.get_nowait()
                    if key:
                        handle = await retrier.call(
                            client.start, "crash/chain", seed, idempotency_key=key
                        )
                        assert keyed_ids.setdefault(key, handle.id) == handle.id
                        accepted[handle.id] = seed
                    else:
                        try:
                            handle = await client.start("crash/chain", seed)
                        except RPCError as err:
                            assert err.code == grpc.StatusCode.UNAVAILABLE, err
                            keyless_refused += 1
                        else:
                            accepted[handle.id] = seed
                    await asyncio.sleep(rng.uniform(0.05, 0.15))

            async def killer() -> None:
                for _ in range(RANDOM_KILLS):
                    await asyncio.sleep(rng.uniform(0.5, 2.0))
                    server.kill()
                    await asyncio.sleep(rng.uniform(0.0, 0.5))
                    await restart(server, target)

            await asyncio.wait_for(
                asyncio.gather(killer(), *(submitter() for _ in range(SUBMITTERS))), 150
            )
            assert len(keyed_ids) == KEYED
            phase1 = time.monotonic() - started

            # -- phase 2: kill while Invoke(wait=true) calls wait for their results --------
            wait_seeds = {f"w{i}": rng.randrange(1_000_000) for i in range(WAITERS)}

            async def wait_call(key: str) -> Any:
                try:
                    return await client.invoke(
                        "crash/slow_chain",
                        wait_seeds[key],
                        idempotency_key=key,
                        wait=True,
                        wait_timeout=60,
                    )
                except RPCError as err:
                    return err

            waits = [asyncio.ensure_future(wait_call(k)) for k in wait_seeds]
            deadline = time.monotonic() + 20
            while True:  # until every waiter's invocation is accepted and running
                stats = await client.stats()
                slow = stats.by_handler.get("crash/slow_chain")
                if slow and slow.total >= WAITERS:
                    break
                assert time.monotonic() < deadline, f"waiters not accepted: {stats}"
                await asyncio.sleep(0.05)
            server.kill()
            cut = await asyncio.wait_for(asyncio.gather(*waits), 30)
            cut_by_kill = [r for r in cut if isinstance(r, RPCError)]
            for err in cut_by_kill:
                assert err.code == grpc.StatusCode.UNAVAILABLE, err
            await restart(server, target)
            waited: dict[str, Any] = {}
            for key, seed in wait_seeds.items():
                handle = await retrier.call(
                    client.start, "crash/slow_chain", seed, idempotency_key=key
                )
                assert handle.already_existed, f"{key} was accepted before the kill but is new"
                accepted[handle.id] = seed
                waited[handle.id] = await client.result(handle.id, timeout=60)

            # -- everything accepted completes, exactly once ------------------------------
            sem = asyncio.Semaphore(32)

            async def finish(inv: str) -> tuple[Any, Any]:
                async with sem:
                    output = await retrier.call(client.result, inv, timeout=90)
                    return output, await retrier.call(client.get, inv)

            ids = list(accepted)
            results = await asyncio.wait_for(asyncio.gather(*(finish(i) for i in ids)), 120)
            all_done = time.monotonic() - started

            executions = read_ledger(ledger)
            twice = {k: v for k, v in executions.items() if len(v) > 1}
            problems = [
                f"{inv} step {step} ran {len(v)} times: {v}" for (inv, step), v in twice.items()
            ]
            for inv, (output, view) in zip(ids, results, strict=True):
                seed = accepted[inv]
                if view.status != types_pb2.INVOCATION_STATUS_COMPLETED:
                    problems.append(f"{inv}: {view}")
                    continue
                values = journal_values(view)
                if output != {"seed": seed, "value": values[-1] if values else None}:
                    problems.append(f"{inv}: output {output} vs journal {values}")
                prev = seed
                for step in range(STEPS):
                    runs = executions.get((inv, step), [])
                    if len(runs) != 1 or runs[0].prev != prev or runs[0].value != values[step]:
                        problems.append(f"{inv} step {step}: {runs} vs journal {values}")
                        break
                    prev = values[step]
            for inv, output in waited.items():
                if output["seed"] != accepted[inv]:
                    problems.append(f"{inv}: awaited {output}")

            # Retries with the same key never made a second invocation, and whatever was
            # created (also by a keyless Invoke cut by a kill) ran to its end.
            deadline = time.monotonic() + 30
            while True:  # invocations nobody awaits (keyless ones cut by a kill) finish too
                stats = await retrier.call(client.stats)
                by_status = stats.by_status
                done = by_status.get(types_pb2.INVOCATION_STATUS_COMPLETED, 0)
                if done == stats.total or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            summary = (
                f"\n[crash-control-plane] accepted={len(accepted)} (keyed {KEYED}, keyless "
                f"{KEYLESS - keyless_refused} of {KEYLESS}, wait=true {WAITERS}), kills="
                f"{len(server.killed_pids)}, UNAVAILABLE retries={retrier.unavailable}, "
                f"wait=true calls cut by the kill={len(cut_by_kill)}, stored={stats.total}, "
                f"duplicate executions={sum(len(v) - 1 for v in twice.values())}, "
                f"re-enqueued by the reconciler={server.all_logs().count('re-enqueueing')}, "
                f"phase 1 {phase1:.1f}s, all completed at {all_done:.1f}s"
            )
            print(summary)
            assert not problems, f"{len(problems)} violations{summary}\n" + "\n".join(problems[:20])
            assert len(server.killed_pids) == RANDOM_KILLS + 1
            assert cut_by_kill, "no Invoke(wait=true) call was waiting when the server died"
            assert len(accepted) <= stats.total <= KEYED + KEYLESS + WAITERS
            assert by_status[types_pb2.INVOCATION_STATUS_COMPLETED] == stats.total, stats
            stray = {inv for inv, _ in executions} - set(accepted)
            assert len(stray) <= keyless_refused, stray
    finally:
        group.close()
