"""A 3-node JetStream cluster of real nats-server processes on loopback, for tests and the
chaos run: start it (``running_cluster``), find who leads what (``leaders``, the meta leader
from the logs), move leaders off a node, and kill or restart nodes on their own stores.

Each node is an :class:`EmbeddedNats` with a ``cluster {}`` block routing it to the other two,
so ``kill()`` and ``start()`` of one node keep its port, store and routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

from durable._store.config import EngineConfig
from durable_server.natsd import EmbeddedNats, NatsServerError
from tests.procs import free_port

CLUSTER = "durable-test"
NODES = 3
_META_LEADER = re.compile(r"JetStream cluster new metadata leader: (\S+)/" + CLUSTER)


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

    def attached(self, nc: NATS) -> str | None:
        """The node a client connection is attached to right now."""
        url = nc.connected_url
        return next((n.server_name for n in self.nodes if url and url.port == n.port), None)

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


async def wait_for_jetstream(cl: Cluster, within: float = 30.0) -> None:
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
    """Three nats-server processes with JetStream, routed into one cluster on loopback.

    Ports are picked free and then bound by nats-server, so another process may take one in
    between on a busy machine: a start that fails is tried again on new ports."""
    for attempt in range(3):
        cl = new_cluster(base / f"try{attempt}")
        try:
            await asyncio.gather(*(n.astart() for n in cl.nodes))
        except NatsServerError:
            for n in cl.nodes:
                n.kill()
            if attempt == 2:
                raise
            continue
        try:
            await wait_for_jetstream(cl)
            yield cl
        finally:
            for n in cl.nodes:
                n.kill()  # the store is thrown away; no need for an orderly shutdown
        return


def new_cluster(base: Path) -> Cluster:
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
    return Cluster(nodes)


async def connect(cl: Cluster) -> NATS:
    return await nats.connect(cl.urls, max_reconnect_attempts=-1, reconnect_time_wait=0.2)


def engine_streams(cfg: EngineConfig) -> list[str]:
    return [
        cfg.journal_stream,
        cfg.work_stream,
        f"KV_{cfg.invocations_bucket}",
        f"KV_{cfg.workers_bucket}",
    ]


async def leaders(js: JetStreamContext, cfg: EngineConfig) -> dict[str, str]:
    """Which node leads each of the engine's replicated streams and work consumers."""
    out: dict[str, str] = {}
    for name in engine_streams(cfg):
        info = await js.stream_info(name)
        assert info.cluster is not None and info.cluster.leader, info
        out[name] = info.cluster.leader
    for ci in await js.consumers_info(cfg.work_stream):
        assert ci.cluster is not None and ci.cluster.leader, ci
        out[f"{cfg.work_stream}/{ci.name}"] = ci.cluster.leader
    return out


async def move_leaders_off(
    nc: NATS, cfg: EngineConfig, victim: str, to: str, within: float = 15.0
) -> dict[str, str]:
    """Step every engine asset the victim leads down, preferring ``to`` as the new leader."""
    js = nc.jetstream(timeout=5.0)
    deadline = time.monotonic() + within
    body = json.dumps({"placement": {"preferred": to}}).encode()
    while True:
        now = await leaders(js, cfg)
        on_victim = [asset for asset, node in now.items() if node == victim]
        if not on_victim:
            return now
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
