"""The chaos schedule: which process to hit, when, and for how long, all drawn from the seed.

``plan`` turns (seed, phase, duration, shape) into a list of actions, so ``CHAOS_SEED=<n>``
gives the same victims and times again (what the engine does in between still depends on
timing). The first actions cover every kind once (a short phase still kills a worker, a
control plane and nats, and freezes a worker); the rest are drawn by weight, spaced by an
exponential gap. Faults that hold work (worker kills and freezes, nats kills) never overlap:
each is followed by the ack wait and a second of calm (five more on a cluster, for the node to
catch up) before the next, counted when run from the previous fault's real end (a node's
kill ends when the leaders it held are elected again), so the timer bound ``ack_wait + 2 s``
is fair; control-plane kills come at any time. ``unleash`` carries the plan out against a
:class:`Topology`, skipping an action whose victim is already down or that would leave no
worker or control plane up.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import asdict, dataclass
from typing import Any

from tests.chaos.topology import LEADER_KINDS, Shape, Topology

KINDS = ("kill-worker", "kill-control", "freeze-worker", "kill-nats")
#: How often each kind is drawn after the first round: on a cluster, leader kills matter most.
WEIGHTS = {"single": (4, 3, 2, 2), "cluster": (3, 3, 1, 3)}


@dataclass(frozen=True)
class Action:
    at: float  # seconds after the chaos started
    kind: str
    victim: int  # index among the workers or control planes
    down: float  # seconds killed or frozen
    leader_of: str = ""  # a cluster kill: the node leading this (see LEADER_KINDS)

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def plan(seed: int, phase: str, seconds: float, shape: Shape, mean_gap: float) -> list[Action]:
    rng = random.Random(f"chaos-plan:{seed}:{phase}")
    cluster = phase == "cluster"
    first = [k for k in KINDS if not (cluster and k == "kill-nats")]
    rng.shuffle(first)
    if cluster:
        first.append("kill-nats")  # popped first: killing leaders is what this phase is for
    actions: list[Action] = []
    t = rng.uniform(1.0, 2.0)
    data_lane_free = 0.0
    while t < seconds:
        kind = first.pop() if first else rng.choices(KINDS, WEIGHTS[phase])[0]
        count = shape.controls if kind == "kill-control" else shape.workers
        victim = rng.randrange(count)
        if kind == "freeze-worker":
            down = shape.ack_wait + rng.uniform(0.5, 2.0)  # longer than the ack wait
        elif kind == "kill-nats":
            down = rng.uniform(2.0, 5.0) if cluster else rng.uniform(0.2, 1.5)
        else:
            down = rng.uniform(0.2, 1.5)
        leader_of = rng.choice(LEADER_KINDS) if kind == "kill-nats" and cluster else ""
        at = t
        if kind != "kill-control":
            # Faults that hold work (a dead or frozen worker, nats) come one at a time, each
            # followed by an ack wait and a second of calm, so that one wait is delayed by
            # at most one of them; killing control planes holds no work and overlaps them.
            at = max(t, data_lane_free)
            data_lane_free = at + down + shape.ack_wait + 1.0 + (5.0 if cluster else 0.0)
        if at < seconds:
            actions.append(Action(round(at, 3), kind, victim, round(down, 3), leader_of))
        if first:  # the first round at a steady pace, so that a short phase holds all of it
            t += min(mean_gap, seconds * 0.8 / len(KINDS)) * rng.uniform(0.8, 1.2)
        else:
            t += min(max(rng.expovariate(1 / mean_gap), 0.5), 3 * mean_gap)
    return sorted(actions, key=lambda a: a.at)


async def unleash(topo: Topology, actions: list[Action], seed: int, stop: asyncio.Event) -> None:
    """Carry out ``actions`` (times relative to now) until they run out or ``stop`` is set;
    returns once every action started has finished (its victim is back)."""
    pick = random.Random(f"chaos-pick:{seed}:{topo.kind}")
    started = time.monotonic()
    running: list[asyncio.Task[None]] = []
    holding: asyncio.Task[None] | None = None  # the fault that holds work, while it lasts
    for action in actions:
        delay = started + action.at - time.monotonic()
        if action.kind != "kill-control":
            # The plan's spacing assumes each outage ends when its process is back; on a
            # cluster the engine waits on top for the elections the kill caused (seconds).
            # So a fault that holds work also waits for the previous one's real end, then
            # the ack wait and a second of calm: one timer is held up by one fault at most.
            if holding is not None:
                stopping = asyncio.create_task(stop.wait())
                await asyncio.wait([holding, stopping], return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
            delay = max(delay, topo.calm_until - time.monotonic())
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            break
        skipped = _why_skip(topo, action)
        if skipped:
            topo.events.append(
                {"t": topo.now(), "action": "skipped", "kind": action.kind, "why": skipped}
            )
            continue
        if action.kind in ("kill-control", "kill-worker"):
            # Down from now, not from when the task first runs: an action due at once must
            # see it down and be skipped (seed 252168 killed control0 twice, and the second
            # restart found it running).
            procs = topo.controls if action.kind == "kill-control" else topo.workers
            topo.down.add(procs[action.victim].name)
        task = asyncio.create_task(_carry_out(topo, action, pick))
        running.append(task)
        if action.kind != "kill-control":
            holding = task
    await asyncio.gather(*running)


def _why_skip(topo: Topology, action: Action) -> str:
    if action.kind == "kill-nats":
        down = [n.server_name for n in topo.nats_nodes if n.server_name in topo.down]
        return f"nats node {down[0]} is down" if down else ""
    procs = topo.controls if action.kind == "kill-control" else topo.workers
    victim = procs[action.victim]
    if victim.name in topo.down:
        return f"{victim.name} is down"
    if len(topo.up(procs)) <= 1:
        return f"{victim.name} is the last one up"
    return ""


async def _carry_out(topo: Topology, action: Action, pick: random.Random) -> None:
    if action.kind == "kill-nats":
        await topo.kill_nats(action.down, action.leader_of, pick.randrange)
    elif action.kind == "kill-control":
        await topo.kill_engine(topo.controls[action.victim], action.down)
        return
    elif action.kind == "kill-worker":
        await topo.kill_engine(topo.workers[action.victim], action.down)
    else:
        await topo.freeze(topo.workers[action.victim], action.down)
    # Back for real (a killed nats node's elections included): calm from now on.
    topo.calm_until = time.monotonic() + topo.shape.ack_wait + 1.0
