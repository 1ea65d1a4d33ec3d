"""The engine on more than one process: a 3-node JetStream cluster and several worker processes.

* "Pointing both at an external NATS URL (a cluster) works the same way": three real
  nats-server processes on loopback form one JetStream cluster (routes between them); the
  control plane and the worker get the comma-separated list of client URLs and ``replicas=3``.
  Multi-step workflows complete, and the engine's streams, buckets and work consumer really
  are replicated on three nodes. Then a node that leads nothing the engine relies on is
  SIGKILLed while invocations run, and every invocation still completes.
* "Workers can run as several processes at once and share the work": two ``durable worker``
  processes on one nats-server, one control plane, 60 invocations whose steps report the pid
  that ran them: both processes did work and every step body ran exactly once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

from durable import Client, Context, Service
from durable.testing import start_engine
from durable.v1 import types_pb2
from durable_server.config import EngineConfig
from durable_server.control.server import ControlServer
from durable_server.natsd import EmbeddedNats
from tests.cluster_handlers import LEDGER_ENV, STEPS
from tests.procs import REPO, EngineProc, free_port

pytestmark = pytest.mark.timeout(90)

CLUSTER = "durable-test"
NODES = 3
COMPLETED = types_pb2.INVOCATION_STATUS_COMPLETED
_META_LEADER = re.compile(r"JetStream cluster new metadata leader: (\S+)/" + CLUSTER)

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


# -- a 3-node JetStream cluster -------------------------------------------------------------


@dataclass
class Cluster:
    nodes: list[EmbeddedNats]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        """The comma-separated form EngineConfig.nats_url takes."""
        return ",".join(self.urls)

    def node(self, name: str) -> EmbeddedNats:
        return next(n for n in self.nodes if n.server_name == name)

    def meta_leader(self) -> str | None:
        """The latest metadata leader any running node has logged."""
        leader: str | None = None
        latest = ""
        for n in self.nodes:
            with contextlib.suppress(FileNotFoundError):
                for line in n.log_path.read_text(errors="replace").splitlines():
                    m = _META_LEADER.search(line)
                    # Lines start "[pid] YYYY/MM/DD HH:MM:SS.micro": compare the timestamps.
                    stamp = line.split("] ", 1)[-1][:26]
                    if m and stamp >= latest:
                        latest, leader = stamp, m[1]
        return leader

    def logs(self) -> str:
        return "\n".join(f"--- {n.server_name} ---\n{n.log_tail(30)}" for n in self.nodes)


async def _wait_for_jetstream(cl: Cluster, within: float = 30.0) -> None:
    """Until a meta leader answers and an R3 stream can be placed (all peers have joined)."""
    nc = await nats.connect(cl.urls, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        js = nc.jetstream(timeout=1.0)
        deadline = time.monotonic() + within
        probe = StreamConfig(
            name="CLUSTER_PROBE",
            subjects=["cluster.probe"],
            num_replicas=NODES,
            storage=StorageType.MEMORY,
        )
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                await js.account_info()
                await js.add_stream(probe)
                await js.delete_stream("CLUSTER_PROBE")
                return
            except Exception as exc:  # no meta leader yet, or not all peers known
                last = exc
                await asyncio.sleep(0.2)
        raise AssertionError(f"JetStream cluster not ready in {within}s: {last!r}\n{cl.logs()}")
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def running_cluster(base: Path) -> AsyncIterator[Cluster]:
    """Three nats-server processes with JetStream, routed into one cluster on loopback."""
    client_ports = [free_port() for _ in range(NODES)]
    route_ports = [free_port() for _ in range(NODES)]
    routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in route_ports)
    nodes = [
        EmbeddedNats(
            base / f"node{i}",
            port=client_ports[i],
            server_name=f"node{i}",
            extra_config=(
                "cluster {\n"
                f"  name: {json.dumps(CLUSTER)}\n"
                f'  listen: "127.0.0.1:{route_ports[i]}"\n'
                f"  routes: [{routes}]\n"
                "}\n"
            ),
        )
        for i in range(NODES)
    ]
    cl = Cluster(nodes)
    try:
        await asyncio.gather(*(n.astart() for n in nodes))
        await _wait_for_jetstream(cl)
        yield cl
    finally:
        for n in nodes:
            n.kill()  # the store is thrown away; no need for an orderly shutdown


@pytest.fixture
async def nats_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path) as cl:
        yield cl


async def _connect(cl: Cluster) -> NATS:
    return await nats.connect(cl.urls, max_reconnect_attempts=-1, reconnect_time_wait=0.2)


def _engine_streams(cfg: EngineConfig) -> list[str]:
    return [
        cfg.journal_stream,
        cfg.work_stream,
        f"KV_{cfg.invocations_bucket}",
        f"KV_{cfg.workers_bucket}",
    ]


async def _leaders(js: JetStreamContext, cfg: EngineConfig) -> dict[str, str]:
    """Which node leads each of the engine's replicated streams and its work consumer."""
    out: dict[str, str] = {}
    for name in _engine_streams(cfg):
        info = await js.stream_info(name)
        assert info.cluster is not None and info.cluster.leader, info
        out[name] = info.cluster.leader
    ci = await js.consumer_info(cfg.work_stream, cfg.work_consumer)
    assert ci.cluster is not None and ci.cluster.leader, ci
    out[f"{cfg.work_stream}/{cfg.work_consumer}"] = ci.cluster.leader
    return out


async def _move_leaders_off(
    nc: NATS, cfg: EngineConfig, victim: str, to: str, within: float = 15.0
) -> dict[str, str]:
    """Step every engine asset the victim leads down, preferring ``to`` as the new leader."""
    js = nc.jetstream(timeout=5.0)
    deadline = time.monotonic() + within
    body = json.dumps({"placement": {"preferred": to}}).encode()
    while True:
        leaders = await _leaders(js, cfg)
        on_victim = [asset for asset, node in leaders.items() if node == victim]
        if not on_victim:
            return leaders
        assert time.monotonic() < deadline, f"{victim} still leads {on_victim}"
        for asset in on_victim:
            stream, _, consumer = asset.partition("/")
            api = (
                f"$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{consumer}"
                if consumer
                else f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}"
            )
            with contextlib.suppress(Exception):  # e.g. a stepdown still in progress
                await nc.request(api, body, timeout=5.0)
        await asyncio.sleep(0.3)


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
        assert view.invocation.status == COMPLETED, view.invocation
        assert [e.name for e in view.journal] == ARITH_STEPS, view.journal


async def test_engine_on_three_node_cluster(nats_cluster: Cluster) -> None:
    started = time.monotonic()
    cl = nats_cluster
    async with start_engine([cluster], nats_url=cl.url, replicas=NODES) as engine:
        assert engine.config.servers == cl.urls
        assert engine.natsd is None  # it used the cluster, not a server of its own
        # (start_engine can yield before the control plane has seen the worker's
        # registration; test_start_engine_on_cluster_is_ready_when_it_yields covers that.)
        await _wait_for_handler(engine.client, "cluster/arith")
        ns = list(range(30))
        runs = await _run_arith(engine.client, ns, within=30)
        await _check_arith(engine.client, ns, runs)
        # No failures, no crashes: every step body ran exactly once.
        for inv, _ in runs:
            for step in ARITH_STEPS:
                assert STEP_RUNS[f"{inv}:{step}"] == 1, (inv, step, STEP_RUNS[f"{inv}:{step}"])

        stats = await engine.client.stats()
        assert stats.total == len(ns)
        assert {s.status: s.count for s in stats.by_status}[COMPLETED] == len(ns)

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
            ci = await js.consumer_info(engine.config.work_stream, engine.config.work_consumer)
            assert ci.cluster is not None, ci
            assert {ci.cluster.leader, *(r.name for r in ci.cluster.replicas or [])} == names
        finally:
            await nc.close()
    print(
        f"\n[cluster] {len(ns)} workflows on a {NODES}-node R{NODES} cluster "
        f"in {time.monotonic() - started:.1f}s"
    )


async def test_start_engine_on_cluster_is_ready_when_it_yields(nats_cluster: Cluster) -> None:
    """The first call right after start_engine must not find the handler unknown.

    start_engine yields once the worker has *written* its registration, but the control
    plane learns handlers from a watch of the workers bucket, which may deliver it later;
    on a 3-node cluster an immediate Invoke then fails with NOT_FOUND ("no worker has
    registered yet"). Checked on several fresh engines because it is a race.
    """
    missing: list[str] = []
    for attempt in range(6):
        async with start_engine([cluster], nats_url=nats_cluster.url, replicas=NODES) as engine:
            assert engine.control.plane is not None
            if engine.control.plane.catalog.get("cluster/arith") is None:
                missing.append(f"start {attempt}: catalog has no cluster/arith at yield")
            try:
                await engine.client.execute("cluster/arith", attempt, timeout=20)
            except Exception as exc:
                missing.append(f"start {attempt}: first execute failed: {exc!r}")
    assert not missing, "\n".join(missing)


async def _r1_consumer_hosts(js: JetStreamContext, stream: str) -> set[str]:
    """Nodes hosting an unreplicated consumer of ``stream`` (e.g. a KV watch)."""
    hosts: set[str] = set()
    for ci in await js.consumers_info(stream):
        if ci.config.num_replicas == 1 and ci.cluster is not None and ci.cluster.leader:
            hosts.add(ci.cluster.leader)
    return hosts


# Each invocation must be answered within this long of its submission, a node loss included.
KILL_LATENCY_BOUND = 10.0


@pytest.mark.parametrize("victim_kind", ["idle-node", "index-watch-node"])
async def test_cluster_node_killed_while_invoking(nats_cluster: Cluster, victim_kind: str) -> None:
    """SIGKILL one node that leads nothing (neither the meta group nor any engine stream or
    the work consumer: leaders are stepped down off it first) while invocations are being
    submitted. The two survivors keep quorum, so every invocation must complete and be
    answered promptly.

    ``idle-node``: the victim also hosts no watch of the invocations bucket.
    ``index-watch-node``: the victim hosts the control plane's watch of the invocations
    bucket (an unreplicated ordered consumer), from which AwaitResult learns that an
    invocation ended.
    """
    cl = nats_cluster
    async with start_engine([cluster], nats_url=cl.url, replicas=NODES) as engine:
        await _wait_for_handler(engine.client, "cluster/arith")
        warm = await _run_arith(engine.client, [1000, 1001, 1002], within=20)
        await _check_arith(engine.client, [1000, 1001, 1002], warm)

        meta = cl.meta_leader()
        assert meta is not None, cl.logs()
        nc = await _connect(cl)
        try:
            js = nc.jetstream(timeout=5.0)
            watched = await _r1_consumer_hosts(js, f"KV_{engine.config.invocations_bucket}")
            if victim_kind == "idle-node":
                # Always exists: at most one node besides the meta leader hosts the watch.
                names = [n.server_name for n in cl.nodes if n.server_name not in {meta, *watched}]
            else:
                assert watched, "the control plane holds no watch of the invocations bucket"
                names = sorted(watched)
            victim = cl.node(names[0])
            heir = next(n.server_name for n in cl.nodes if n is not victim)
            leaders = await _move_leaders_off(nc, engine.config, victim.server_name, heir)
        finally:
            await nc.close()
        assert engine.control.plane is not None
        by_port = {n.port: n.server_name for n in cl.nodes}
        attached = {
            "control": by_port.get(engine.control.plane.nc.connected_url.port),
            "worker": by_port.get(engine.worker.nc.connected_url.port),
        }

        ns = list(range(60))
        spacing = 0.03  # submissions span ~1.8 s; the kill lands in the middle
        latencies: dict[int, float] = {}

        async def one(i: int, n: int) -> tuple[str, Any]:
            await asyncio.sleep(i * spacing)
            t = time.monotonic()
            handle = await engine.client.invoke("cluster/arith", n, wait=True, wait_timeout=40)
            output = await handle.result(timeout=40)
            latencies[n] = time.monotonic() - t
            return handle.id, output

        async def kill_soon() -> float:
            await asyncio.sleep(0.6)
            victim.kill()
            return time.monotonic()

        t0 = time.monotonic()
        runs, killed_at = await asyncio.wait_for(
            asyncio.gather(asyncio.gather(*(one(i, n) for i, n in enumerate(ns))), kill_soon()),
            60,
        )
        done = time.monotonic()
        assert not victim.running
        await _check_arith(engine.client, ns, runs)
        # After the kill, new invocations still go through on the two survivors.
        after = await _run_arith(engine.client, [2000, 2001, 2002], within=30)
        await _check_arith(engine.client, [2000, 2001, 2002], after)

    slow = {n: round(t, 1) for n, t in latencies.items() if t > KILL_LATENCY_BOUND}
    summary = (
        f"meta leader {meta}, asset leaders {leaders}, invocations-bucket watch on "
        f"{sorted(watched)}, connections {attached}; killed {victim.server_name} at "
        f"{killed_at - t0:.1f}s; "
        f"{len(ns)} workflows done at {done - t0:.1f}s, slowest answer "
        f"{max(latencies.values()):.1f}s"
    )
    print(f"\n[cluster-kill {victim_kind}] {summary}")
    assert not slow, (
        f"{len(slow)} invocations were answered more than {KILL_LATENCY_BOUND}s after "
        f"submission (n: seconds) {slow}; {summary}"
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
        assert view.invocation.status == COMPLETED, view.invocation
        assert view.invocation.attempt == 1, view.invocation
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
    assert {s.status: s.count for s in stats.by_status}[COMPLETED] == INVOCATIONS
    print(
        f"\n[workers] {INVOCATIONS} invocations over 2 worker processes {dict(per_pid)} "
        f"in {time.monotonic() - started:.1f}s"
    )
