"""``make bench``: workflow latency and throughput against the raw JetStream floor.

(Over ~400 lines: the measurement and its report are one procedure; the processes it starts
are ``bench_procs``, the handlers it runs ``bench_handlers``.)

Each run starts a fresh embedded nats-server (temporary store, the given ``sync_interval``),
measures the floor with nats-py on a scratch stream (sequential publish-with-ack latency,
pipelined publish throughput), then runs the engine as in production, as separate OS
processes (``durable server`` and ``durable worker`` hosting
:mod:`durable_server.bench_handlers`), and drives the 3-step ``bench/three_steps`` workflow
through :class:`durable.Client`: sequential latency, then throughput with a bounded number
in flight. The reported figures are medians across runs.

Progress and a summary table go to stderr; the last line of stdout is one JSON object
(also written to ``--out FILE``)::

    python -m durable_server.bench --sync always [--runs 3] [--sequential 200]
        [--throughput 1000] [--in-flight 50] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

from durable import Client
from durable_server.bench_handlers import HANDLER, STEPS
from durable_server.bench_procs import (
    BenchError,
    Proc,
    free_port,
    log_progress,
    repo_root,
    start_server,
    wait_registered,
)
from durable_server.natsd import EmbeddedNats, find_nats_server

__all__ = ["main"]

HANDLERS_MODULE = "durable_server.bench_handlers"
_FLOOR_STREAM = "BENCHFLOOR"
_FLOOR_SUBJECT = "benchfloor.msgs"
_FLOOR_PAYLOAD = b"x" * 64
_CALL_TIMEOUT = 60.0  # seconds for one workflow to finish


# ------------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks."""
    if not values:
        return math.nan
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def _latency_ms(samples_s: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000.0 for s in samples_s]
    return {
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "mean_ms": statistics.fmean(ms) if ms else math.nan,
    }


def _round(value: float, digits: int) -> float:
    return round(value, digits) if math.isfinite(value) else value


# ---------------------------------------------------------------------------------- floor


async def measure_floor(
    nats_url: str, *, publishes: int, pipelined: int, pipelined_in_flight: int
) -> dict[str, Any]:
    """Raw JetStream on this server with nats-py: publish-with-ack latency and pipelined rate."""
    import nats

    nc = await nats.connect(nats_url, name="durable-bench-floor", max_reconnect_attempts=5)
    try:
        js = nc.jetstream(timeout=10.0)
        await js.add_stream(name=_FLOOR_STREAM, subjects=[_FLOOR_SUBJECT])
        for _ in range(min(20, publishes)):  # warm up the connection and the stream
            await js.publish(_FLOOR_SUBJECT, _FLOOR_PAYLOAD)

        samples: list[float] = []
        for _ in range(publishes):
            t0 = time.perf_counter()
            await js.publish(_FLOOR_SUBJECT, _FLOOR_PAYLOAD)
            samples.append(time.perf_counter() - t0)

        elapsed = await _pipelined(nc, pipelined, pipelined_in_flight)
        with contextlib.suppress(Exception):
            await js.delete_stream(_FLOOR_STREAM)
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
    lat = _latency_ms(samples)
    return {
        "publish_p50_ms": lat["p50_ms"],
        "publish_p99_ms": lat["p99_ms"],
        "publish_mean_ms": lat["mean_ms"],
        "pipelined_msgs_per_s": pipelined / elapsed if elapsed > 0 else math.nan,
        "publish_n": publishes,
        "pipelined_n": pipelined,
        "pipelined_in_flight": pipelined_in_flight,
    }


async def _pipelined(nc: Any, n: int, window: int) -> float:
    """Publish ``n`` floor messages keeping ``window`` unacknowledged; seconds until the
    last ack."""
    return await publish_pipelined(
        nc, ((_FLOOR_SUBJECT, _FLOOR_PAYLOAD) for _ in range(n)), n, window, limit_s=120.0
    )


async def publish_pipelined(
    nc: Any, messages: Iterable[tuple[str, bytes]], n: int, window: int, *, limit_s: float
) -> float:
    """Publish the ``n`` (subject, data) ``messages`` to JetStream keeping ``window``
    unacknowledged; seconds until the last ack.

    Core publishes with a reply subject, the acks counted on one inbox subscription: what
    ``js.publish_async`` does, without its per-message future bookkeeping (which halves the
    rate), so this is the ceiling a Python client can reach. Every ack is checked for an
    error; the wait is bounded by ``limit_s`` (a rejected message would otherwise never be
    acknowledged).
    """
    inbox = nc.new_inbox()
    slots = asyncio.Semaphore(window)
    done = asyncio.Event()
    acked = 0
    errors: list[bytes] = []

    async def on_ack(msg: Any) -> None:
        nonlocal acked
        data: bytes = msg.data
        if not data or b'"error"' in data:
            errors.append(data)
        acked += 1
        slots.release()
        if acked >= n:
            done.set()

    sub = await nc.subscribe(inbox, cb=on_ack)
    try:
        t0 = time.perf_counter()
        async with asyncio.timeout(limit_s):
            for subject, data in messages:
                await slots.acquire()
                await nc.publish(subject, data, reply=inbox)
            await done.wait()
        elapsed = time.perf_counter() - t0
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    if errors:
        raise BenchError(f"{len(errors)} pipelined publishes failed, e.g. {errors[0]!r}")
    return elapsed


# ------------------------------------------------------------------------------ workload


async def _one(client: Client, x: int) -> float:
    t0 = time.perf_counter()
    result = await client.execute(HANDLER, x, timeout=_CALL_TIMEOUT)
    elapsed = time.perf_counter() - t0
    if result != x + STEPS:
        raise BenchError(f"{HANDLER}({x}) returned {result!r}, expected {x + STEPS}")
    return elapsed


async def measure_sequential(client: Client, n: int) -> list[float]:
    return [await _one(client, i) for i in range(n)]


async def measure_throughput(client: Client, n: int, in_flight: int) -> tuple[float, list[float]]:
    """Run ``n`` workflows with at most ``in_flight`` at once; (elapsed s, latencies s)."""
    gate = asyncio.Semaphore(in_flight)

    async def bounded(x: int) -> float:
        async with gate:
            return await _one(client, x)

    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(bounded(i)) for i in range(n)]
    elapsed = time.perf_counter() - t0
    return elapsed, [t.result() for t in tasks]


# ----------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Settings:
    sync: str
    runs: int
    sequential: int
    throughput: int
    in_flight: int
    warmup: int
    floor_publishes: int
    floor_pipelined: int
    floor_in_flight: int
    topology: str = "split"
    variants: tuple[str, ...] = ()


@contextlib.contextmanager
def _stopping(procs: list[Proc]) -> Iterator[list[Proc]]:
    """Stop the processes in reverse start order (worker, then server), whatever happens."""
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(Exception):
                proc.stop()


async def one_run(k: int, s: Settings) -> dict[str, Any]:
    tag = f"run {k}/{s.runs}"
    workdir = Path(tempfile.mkdtemp(prefix=f"durable-bench{k}-"))
    started = time.perf_counter()
    try:
        natsd = EmbeddedNats(
            workdir / "store", sync_interval=s.sync, server_name=f"durable-bench{k}"
        )
        log_progress(f"{tag}: starting nats-server (sync_interval={s.sync})")
        await natsd.astart()
        try:
            log_progress(
                f"{tag}: JetStream floor ({s.floor_publishes} sequential publishes, "
                f"{s.floor_pipelined} pipelined with {s.floor_in_flight} in flight)"
            )
            floor = await measure_floor(
                natsd.url,
                publishes=s.floor_publishes,
                pipelined=s.floor_pipelined,
                pipelined_in_flight=s.floor_in_flight,
            )
            workflow = await _measure(tag, s, natsd.url, f"bench{k}", workdir, "default")
            variants = {
                v: await _measure(tag, s, natsd.url, f"bench{k}{v}", workdir, v) for v in s.variants
            }
        finally:
            await natsd.astop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = {"run": k, "workflow": workflow, "floor": floor, "variants": variants}
    result["wall_s"] = time.perf_counter() - started
    log_progress(
        f"{tag}: done in {result['wall_s']:.1f}s: p50 {workflow['p50_ms']:.2f} ms, "
        f"{workflow['workflows_per_s']:.0f} workflows/s (floor: publish p50 "
        f"{floor['publish_p50_ms']:.3f} ms, {floor['pipelined_msgs_per_s']:.0f} msgs/s "
        "pipelined)"
    )
    return result


#: What each variant changes: ``metrics`` serves --metrics-listen from every process and is
#: scraped every 2 s (a busy Prometheus); ``tracing`` runs the processes with the
#: OpenTelemetry SDK exporting every span to an in-memory sink (durable_server.bench_tracing).
VARIANTS = ("metrics", "tracing")


async def _measure(
    tag: str, s: Settings, nats_url: str, prefix: str, workdir: Path, variant: str
) -> dict[str, float]:
    """Start the engine's processes in one configuration, measure, stop them."""
    root = repo_root()
    engine = ["--nats", nats_url, "--prefix", prefix]
    module = "durable_server.bench_tracing" if variant == "tracing" else "durable_server.cli"
    scraped: list[str] = []

    def metrics_flag() -> list[str]:
        if variant != "metrics":
            return []
        scraped.append(f"127.0.0.1:{free_port()}")
        return ["--metrics-listen", scraped[-1]]

    label = "" if variant == "default" else f" [{variant}]"
    procs: list[Proc] = []
    with _stopping(procs):
        if s.topology == "split":
            log_progress(f"{tag}{label}: starting `durable worker` and `durable server`")
            procs.append(
                Proc(
                    "worker",
                    ["worker", "--module", HANDLERS_MODULE, *engine, *metrics_flag()],
                    workdir / f"worker-{variant}.log",
                    root,
                    module=module,
                )
            )
            server_args = [*engine, *metrics_flag()]
        else:
            log_progress(f"{tag}{label}: starting `durable server --module` (control + worker)")
            server_args = [*engine, "--module", HANDLERS_MODULE, *metrics_flag()]
        target = await start_server(server_args, workdir, root, procs, module=module)
        scraper = asyncio.create_task(_scrape_every(scraped, 2.0))
        try:
            async with Client(target) as client:
                await wait_registered(client, procs)
                log_progress(f"{tag}{label}: warm-up ({s.warmup} workflows)")
                await measure_sequential(client, s.warmup)
                await measure_throughput(client, s.warmup, max(1, min(s.in_flight, 10)))
                log_progress(f"{tag}{label}: sequential latency ({s.sequential} workflows)")
                seq = await measure_sequential(client, s.sequential)
                log_progress(
                    f"{tag}{label}: throughput ({s.throughput} workflows, {s.in_flight} in flight)"
                )
                elapsed, loaded = await measure_throughput(client, s.throughput, s.in_flight)
        finally:
            scraper.cancel()
        for proc in procs:
            proc.check_alive()
    wps = s.throughput / elapsed if elapsed > 0 else math.nan
    lat = _latency_ms(seq)
    loaded_lat = _latency_ms(loaded)
    return {
        **lat,
        "workflows_per_s": wps,
        "steps_per_s": wps * STEPS,
        "loaded_p50_ms": loaded_lat["p50_ms"],
        "loaded_p99_ms": loaded_lat["p99_ms"],
    }


async def _scrape_every(addresses: list[str], period: float) -> None:
    """Scrape each metrics endpoint every ``period`` seconds, as Prometheus would."""

    def scrape(address: str) -> None:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
            response.read()

    while addresses:
        await asyncio.sleep(period)
        for address in addresses:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(scrape, address)


def _median_of(per_run: list[dict[str, Any]], section: str, field: str) -> float:
    values = [float(r[section][field]) for r in per_run]
    return statistics.median(values) if values else math.nan


def _nats_server_version() -> str:
    try:
        out = subprocess.run(
            [str(find_nats_server()), "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError, RuntimeError):
        return "unknown"
    # "nats-server: v2.15.1"
    return out.strip().rsplit(" ", 1)[-1].lstrip("v") or "unknown"


def summarize(s: Settings, per_run: list[dict[str, Any]]) -> dict[str, Any]:
    wf_fields = ["p50_ms", "p99_ms", "mean_ms", "workflows_per_s", "steps_per_s"]
    wf_fields += ["loaded_p50_ms", "loaded_p99_ms"]
    floor_fields = ["publish_p50_ms", "publish_p99_ms", "publish_mean_ms"]
    floor_fields += ["pipelined_msgs_per_s"]
    workflow: dict[str, Any] = {f: _round(_median_of(per_run, "workflow", f), 3) for f in wf_fields}
    workflow.update(
        steps_per_workflow=STEPS,
        sequential_n=s.sequential,
        throughput_n=s.throughput,
        in_flight=s.in_flight,
    )
    floor: dict[str, Any] = {f: _round(_median_of(per_run, "floor", f), 3) for f in floor_fields}
    floor.update(
        publish_n=s.floor_publishes,
        pipelined_n=s.floor_pipelined,
        pipelined_in_flight=s.floor_in_flight,
    )
    variants: dict[str, Any] = {}
    for v in s.variants:
        fields = {
            f: _round(statistics.median(float(r["variants"][v][f]) for r in per_run), 3)
            for f in wf_fields
        }
        fields["p50_vs_default"] = _round(fields["p50_ms"] / workflow["p50_ms"], 3)
        fields["throughput_vs_default"] = _round(
            fields["workflows_per_s"] / workflow["workflows_per_s"], 3
        )
        variants[v] = fields
    rounded_runs = [
        {
            "run": r["run"],
            "wall_s": _round(r["wall_s"], 2),
            "workflow": {k: _round(float(v), 3) for k, v in r["workflow"].items()},
            "floor": {
                k: _round(float(v), 3) if isinstance(v, float) else v for k, v in r["floor"].items()
            },
            "variants": {
                name: {k: _round(float(v), 3) for k, v in fields.items()}
                for name, fields in r["variants"].items()
            },
        }
        for r in per_run
    ]
    return {
        "sync": s.sync,
        "topology": s.topology,
        "runs": s.runs,
        "statistic": "median across runs",
        "handler": HANDLER,
        "workflow": workflow,
        "floor": floor,
        # The same workload with metrics served and scraped, and with tracing exporting
        # every span: their cost as ratios to the default in the same runs.
        "variants": variants,
        "per_run": rounded_runs,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "nats_server_version": _nats_server_version(),
        },
    }


def render_table(report: dict[str, Any]) -> str:
    wf, fl = report["workflow"], report["floor"]
    rows = [
        ("workflow p50 (sequential)", f"{wf['p50_ms']:.2f} ms"),
        ("workflow p99 (sequential)", f"{wf['p99_ms']:.2f} ms"),
        ("workflow mean (sequential)", f"{wf['mean_ms']:.2f} ms"),
        (f"workflows/s ({wf['in_flight']} in flight)", f"{wf['workflows_per_s']:.0f}"),
        (f"steps/s ({STEPS} per workflow)", f"{wf['steps_per_s']:.0f}"),
        (
            "workflow p50 / p99 under load",
            f"{wf['loaded_p50_ms']:.2f} / {wf['loaded_p99_ms']:.2f} ms",
        ),
        ("floor: publish-with-ack p50", f"{fl['publish_p50_ms']:.3f} ms"),
        ("floor: publish-with-ack p99", f"{fl['publish_p99_ms']:.3f} ms"),
        (
            f"floor: pipelined ({fl['pipelined_in_flight']} in flight)",
            f"{fl['pipelined_msgs_per_s']:.0f} msgs/s",
        ),
    ]
    for name, v in report.get("variants", {}).items():
        rows.append(
            (
                f"with {name}: p50, workflows/s",
                f"{v['p50_ms']:.2f} ms ({v['p50_vs_default']:.2f}x), "
                f"{v['workflows_per_s']:.0f} ({v['throughput_vs_default']:.2f}x)",
            )
        )
    m = report["machine"]
    title = (
        f"durable bench: sync_interval={report['sync']}, median of {report['runs']} run(s), "
        f"{wf['sequential_n']} sequential / {wf['throughput_n']} throughput workflows; "
        f"{m['cpus']} cpus, Python {m['python']}, nats-server {m['nats_server_version']}"
    )
    width = max(len(name) for name, _ in rows)
    lines = [title, "-" * len(title)]
    lines += [f"  {name.ljust(width)}  {value.rjust(14)}" for name, value in rows]
    return "\n".join(lines)


async def run_bench(s: Settings) -> dict[str, Any]:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
    per_run = []
    for k in range(1, s.runs + 1):
        per_run.append(await one_run(k, s))
    return summarize(s, per_run)


# ------------------------------------------------------------------------------------ CLI


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m durable_server.bench",
        description="Benchmark a 3-step workflow against the raw JetStream floor.",
    )
    p.add_argument(
        "--sync", default="always", help="nats-server sync_interval: 'always' or e.g. '2m'"
    )
    p.add_argument("--runs", type=_positive, default=3, help="repetitions (medians reported)")
    p.add_argument("--sequential", type=_positive, default=200, help="workflows one at a time")
    p.add_argument("--throughput", type=_positive, default=1000, help="workflows for throughput")
    p.add_argument("--in-flight", type=_positive, default=50, help="concurrent workflows")
    p.add_argument("--warmup", type=_positive, default=20, help="warm-up workflows per run")
    p.add_argument(
        "--floor-publishes", type=_positive, default=1000, help="sequential publishes (floor)"
    )
    p.add_argument(
        "--floor-pipelined", type=_positive, default=10000, help="pipelined publishes (floor)"
    )
    p.add_argument(
        "--floor-in-flight", type=_positive, default=256, help="pipelined publishes in flight"
    )
    p.add_argument(
        "--topology",
        choices=("combined", "split"),
        default="split",
        help="combined: one engine process (control plane + worker, as `make run`); "
        "split: `durable server` and `durable worker` as two processes",
    )
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="also measure these configurations in every run, as ratios to the default: "
        "metrics (served and scraped), tracing (every span exported to memory); '' for none",
    )
    p.add_argument("--out", type=Path, default=None, help="also write the JSON report here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        EmbeddedNats(tempfile.gettempdir(), sync_interval=args.sync)  # validates the value
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = Settings(
        sync=args.sync,
        runs=args.runs,
        sequential=args.sequential,
        throughput=args.throughput,
        in_flight=args.in_flight,
        warmup=args.warmup,
        floor_publishes=args.floor_publishes,
        floor_pipelined=args.floor_pipelined,
        floor_in_flight=args.floor_in_flight,
        topology=args.topology,
        variants=tuple(v for v in args.variants.split(",") if v),
    )
    unknown = set(settings.variants) - set(VARIANTS)
    if unknown:
        print(f"error: unknown --variants {sorted(unknown)}; known: {VARIANTS}", file=sys.stderr)
        return 2
    try:
        report = uvloop.run(run_bench(settings))
    except KeyboardInterrupt:
        log_progress("interrupted; processes stopped")
        return 130
    except asyncio.CancelledError:
        log_progress("terminated; processes stopped")
        return 143
    except BenchError as exc:
        log_progress(f"failed: {exc}")
        return 1
    except Exception:
        log_progress(f"failed:\n{traceback.format_exc()}")
        return 1
    finally:
        Proc.kill_all()
    print(render_table(report), file=sys.stderr, flush=True)
    line = json.dumps(report, separators=(", ", ": "))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n")
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
