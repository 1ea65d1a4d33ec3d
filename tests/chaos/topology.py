"""The processes of one chaos phase, and what the chaos does to them.

A phase runs nats-server (one node on its own store, or a 3-node JetStream cluster with R3
streams), several ``durable server`` control planes and several ``durable worker``
processes, all real subprocesses with their own logs (``tests/procs.py``). The supervisor
restarts any engine process that exits without being killed by us and records the exit: a
process that dies on its own is a finding, not a reason to stop the run.

Victims: ``kill_engine`` (SIGKILL, restart after ``down`` s), ``freeze`` (SIGSTOP for ``down``
s, then SIGCONT), ``kill_nats`` (one node: SIGKILL and restart on the same store; a
cluster: SIGKILL the node leading the meta group or one of the engine's streams, restart it
on its store, and wait until it has caught up). Every action lands in ``events``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS

from durable import Client, RPCError
from durable._store.config import EngineConfig
from durable_server.natsd import EmbeddedNats, NatsServerError
from tests.nats_cluster import Cluster, engine_streams, running_cluster
from tests.procs import FAST_RECONNECT, EngineProc, ProcGroup, free_port, wait_healthy

HANDLERS = ("chaos/chain", "chaos/nap", "chaos/approve", "chaosobj/add")
#: What a cluster kill aims at: the node leading the meta group or one of these assets.
LEADER_KINDS = ("meta", "journal", "work", "records")


def _wall() -> str:
    """The wall clock to the millisecond, as the logs and the report's timestamps show it."""
    now = time.time()
    return time.strftime("%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


@dataclass
class Shape:
    """How many of each process a phase runs, and their settings."""

    controls: int
    workers: int
    slots: int
    ack_wait: float


#: How often the machine-stall watch samples the clocks, and the least wall-clock time a
#: sample may gain over monotonic time before it counts as a stall.
STALL_SAMPLE = 0.1
STALL_MIN_NS = 250_000_000


@dataclass
class Topology:
    kind: str  # "single" or "cluster"
    workdir: Path
    shape: Shape
    ledger: Path
    prefix: str = "chaos"
    t0: float = field(default_factory=time.monotonic)
    natsd: EmbeddedNats | None = None
    cluster: Cluster | None = None
    group: ProcGroup | None = None
    controls: list[EngineProc] = field(default_factory=list)
    workers: list[EngineProc] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    #: Names of processes (and nats nodes) that an action holds down or frozen right now.
    down: set[str] = field(default_factory=set)
    events: list[dict[str, Any]] = field(default_factory=list)
    exits: list[dict[str, Any]] = field(default_factory=list)
    #: (start, end) wall-clock ns in which JetStream could not serve the engine: a single
    #: node's outage, or on a cluster, from a node's kill until every engine stream (and the
    #: work consumer) it led had a new leader. Timer lateness does not count them: electing
    #: a leader is NATS's time (4 to 9 s seen), not the engine's.
    outages_ns: list[tuple[int, int]] = field(default_factory=list)
    #: ``time.monotonic()`` before which no fault that holds work may start (see monkey).
    calm_until: float = 0.0
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    # -- start and stop ----------------------------------------------------------------------

    @property
    def config(self) -> EngineConfig:
        return EngineConfig(nats_url=self.nats_url, prefix=self.prefix, replicas=self.replicas)

    @property
    def replicas(self) -> int:
        return 3 if self.kind == "cluster" else 1

    @property
    def nats_url(self) -> str:
        if self.cluster is not None:
            return self.cluster.url
        assert self.natsd is not None
        return self.natsd.url

    @property
    def nats_nodes(self) -> list[EmbeddedNats]:
        if self.cluster is not None:
            return list(self.cluster.nodes)
        return [self.natsd] if self.natsd is not None else []

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    async def start(self) -> None:
        if self.kind == "cluster":
            self.cluster = await self._stack.enter_async_context(
                running_cluster(self.workdir / "cluster")
            )
        else:
            self.natsd = EmbeddedNats(self.workdir / "nats", server_name="chaos-single")
            await self.natsd.astart()
            self._stack.callback(self.natsd.kill)
        group = ProcGroup(
            self.workdir / "logs",
            self.nats_url,
            self.prefix,
            ack_wait=self.shape.ack_wait,
            ledger=self.ledger,
            module="tests.chaos.handlers",
            replicas=self.replicas,
        )
        self.group = group
        self._stack.callback(self._stop_engine)
        for i in range(self.shape.controls):
            port = free_port()
            self.controls.append(group.server(port, name=f"control{i}"))
            self.targets.append(f"127.0.0.1:{port}")
        # The first control plane creates the streams; the others find them.
        self.controls[0].start()
        await wait_healthy(self.targets[0], within=60, proc=self.controls[0])
        for proc, target in zip(self.controls[1:], self.targets[1:], strict=True):
            proc.start()
            await wait_healthy(target, within=60, proc=proc)
        for i in range(self.shape.workers):
            self.workers.append(group.worker(f"worker{i}", slots=self.shape.slots).start())
        await self._wait_for_handlers()

    async def _wait_for_handlers(self, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        for target in self.targets:
            async with Client(target, options=FAST_RECONNECT) as client:
                while True:
                    try:
                        live = {h.name: h.live_workers for h in await client.handlers()}
                    except RPCError:
                        live = {}
                    if all(live.get(h, 0) >= self.shape.workers for h in HANDLERS):
                        break
                    if time.monotonic() > deadline:
                        raise AssertionError(
                            f"{target}: handlers not served by all workers: {live}"
                        )
                    await asyncio.sleep(0.1)

    async def close(self) -> None:
        await self._stack.aclose()

    def _stop_engine(self) -> None:
        for proc in [*self.workers, *self.controls]:
            proc.stop(timeout=5)

    # -- the supervisor ----------------------------------------------------------------------

    async def supervise(self, stop: asyncio.Event) -> None:
        """Restart every engine process or nats node that exited while nobody held it down."""
        while not stop.is_set():
            await self.restart_exited()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)

    async def restart_exited(self) -> None:
        for proc in [*self.controls, *self.workers]:
            if proc.name in self.down or proc.running:
                continue
            self.exits.append(
                {
                    "t": self.now(),
                    "wall": _wall(),
                    "process": proc.name,
                    "pid": proc.pid,
                    "rc": proc.returncode,
                    "log": proc.log_path.name,
                    "tail": proc.tail(12),
                }
            )
            proc.start()
        for node in self.nats_nodes:
            if node.server_name in self.down or node.running:
                continue
            self.exits.append(
                {
                    "t": self.now(),
                    "wall": _wall(),
                    "process": node.server_name,
                    "pid": node.pid,
                    "rc": None,
                    "log": str(node.log_path),
                    "tail": node.log_tail(12),
                }
            )
            await self._start_node(node)

    # -- actions -----------------------------------------------------------------------------

    def _event(self, action: str, victim: str, **details: Any) -> None:
        self.events.append(
            {
                "t": self.now(),
                "wall": _wall(),
                "wall_ns": time.time_ns(),
                "action": action,
                "victim": victim,
                **details,
            }
        )

    def up(self, procs: list[EngineProc]) -> list[EngineProc]:
        return [p for p in procs if p.name not in self.down]

    async def kill_engine(self, proc: EngineProc, down: float) -> None:
        self.down.add(proc.name)
        try:
            pid = proc.kill()
            self._event("kill", proc.name, pid=pid, down=down)
            await asyncio.sleep(down)
            proc.start()
        finally:
            self.down.discard(proc.name)

    async def watch_machine_stalls(self, done: asyncio.Event) -> None:
        """Record the moments the whole machine stood still as outages.

        A shared host can pause this machine (a VM or sandbox suspended for seconds): wall
        time moves on while monotonic time does not, and nothing runs, neither the engine
        nor nats-server nor this monkey. Timers that fell due then are late by the pause,
        which is no process's doing; like an election, the pause is not counted as lateness
        (seen: a 6.3 s pause, every step start of both workers 6.3 s apart, seed 13079).
        """
        wall, mono = time.time_ns(), time.monotonic_ns()
        while not done.is_set():
            await asyncio.sleep(STALL_SAMPLE)
            now_wall, now_mono = time.time_ns(), time.monotonic_ns()
            stalled = (now_wall - wall) - (now_mono - mono)
            if stalled > STALL_MIN_NS:
                self.outages_ns.append((wall, now_wall))
                self._event("machine-stall", "host", stalled_s=round(stalled / 1e9, 3))
            wall, mono = now_wall, now_mono

    async def freeze(self, proc: EngineProc, down: float) -> None:
        self.down.add(proc.name)
        try:
            proc.freeze()
            self._event("freeze", proc.name, pid=proc.pid, down=down)
            await asyncio.sleep(down)
            proc.thaw()
            self._event("thaw", proc.name, pid=proc.pid)
        finally:
            self.down.discard(proc.name)

    async def _start_node(self, node: EmbeddedNats) -> None:
        for attempt in range(5):
            try:
                await node.astart()
                return
            except NatsServerError as err:  # e.g. still releasing its store lock
                if attempt == 4:
                    raise
                self._event("nats-restart-failed", node.server_name, error=str(err)[:300])
                await asyncio.sleep(1.0)

    async def kill_nats(self, down: float, leader_of: str, pick: Callable[[int], int]) -> None:
        if self.cluster is None:
            assert self.natsd is not None
            node, note = self.natsd, "single node"
        else:
            node, note = await self._leader_node(leader_of, pick)
        self.down.add(node.server_name)
        try:
            pid = node.pid
            led = await self._assets_led_by(node.server_name) if self.cluster else []
            killed_ns = time.time_ns()
            node.kill()
            self._event("kill-nats", node.server_name, pid=pid, down=down, leads=note)
            elected = asyncio.create_task(self._elected(led, node.server_name))
            await asyncio.sleep(down)
            await self._start_node(node)
            self._event("nats-up", node.server_name, pid=node.pid)
            if self.cluster is None:
                elected.cancel()
                self.outages_ns.append((killed_ns, time.time_ns()))
            else:
                if led:
                    elected_ns = await elected
                    self.outages_ns.append((killed_ns, elected_ns))
                    self._event(
                        "leaders-elected",
                        node.server_name,
                        assets=led,
                        after_s=round((elected_ns - killed_ns) / 1e9, 3),
                    )
                caught_up = await self._caught_up(node.server_name)
                self._event("nats-caught-up", node.server_name, ok=caught_up)
        finally:
            self.down.discard(node.server_name)

    def _assets(self) -> list[tuple[str, str]]:
        """(stream, consumer or "") of everything the engine reads and writes."""
        cfg = self.config
        streams = [
            *engine_streams(cfg),
            cfg.inbox_stream,
            f"KV_{cfg.locks_bucket}",
            f"KV_{cfg.state_bucket}",
        ]
        return [(s, "") for s in streams] + [(cfg.work_stream, cfg.run_consumer("chaos"))]

    async def _leader(self, js: Any, stream: str, consumer: str) -> str | None:
        info = await (js.consumer_info(stream, consumer) if consumer else js.stream_info(stream))
        return info.cluster.leader if info.cluster else None

    async def _assets_led_by(self, node: str) -> list[str]:
        """The engine's streams and consumer ``node`` leads now ("stream" or
        "stream/consumer")."""
        led: list[str] = []
        with contextlib.suppress(Exception):
            nc = await asyncio.wait_for(self._connect(), 5)
            try:
                js = nc.jetstream(timeout=3.0)
                for stream, consumer in self._assets():
                    with contextlib.suppress(Exception):
                        if await self._leader(js, stream, consumer) == node:
                            led.append(f"{stream}/{consumer}" if consumer else stream)
            finally:
                await nc.close()
        return led

    async def _elected(self, led: list[str], dead: str, within: float = 30.0) -> int:
        """Wall-clock ns when every asset in ``led`` (led by ``dead`` until its kill) has a
        leader again."""
        deadline = time.monotonic() + within
        waiting = list(led)
        with contextlib.suppress(Exception):
            nc = await asyncio.wait_for(self._connect(), 10)
            try:
                js = nc.jetstream(timeout=0.5)
                while waiting and time.monotonic() < deadline:
                    for asset in list(waiting):
                        stream, _, consumer = asset.partition("/")
                        with contextlib.suppress(Exception):
                            # Only a leader answers: any answer means one was elected (the
                            # restarted node itself, possibly).
                            if await self._leader(js, stream, consumer):
                                waiting.remove(asset)
                    if waiting:
                        await asyncio.sleep(0.1)
            finally:
                await nc.close()
        return time.time_ns()

    async def _connect(self) -> NATS:
        return await nats.connect(
            self.config.servers,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            allow_reconnect=True,
        )

    async def _leader_node(
        self, leader_of: str, pick: Callable[[int], int]
    ) -> tuple[EmbeddedNats, str]:
        """The node leading ``leader_of``; a node ``pick`` chooses when that is not known."""
        assert self.cluster is not None
        cfg = self.config
        name: str | None = None
        try:
            if leader_of == "meta":
                name = self.cluster.meta_leader()
            else:
                nc = await asyncio.wait_for(self._connect(), 5)
                try:
                    js = nc.jetstream(timeout=3.0)
                    if leader_of == "work":
                        info = await js.consumer_info(cfg.work_stream, cfg.run_consumer("chaos"))
                    else:
                        stream = (
                            cfg.journal_stream
                            if leader_of == "journal"
                            else (f"KV_{cfg.invocations_bucket}")
                        )
                        info = await js.stream_info(stream)
                    name = info.cluster.leader if info.cluster else None
                finally:
                    await nc.close()
        except Exception:  # no leader right now, or the query timed out
            name = None
        nodes = self.cluster.nodes
        if name is None or all(n.server_name != name for n in nodes):
            return nodes[pick(len(nodes))], f"{leader_of} leader unknown: a random node"
        return self.cluster.node(name), f"{leader_of} leader"

    async def _caught_up(self, node: str, within: float = 30.0) -> bool:
        """Until every engine stream lists ``node`` as a current replica (or leader)."""
        deadline = time.monotonic() + within
        cfg = self.config
        with contextlib.suppress(Exception):
            nc = await asyncio.wait_for(self._connect(), 10)
            try:
                js = nc.jetstream(timeout=3.0)
                while time.monotonic() < deadline:
                    behind = []
                    for stream in engine_streams(cfg):
                        try:
                            info = await js.stream_info(stream)
                        except Exception:
                            behind.append(stream)
                            continue
                        cl = info.cluster
                        current = {cl.leader} if cl and cl.leader else set()
                        current |= (
                            {r.name for r in (cl.replicas or []) if r.current} if cl else set()
                        )
                        if node not in current:
                            behind.append(stream)
                    if not behind:
                        return True
                    await asyncio.sleep(0.5)
            finally:
                await nc.close()
        return False

    async def restore(self) -> None:
        """Everything running again (the chaos has stopped): thaw, restart, and wait until
        every control plane answers health checks."""
        for proc in [*self.controls, *self.workers]:
            if proc.running:
                with contextlib.suppress(ProcessLookupError):
                    proc.thaw()
        for _ in range(5):
            await self.restart_exited()
            try:
                for proc, target in zip(self.controls, self.targets, strict=True):
                    await wait_healthy(target, within=60, proc=proc)
                return
            except AssertionError:  # one exited while starting: restart it (counted) and wait
                continue
        raise AssertionError("control planes keep exiting after the chaos stopped")
