"""The engine on more than one process: a 3-node JetStream cluster and several worker processes.

* "Pointing both at an external NATS URL (a cluster) works the same way": three real
  nats-server processes on loopback form one JetStream cluster (routes between them); the
  control plane and the worker get the comma-separated list of client URLs and ``replicas=3``.
  Multi-step workflows complete, the engine's streams, buckets and work consumer really are
  replicated on three nodes, and start_engine is ready to invoke as soon as it yields.
  A work item is readable (``WorkQueue.latest_item``) as soon as its enqueue returned,
  which GetWorkflow/AwaitResult rely on for an invocation no worker has written yet.
* A node is SIGKILLed while invocations are being submitted; it leads nothing (the engine's
  stream and consumer leaders are stepped down off it first, and it is not the meta leader).
  When the engine holds nothing else on it, every invocation completes and is answered
  promptly; when it hosts the control plane's watch of the invocations bucket, every
  invocation still completes and must still be answered promptly.
* "Workers can run as several processes at once and share the work": two ``durable worker``
  processes on one nats-server, one control plane, 60 invocations whose steps report the pid
  that ran them: both processes did work and every step body ran exactly once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from durable import Client, Context, Service
from durable._store.config import ANY_LANE, EngineConfig
from durable._store.workqueue import WorkQueue
from durable._worker.runtime import Worker
from durable.internal.v1 import storage_pb2
from durable.testing import start_engine
from durable.v1 import types_pb2
from durable_server.control.server import ControlServer
from durable_server.natsd import EmbeddedNats
from durable_server.provision import ensure_resources, ensure_run_consumer
from tests.cluster_handlers import LEDGER_ENV, STEPS
from tests.nats_cluster import (
    CLUSTER,
    NODES,
    Cluster,
)
from tests.nats_cluster import connect as _connect
from tests.nats_cluster import engine_streams as _engine_streams
from tests.nats_cluster import move_leaders_off as _move_leaders_off
from tests.procs import REPO, EngineProc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

COMPLETED = types_pb2.INVOCATION_STATUS_COMPLETED

# -- a multi-step workflow, hosted in this process --------------------------------------------

STEP_RUNS: collections.Counter[str] = collections.Counter()

cluster = Service("cluster", description="multi-step workflows for the cluster tests")


def _double(invocation_id: str, x: int) -> int:  # sync: runs in a thread
    STEP_RUNS[f"{invocation_id}:double"] += 1
    return 2 * x


async def _add(invocation_id: str, name: str, x: int, y: int) -> int:
    STEP_RUNS[f"{invocation_id}:{name}"] += 1
    await asyncio.sleep(0.002)
    return x + y


@cluster.handler()
async def arith(ctx: Context, n: int) -> dict[str, Any]:
    """Four journaled steps: ((2n + 1) + 10) + 100, with a deterministic uuid in between."""
    a = await ctx.run("double", _double, ctx.invocation_id, n)
    b = await ctx.run("plus1", _add, ctx.invocation_id, "plus1", a, 1)
    tag = ctx.uuid().hex[:8]
    c = await ctx.run("plus10", _add, ctx.invocation_id, "plus10", b, 10)
    d = await ctx.run("plus100", _add, ctx.invocation_id, "plus100", c, 100)
    return {"n": n, "value": d, "tag": tag}


ARITH_STEPS = ["double", "plus1", "plus10", "plus100"]


def expected_value(n: int) -> int:
    return 2 * n + 111


async def _wait_for_handler(
    client: Client, handler: str, *, workers: int = 1, within: float = 20.0
) -> None:
    """Until the control plane lists ``handler`` with at least ``workers`` live workers."""
    deadline = time.monotonic() + within
    seen = 0
    while time.monotonic() < deadline:
        seen = next((h.live_workers for h in await client.handlers() if h.name == handler), 0)
        if seen >= workers:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{handler}: {seen} live workers after {within}s, wanted {workers}")


async def _run_arith(
    client: Client, ns: list[int], within: float, spacing: float = 0.0
) -> list[tuple[str, Any]]:
    """Invoke cluster/arith for every n (the i-th after i * spacing seconds) and wait for all;
    returns (invocation id, output) in the order of ns."""

    async def one(i: int, n: int) -> tuple[str, Any]:
        await asyncio.sleep(i * spacing)
        handle = await client.invoke("cluster/arith", n, wait=True, wait_timeout=within)
        return handle.id, await handle.result(timeout=within)

    runs = asyncio.gather(*(one(i, n) for i, n in enumerate(ns)))
    return await asyncio.wait_for(runs, within + spacing * len(ns) + 5)


async def _check_arith(client: Client, ns: list[int], runs: list[tuple[str, Any]]) -> None:
    ids = [inv for inv, _ in runs]
    assert len(set(ids)) == len(ns), "an invocation id was handed out twice"
    for n, (inv, output) in zip(ns, runs, strict=True):
        assert output["n"] == n and output["value"] == expected_value(n), (inv, output)
        view = await client.get(inv)
        assert view.status == COMPLETED, view
        assert [e.name for e in view.journal] == ARITH_STEPS, view.journal


async def test_engine_on_three_node_cluster(nats_cluster: Cluster) -> None:
    started = time.monotonic()
    cl = nats_cluster
    async with start_engine([cluster], nats_url=cl.url, replicas=NODES) as engine:
        assert engine.config.servers == cl.urls
        assert engine.natsd is None  # it used the cluster, not a server of its own
        ns = list(range(30))
        runs = await _run_arith(engine.client, ns, within=30)
        await _check_arith(engine.client, ns, runs)
        # No failures, no crashes: every step body ran exactly once.
        for inv, _ in runs:
            for step in ARITH_STEPS:
                assert STEP_RUNS[f"{inv}:{step}"] == 1, (inv, step, STEP_RUNS[f"{inv}:{step}"])

        stats = await engine.client.stats()
        assert stats.total == len(ns)
        assert stats.by_status[COMPLETED] == len(ns)

        nc = await _connect(cl)
        try:
            js = nc.jetstream(timeout=5.0)
            names = {n.server_name for n in cl.nodes}
            for stream in _engine_streams(engine.config):
                info = await js.stream_info(stream)
                assert info.config.num_replicas == NODES, (stream, info.config)
                assert info.cluster is not None and info.cluster.name == CLUSTER, info.cluster
                peers = {info.cluster.leader, *(r.name for r in info.cluster.replicas or [])}
                assert peers == names, (stream, info.cluster)
            jinfo = await js.stream_info(engine.config.journal_stream)
            assert jinfo.state.messages >= len(ns) * len(ARITH_STEPS), jinfo.state
            ci = await js.consumer_info(
                engine.config.work_stream, engine.config.run_consumer(cluster.name)
            )
            assert ci.cluster is not None, ci
            assert {ci.cluster.leader, *(r.name for r in ci.cluster.replicas or [])} == names
        finally:
            await nc.close()
    print(
        f"\n[cluster] {len(ns)} workflows on a {NODES}-node R{NODES} cluster "
        f"in {time.monotonic() - started:.1f}s"
    )


async def test_start_engine_on_cluster_is_ready_when_it_yields(nats_cluster: Cluster) -> None:
    """The first calls right after start_engine find the worker's handlers.

    The control plane learns handlers from a watch of the workers bucket, which on a 3-node
    cluster delivered the worker's registration only after start_engine had yielded, so an
    immediate Invoke failed with NOT_FOUND ("no worker has registered yet") in about one
    start in ten. Checked on several fresh engines because it is a race.
    """
    problems: list[str] = []
    for attempt in range(5):
        async with start_engine([cluster], nats_url=nats_cluster.url, replicas=NODES) as engine:
            listed = {h.name for h in await engine.client.handlers()}
            if "cluster/arith" not in listed:
                problems.append(f"start {attempt}: ListHandlers right away gave {listed}")
            try:
                output = await engine.client.execute("cluster/arith", attempt, timeout=20)
                assert output["value"] == expected_value(attempt), output
            except Exception as exc:
                problems.append(f"start {attempt}: first execute failed: {exc!r}")
    assert not problems, "\n".join(problems)


WQ_ITEMS = 500


async def test_queued_work_item_is_readable_right_after_enqueue_on_cluster(
    nats_cluster: Cluster,
) -> None:
    """``WorkQueue.latest_item`` must see an item as soon as ``enqueue`` returned.

    The control plane relies on it: an invocation accepted by Invoke exists only as its work
    item until a worker writes the record (at the end, on the fast path), so GetWorkflow,
    AwaitResult, Pause and Cancel look the item up, and answer NOT_FOUND ("never created, or
    purged") when it is missing. On a replicated stream a direct get may be answered by a
    replica that has not applied the newest message yet. Here the items looked up are never
    acked, while other items are enqueued and acked around them as workers would.
    """
    cfg = EngineConfig(nats_url=nats_cluster.url, prefix=f"wq{uuid.uuid4().hex[:8]}", replicas=3)
    control = await _connect(nats_cluster)
    busy = await _connect(nats_cluster)
    stop = asyncio.Event()
    try:
        await ensure_resources(control.jetstream(timeout=5.0), cfg)
        await ensure_run_consumer(control.jetstream(timeout=5.0), cfg, "wq", ANY_LANE)
        queue = WorkQueue(control.jetstream(timeout=5.0), cfg)
        other = WorkQueue(busy.jetstream(timeout=5.0), cfg)
        sub = await busy.jetstream(timeout=5.0).pull_subscribe_bind(
            cfg.run_consumer("wq"), stream=cfg.work_stream
        )

        async def work_elsewhere() -> None:
            i = 0
            while not stop.is_set():
                await other.enqueue(f"other{i}", "wq/h", 1, "invoke")
                i += 1
                with contextlib.suppress(TimeoutError):  # nats raises both kinds
                    for msg in await sub.fetch(100, timeout=0.001):
                        if ".other" in msg.subject:
                            await msg.ack()

        background = asyncio.create_task(work_elsewhere())
        missing: list[str] = []

        async def one(i: int) -> None:
            await asyncio.sleep(i * 0.004)
            invocation_id = f"checked{i}"
            await queue.enqueue(invocation_id, "wq/h", 1, "invoke")
            if await queue.latest_item(invocation_id, "wq/h") is None:
                missing.append(invocation_id)

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(WQ_ITEMS))), 30)
        stop.set()
        await asyncio.wait_for(background, 10)
    finally:
        stop.set()
        for conn in (control, busy):
            await conn.close()
    assert not missing, (
        f"latest_item found no work item for {len(missing)} of {WQ_ITEMS} items enqueued "
        f"(and acknowledged by the stream) just before, none of them acked: {missing[:10]}"
    )


async def _r1_consumer_hosts(js: JetStreamContext, stream: str) -> set[str]:
    """Nodes hosting an unreplicated consumer of ``stream`` (e.g. a KV watch)."""
    hosts: set[str] = set()
    for ci in await js.consumers_info(stream):
        if ci.config.num_replicas == 1 and ci.cluster is not None and ci.cluster.leader:
            hosts.add(ci.cluster.leader)
    return hosts


# Each invocation must be answered within this long of its submission, a node loss included.
KILL_LATENCY_BOUND = 10.0
KILL_NS = list(range(60))
KILL_SPACING = 0.03  # submissions span ~1.8 s; the kill lands at 0.6 s


@dataclass
class KillRun:
    victim: EmbeddedNats
    killed_at: float
    done_at: float
    latencies: dict[int, float]
    probe: str  # what storage and the answers said a few seconds after the kill

    def slow(self) -> dict[int, float]:
        return {n: round(t, 1) for n, t in self.latencies.items() if t > KILL_LATENCY_BOUND}

    def summary(self) -> str:
        return (
            f"killed {self.victim.server_name} at {self.killed_at:.1f}s; {len(KILL_NS)} "
            f"workflows done at {self.done_at:.1f}s, slowest answer "
            f"{max(self.latencies.values()):.1f}s{'; ' + self.probe if self.probe else ''}"
        )


PROBE_AFTER_KILL = 5.0


async def _completed_in_storage(cl: Cluster, cfg: EngineConfig, ids: set[str]) -> int:
    """How many of ``ids`` have a COMPLETED record in the bucket (read directly)."""
    nc = await _connect(cl)
    try:
        kv = await nc.jetstream(timeout=5.0).key_value(cfg.invocations_bucket)
        done = 0
        for key in ids:
            with contextlib.suppress(KeyNotFoundError):
                record = storage_pb2.InvocationRecord()
                record.ParseFromString((await kv.get(key)).value or b"")
                done += record.status == COMPLETED
        return done
    finally:
        await nc.close()


async def _kill_while_invoking(
    cl: Cluster, cfg: EngineConfig, client: Client, victim: EmbeddedNats, *, probe: bool
) -> KillRun:
    """Invoke KILL_NS (with wait) over ~1.8 s, SIGKILL ``victim`` at 0.6 s; check every
    result and that new invocations still go through afterwards. With ``probe``,
    PROBE_AFTER_KILL seconds after the kill, compare how many of the invocations whose
    steps this process ran are COMPLETED in the bucket (read directly, not through the
    control plane) with how many Invoke calls have answered."""
    latencies: dict[int, float] = {}
    answered_at: list[float] = []
    earlier = set(STEP_RUNS)

    async def one(i: int, n: int) -> tuple[str, Any]:
        await asyncio.sleep(i * KILL_SPACING)
        t = time.monotonic()
        handle = await client.invoke("cluster/arith", n, wait=True, wait_timeout=40)
        output = await handle.result(timeout=40)
        answered_at.append(time.monotonic())
        latencies[n] = answered_at[-1] - t
        return handle.id, output

    async def kill_then_probe() -> tuple[float, str]:
        await asyncio.sleep(0.6)
        victim.kill()
        killed = time.monotonic()
        if not probe:
            return killed, ""
        await asyncio.sleep(PROBE_AFTER_KILL)
        answered = len(latencies)
        ran = {key.split(":")[0] for key in set(STEP_RUNS) - earlier}
        try:
            stored = await _completed_in_storage(cl, cfg, ran)
            return killed, (
                f"{PROBE_AFTER_KILL:.0f}s after the kill, {stored} of {len(KILL_NS)} "
                f"invocations were COMPLETED in the bucket, {answered} answered"
            )
        except Exception as exc:
            return killed, f"reading the bucket {PROBE_AFTER_KILL:.0f}s after the kill: {exc!r}"

    t0 = time.monotonic()
    runs, (killed_at, probed) = await asyncio.wait_for(
        asyncio.gather(
            asyncio.gather(*(one(i, n) for i, n in enumerate(KILL_NS))), kill_then_probe()
        ),
        60,
    )
    done = max(answered_at)
    assert not victim.running
    await _check_arith(client, KILL_NS, runs)
    after = await _run_arith(client, [2000, 2001, 2002], within=30)
    await _check_arith(client, [2000, 2001, 2002], after)
    return KillRun(victim, killed_at - t0, done - t0, latencies, probed)


async def _connect_to(cl: Cluster, first: EmbeddedNats) -> NATS:
    """A connection to ``first`` (the others only as reconnect fallbacks)."""
    urls = [first.url, *(n.url for n in cl.nodes if n is not first)]
    return await nats.connect(
        urls, dont_randomize=True, max_reconnect_attempts=-1, reconnect_time_wait=0.5
    )


async def test_cluster_idle_node_killed_while_invoking(nats_cluster: Cluster) -> None:
    """SIGKILL a node the engine does not depend on while invocations are being submitted:
    not the meta leader, no engine stream or the work consumer led by it (leaders are stepped
    down off it first), not hosting the control plane's watch of the invocations bucket, and
    neither the control plane nor the worker connected to it (both are connected to the meta
    leader). Its two peers keep quorum: every invocation completes and is answered promptly,
    and new ones still go through."""
    cl = nats_cluster
    meta_name = cl.meta_leader()
    assert meta_name is not None, cl.logs()
    meta = cl.node(meta_name)
    cfg = EngineConfig(nats_url=cl.url, prefix=f"idle{uuid.uuid4().hex[:8]}", replicas=NODES)
    nc_control = await _connect_to(cl, meta)
    nc_worker = await _connect_to(cl, meta)
    nc = await _connect(cl)
    try:
        async with (
            ControlServer(cfg, "127.0.0.1:0", nc=nc_control) as control,
            Worker(cfg, [cluster], slots=16, nc=nc_worker),
            Client(control.target) as client,
        ):
            await _wait_for_handler(client, "cluster/arith")
            warm = await _run_arith(client, [1000, 1001, 1002], within=20)
            await _check_arith(client, [1000, 1001, 1002], warm)

            js = nc.jetstream(timeout=5.0)
            watched = await _r1_consumer_hosts(js, f"KV_{cfg.invocations_bucket}")
            # Of the two nodes besides the meta leader, at most one hosts the (one) watch.
            spare = [n for n in cl.nodes if n.server_name not in {meta_name, *watched}]
            assert spare, f"meta leader {meta_name}, invocations-bucket watches on {watched}"
            victim = spare[0]
            leaders = await _move_leaders_off(nc, cfg, victim.server_name, meta_name)
            assert nc_control.connected_url is not None and nc_worker.connected_url is not None
            assert nc_control.connected_url.port == nc_worker.connected_url.port == meta.port

            run = await _kill_while_invoking(cl, cfg, client, victim, probe=False)
    finally:
        for conn in (nc, nc_control, nc_worker):
            await conn.close()
    summary = (
        f"meta leader {meta_name}, asset leaders {leaders}, invocations-bucket watch on "
        f"{sorted(watched)}; {run.summary()}"
    )
    print(f"\n[cluster-kill idle node] {summary}")
    slow = run.slow()
    assert not slow, f"answered after more than {KILL_LATENCY_BOUND}s: {slow}; {summary}"


async def test_cluster_node_with_index_watch_killed_while_invoking(
    nats_cluster: Cluster,
) -> None:
    """SIGKILL the node that hosts the control plane's watch of the invocations bucket (an
    unreplicated ordered consumer, from which AwaitResult and Invoke(wait) learn that an
    invocation ended), while invocations are being submitted. The node leads nothing: not
    the meta group, and every engine stream and the work consumer are stepped down off it
    first. Every invocation completes on the two survivors, and each must be answered
    within KILL_LATENCY_BOUND of its submission, not only once the client library notices
    its consumer is gone."""
    cl = nats_cluster
    meta_name = cl.meta_leader()
    assert meta_name is not None, cl.logs()
    async with contextlib.AsyncExitStack() as stack:
        nc = await _connect(cl)
        stack.push_async_callback(nc.close)
        js = nc.jetstream(timeout=5.0)
        # The watch lands on a node the meta leader picks; start engines until it is not on
        # the meta leader itself (2 in 3 are not), so the victim leads nothing.
        for _ in range(8):
            attempt = contextlib.AsyncExitStack()
            engine = await attempt.enter_async_context(
                start_engine([cluster], nats_url=cl.url, replicas=NODES)
            )
            watched = await _r1_consumer_hosts(js, f"KV_{engine.config.invocations_bucket}")
            assert watched, "the control plane holds no watch of the invocations bucket"
            if meta_name not in watched:
                stack.push_async_callback(attempt.aclose)
                break
            await attempt.aclose()
        else:
            raise AssertionError(f"the watch was always placed on the meta leader {meta_name}")
        victim = cl.node(sorted(watched)[0])
        heir = next(n.server_name for n in cl.nodes if n is not victim)
        warm = await _run_arith(engine.client, [1000, 1001, 1002], within=20)
        await _check_arith(engine.client, [1000, 1001, 1002], warm)
        leaders = await _move_leaders_off(nc, engine.config, victim.server_name, heir)
        assert engine.control.plane is not None
        attached = {
            "control": cl.attached(engine.control.plane.nc),
            "worker": cl.attached(engine.worker.nc),
        }
        run = await _kill_while_invoking(cl, engine.config, engine.client, victim, probe=True)
    summary = (
        f"meta leader {meta_name}, asset leaders {leaders}, invocations-bucket watch on "
        f"{sorted(watched)}, connections {attached}; {run.summary()}"
    )
    print(f"\n[cluster-kill index-watch node] {summary}")
    assert not run.slow(), (
        f"{len(run.slow())} invocations were answered more than {KILL_LATENCY_BOUND}s after "
        f"submission, though they had completed (n: seconds) {run.slow()}; {summary}"
    )


# -- several worker processes share the work ------------------------------------------------

INVOCATIONS = 60
SLOTS = 4


async def test_worker_processes_share_the_work(
    nats_server: EmbeddedNats, tmp_path: Path, unique: str
) -> None:
    started = time.monotonic()
    ledger = tmp_path / "ledger.txt"
    cfg = EngineConfig(nats_url=nats_server.url, prefix=f"share{unique}")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
        LEDGER_ENV: str(ledger),
    }
    args = [
        "worker",
        "--module",
        "tests.cluster_handlers",
        "--nats",
        cfg.nats_url,
        "--prefix",
        cfg.prefix,
        "--slots",
        str(SLOTS),
        "--log-level",
        "INFO",
    ]
    workers = [EngineProc(f"worker{i}", args, tmp_path, env) for i in range(2)]
    try:
        async with ControlServer(cfg, "127.0.0.1:0") as control, Client(control.target) as client:
            for w in workers:
                w.start()
            for w in workers:
                await w.wait_for_log("serving", within=20)
            await _wait_for_handler(client, "spread/tagged", workers=2, within=20)

            handles = [await client.start("spread/tagged", i) for i in range(INVOCATIONS)]
            outputs = await asyncio.wait_for(
                asyncio.gather(*(h.result(timeout=45) for h in handles)), 50
            )
            views = [await client.get(h.id) for h in handles]
            stats = await client.stats()
            assert all(w.running for w in workers), [w.tail() for w in workers]
    finally:
        for w in workers:
            w.stop(timeout=5)
        for w in workers:
            print(f"===== {w.name} (pid {w.pids}) =====\n{w.tail(30)}")

    pids = {w.pid for w in workers}
    ids = [h.id for h in handles]
    assert len(set(ids)) == INVOCATIONS
    per_pid: collections.Counter[int] = collections.Counter()
    for i, (h, output, view) in enumerate(zip(handles, outputs, views, strict=True)):
        assert output["n"] == i, (h.id, output)
        step_pids = output["pids"]
        assert len(step_pids) == STEPS and set(step_pids) <= pids, (h.id, output, pids)
        # No crash, no redelivery: one worker drove each invocation from start to end.
        assert len(set(step_pids)) == 1, (h.id, output)
        per_pid[step_pids[0]] += 1
        assert view.status == COMPLETED, view
        assert view.attempt == 1, view
        assert [e.name for e in view.journal] == [f"step{s}" for s in range(STEPS)]
    assert set(per_pid) == pids, f"not every worker process did work: {per_pid}"

    # Every step body ran exactly once, in the process its journaled result names.
    lines = [ln.split() for ln in ledger.read_text().splitlines()]
    ran = collections.Counter((inv, int(step)) for inv, step, _ in lines)
    assert set(ran) == {(inv, s) for inv in ids for s in range(STEPS)}
    assert all(c == 1 for c in ran.values()), [k for k, c in ran.items() if c > 1]
    by_step = {(inv, int(step)): int(pid) for inv, step, pid in lines}
    for h, output in zip(handles, outputs, strict=True):
        assert [by_step[(h.id, s)] for s in range(STEPS)] == output["pids"]

    assert stats.total == INVOCATIONS
    assert stats.by_status[COMPLETED] == INVOCATIONS
    print(
        f"\n[workers] {INVOCATIONS} invocations over 2 worker processes {dict(per_pid)} "
        f"in {time.monotonic() - started:.1f}s"
    )
