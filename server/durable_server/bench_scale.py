"""``make bench-scale``: how the engine's costs grow with stored invocations, journal length
and worker processes, each against the raw JetStream floor of the same run.

For each size (default 100,000 and 1,000,000) it starts a fresh embedded nats-server,
writes that many invocation records straight into the records bucket (pipelined KV puts,
not a million workflows: the control plane cannot tell them apart), then starts
``durable server`` and measures its start-up (spawn to SERVING, which waits for the index
to hold every record) and its resident memory, and the p50 of ListWorkflows (a first page;
a page filtered by handler; one filtered by a rare status) and of Stats. Then, on an empty
store: the wake-up latency of an invocation with a 1,000-step journal against one with 3
steps (an awakeable resolved, to the result: a wake-up reads the whole journal), and the
throughput of ``bench/three_steps`` with 1, 2 and 4 worker processes. Progress goes to
stderr; the last line of stdout is one JSON object (also ``--out FILE``)::

    python -m durable_server.bench_scale --sync always [--sizes 100000 1000000] [--out F]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import nats
import uvloop

from durable import Client, InvocationStatus
from durable.contract import EngineConfig, awakeable_id
from durable.internal.v1 import storage_pb2
from durable.v1 import types_pb2
from durable_server.bench import measure_floor, measure_throughput, publish_pipelined
from durable_server.bench_handlers import LONG_HANDLER
from durable_server.bench_procs import (
    Proc,
    log_progress,
    repo_root,
    start_server,
    wait_registered,
)
from durable_server.natsd import EmbeddedNats
from durable_server.provision import provision

__all__ = ["main"]

HANDLERS_MODULE = "durable_server.bench_handlers"
_HANDLERS = [f"scale/h{i}" for i in range(10)]
_QUERIES = 50


def _rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _write_records(url: str, cfg: EngineConfig, n: int) -> float:
    """``n`` ended invocations of ten handlers (one in a hundred FAILED), 100-byte inputs
    and outputs, written with pipelined KV puts; records per second."""
    payload = storage_pb2.StoredPayload(
        data=b'"' + b"x" * 98 + b'"', content_type="application/json"
    )
    base = time.time_ns() - n * 1_000_000

    def records() -> Iterator[tuple[str, bytes]]:
        for i in range(n):
            r = storage_pb2.InvocationRecord(
                id=f"inv_{i:026d}",
                handler=_HANDLERS[i % len(_HANDLERS)],
                input=payload,
                output=payload,
                status=(
                    types_pb2.INVOCATION_STATUS_FAILED
                    if i % 100 == 7
                    else types_pb2.INVOCATION_STATUS_COMPLETED
                ),
                attempt=1,
                generation=1,
            )
            r.created_at.FromNanoseconds(base + i * 1_000_000)
            r.updated_at.FromNanoseconds(base + i * 1_000_000 + 500_000)
            r.started_at.CopyFrom(r.created_at)
            r.ended_at.CopyFrom(r.updated_at)
            if i and i % 100_000 == 0:
                log_progress(f"  {i:,} records written")
            yield f"$KV.{cfg.invocations_bucket}.{r.id}", r.SerializeToString()

    nc = await nats.connect(url, name="durable-bench-scale")
    try:
        elapsed = await publish_pipelined(nc, records(), n, 2000, limit_s=600.0)
    finally:
        await nc.close()
    return n / elapsed


async def _p50_ms(call: Any, times: int = _QUERIES) -> float:
    samples = []
    for _ in range(times):
        t0 = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - t0)
    return round(statistics.median(samples) * 1000, 3)


async def measure_size(n: int, sync: str, workdir: Path) -> dict[str, Any]:
    """Start-up, memory, List and Stats of a control plane over ``n`` stored invocations."""
    root = repo_root()
    natsd = EmbeddedNats(workdir / f"store-{n}", sync_interval=sync, server_name=f"scale{n}")
    await natsd.astart()
    try:
        floor = await measure_floor(
            natsd.url, publishes=300, pipelined=10000, pipelined_in_flight=256
        )
        cfg = EngineConfig(nats_url=natsd.url, prefix="scale")
        nc = await nats.connect(natsd.url)
        try:
            await provision(nc, cfg)
        finally:
            await nc.close()
        log_progress(f"{n:,} invocations: writing records (sync_interval={sync})")
        write_rate = await _write_records(natsd.url, cfg, n)
        procs: list[Proc] = []
        try:
            log_progress(f"{n:,} invocations: starting `durable server`")
            t0 = time.perf_counter()
            target = await start_server(
                ["--nats", natsd.url, "--prefix", "scale"], workdir, root, procs
            )
            startup = time.perf_counter() - t0
            rss = _rss_mib(procs[-1].popen.pid)
            async with Client(target) as client:
                stats = await client.stats()
                assert sum(stats.by_status.values()) == n, stats.by_status
                log_progress(f"{n:,} invocations: List and Stats ({_QUERIES} each)")
                result = {
                    "invocations": n,
                    "record_writes_per_s": round(write_rate),
                    "startup_s": round(startup, 2),
                    "rss_mib": round(rss, 1),
                    "list_first_page_p50_ms": await _p50_ms(lambda: client.list(page_size=50)),
                    "list_by_handler_p50_ms": await _p50_ms(
                        lambda: client.list(handler=_HANDLERS[3], page_size=50)
                    ),
                    "list_failed_p50_ms": await _p50_ms(
                        lambda: client.list(statuses=["failed"], page_size=50)
                    ),
                    "stats_p50_ms": await _p50_ms(client.stats),
                    "floor": floor,
                }
        finally:
            for proc in reversed(procs):
                proc.stop()
    finally:
        await natsd.astop()
    log_progress(f"{n:,} invocations: {result}")
    return result


async def measure_wake_and_workers(sync: str, workdir: Path, workers: list[int]) -> dict[str, Any]:
    """Wake-up latency by journal length, and throughput by worker processes."""
    root = repo_root()
    natsd = EmbeddedNats(workdir / "store-w", sync_interval=sync, server_name="scale-w")
    await natsd.astart()
    out: dict[str, Any] = {}
    try:
        out["floor"] = await measure_floor(
            natsd.url, publishes=300, pipelined=10000, pipelined_in_flight=256
        )
        engine = ["--nats", natsd.url, "--prefix", "w"]
        procs: list[Proc] = []
        try:
            target = await start_server(engine, workdir, root, procs)
            for k in range(max(workers)):
                procs.append(
                    Proc(
                        f"worker{k}",
                        ["worker", "--module", HANDLERS_MODULE, *engine],
                        workdir / f"worker{k}.log",
                        root,
                    )
                )
                if k + 1 == 1:
                    async with Client(target) as client:
                        await wait_registered(client, procs)
                        out["wake_up_ms"] = {
                            str(steps): await _wake_up_ms(client, steps) for steps in (3, 1000)
                        }
                if k + 1 in workers:
                    async with Client(target) as client:
                        await _until_workers(client, k + 1)
                        log_progress(f"throughput with {k + 1} worker process(es)")
                        await measure_throughput(client, 200, 50)
                        elapsed, _ = await measure_throughput(client, 2000, 50)
                        out.setdefault("workflows_per_s_by_workers", {})[str(k + 1)] = round(
                            2000 / elapsed
                        )
        finally:
            for proc in reversed(procs):
                proc.stop()
    finally:
        await natsd.astop()
    return out


async def _until_workers(client: Client, n: int) -> None:
    for _ in range(300):
        hs = [h for h in await client.handlers() if h.name == "bench/three_steps"]
        if hs and hs[0].live_workers >= n:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{n} workers never registered")


async def _wake_up_ms(client: Client, steps: int, times: int = 10) -> float:
    """p50 from resolving the awakeable an invocation with ``steps`` journaled steps waits
    for, to its result: the wake-up reads and replays the whole journal."""
    samples = []
    for i in range(times + 1):
        handle = await client.invoke(LONG_HANDLER, steps, wait=False)
        for _ in range(600):
            view = await client.get(handle.id)
            if view.status == InvocationStatus.SUSPENDED:
                break
            await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        await client.resolve_awakeable(awakeable_id(handle.id, steps), i)
        await handle.result(timeout=60)
        if i:  # the first one warms up
            samples.append(time.perf_counter() - t0)
    log_progress(
        f"wake-up with a {steps}-step journal: p50 {statistics.median(samples) * 1000:.1f} ms"
    )
    return round(statistics.median(samples) * 1000, 2)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="durable-bench-scale-"))
    try:
        sizes = [await measure_size(n, args.sync, workdir) for n in args.sizes]
        rest = await measure_wake_and_workers(args.sync, workdir, args.workers)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"sync": args.sync, "sizes": sizes, **rest}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m durable_server.bench_scale", description=__doc__)
    p.add_argument("--sync", default="always", help="nats-server sync_interval")
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    report = uvloop.run(run(args))
    text = json.dumps(report)
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
