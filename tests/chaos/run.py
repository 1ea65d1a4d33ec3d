"""One chaos run: for each phase (single node, then the 3-node cluster), start the processes,
drive the load while the monkey hits them, stop the chaos, restore every process, drain,
read the evidence, check it, and build the report.

Profiles: ``long`` (``make chaos``: minutes per phase, thousands of invocations) and
``short`` (``tests/test_chaos.py`` in ``make test``: about a minute for both phases).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tests.chaos.diagnose import diagnose
from tests.chaos.evidence import gather
from tests.chaos.load import Driver
from tests.chaos.monkey import plan, unleash
from tests.chaos.report import LATE_SLACK, phase_report
from tests.chaos.topology import Shape, Topology
from tests.chaos.verify import Context, check

PHASES = ("single", "cluster")


@dataclass(frozen=True)
class Profile:
    name: str
    seconds: dict[str, float]  # seconds of chaos per phase
    rate: dict[str, float]  # invocations per second per phase
    shape: Shape
    mean_gap: float  # mean seconds between two actions of the monkey
    drain: float  # seconds the load may take to end after the chaos stopped


PROFILES = {
    "long": Profile(
        "long",
        {"single": 150.0, "cluster": 150.0},
        {"single": 10.0, "cluster": 8.0},
        Shape(controls=3, workers=3, slots=32, ack_wait=3.0),
        mean_gap=4.0,
        drain=90.0,
    ),
    "short": Profile(
        "short",
        {"single": 25.0, "cluster": 15.0},
        {"single": 8.0, "cluster": 6.0},
        Shape(controls=2, workers=2, slots=32, ack_wait=3.0),
        mean_gap=3.0,
        drain=60.0,
    ),
}


def with_overrides(
    profile: Profile, *, seconds: float | None = None, rate: float | None = None
) -> Profile:
    """The profile with every phase's duration or rate replaced."""
    if seconds is not None:
        profile = replace(profile, seconds=dict.fromkeys(PHASES, seconds))
    if rate is not None:
        profile = replace(profile, rate=dict.fromkeys(PHASES, rate))
    return profile


def new_seed() -> int:
    return random.SystemRandom().randrange(1, 10**6)


class Progress:
    """A status line rewritten in place, only when stdout is a terminal."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stdout.isatty() if enabled is None else enabled

    def __call__(self, text: str) -> None:
        if self.enabled:
            sys.stdout.write(f"\r\033[K{text}")
            sys.stdout.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stdout.write("\r\033[K")
            sys.stdout.flush()


async def _ticker(
    phase: str, topo: Topology, driver: Driver, seconds: float, progress: Progress
) -> None:
    started = time.monotonic()
    while True:
        jobs = driver.jobs.values()
        accepted = sum(1 for j in jobs if j.accepted is not None)
        ended = sum(1 for j in jobs if j.status)
        hits = sum(1 for e in topo.events if e["action"] in ("kill", "kill-nats", "freeze"))
        progress(
            f"[chaos {phase}] {time.monotonic() - started:5.0f}/{seconds:g} s  submitted "
            f"{len(driver.jobs)}  accepted {accepted}  ended {ended}  hits {hits}  exits "
            f"{len(topo.exits)}  down {sorted(topo.down)}"
        )
        await asyncio.sleep(1.0)


async def run_phase(
    phase: str, profile: Profile, seed: int, workdir: Path, progress: Progress
) -> dict[str, Any]:
    seconds, rate = profile.seconds[phase], profile.rate[phase]
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    ledger = workdir / "ledger.jsonl"
    topo = Topology(phase, workdir, profile.shape, ledger)
    driver: Driver | None = None
    started = time.monotonic()
    try:
        progress(f"[chaos {phase}] starting nats and the engine processes")
        await topo.start()
        driver = Driver(topo.targets, seed, phase, ledger, topo.t0)
        ready = time.monotonic()
        done = asyncio.Event()
        stop = asyncio.Event()
        background = [
            asyncio.create_task(topo.supervise(done)),
            asyncio.create_task(driver.resolve_awakeables(done)),
            asyncio.create_task(_ticker(phase, topo, driver, seconds, progress)),
            asyncio.create_task(topo.watch_machine_stalls(done)),
        ]
        actions = plan(seed, phase, seconds, profile.shape, profile.mean_gap)
        await asyncio.gather(driver.run(seconds, rate, stop), unleash(topo, actions, seed, stop))
        chaos_over = time.monotonic()
        background[2].cancel()
        progress(f"[chaos {phase}] chaos over: restoring every process")
        await topo.restore()
        await driver.drain(profile.drain, progress)
        drained = time.monotonic()
        progress(f"[chaos {phase}] reading the journal, the ledger and every invocation")
        evidence = await gather(driver, topo.config, ledger, within=120.0)
        done.set()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        killed = {pid for p in [*topo.workers, *topo.controls] for pid in p.killed_pids}
        frozen = {int(e["pid"]) for e in topo.events if e["action"] == "freeze"}
        findings = check(
            driver,
            evidence,
            Context(
                killed, frozen, topo.outages_ns, profile.shape.ack_wait + LATE_SLACK, topo.events
            ),
        )
        try:
            diagnosis = await diagnose(
                topo.config, [*findings.stuck, *findings.lost], topo.workdir / "logs"
            )
        except Exception as exc:  # a finding needs no diagnosis to count
            diagnosis = [{"error": repr(exc)}]
        return phase_report(
            phase,
            topo,
            findings,
            seconds=seconds,
            rate=rate,
            plan=[a.to_json() for a in actions],
            answers=dict(sorted(driver.answers.items())),
            unexpected=driver.unexpected,
            submitted=len(driver.jobs),
            retried_for=driver.retried_for,
            timing={
                "start": ready - started,
                "chaos": chaos_over - ready,
                "drain": drained - chaos_over,
                "evidence": evidence.seconds,
                "total": time.monotonic() - started,
            },
            stored_read=evidence.stored_read,
            evidence_errors=evidence.errors,
            diagnosis=diagnosis,
        )
    finally:
        progress.done()
        if driver is not None:
            await driver.close()
        with contextlib.suppress(Exception):
            await topo.close()


async def run_chaos(
    profile: Profile,
    seed: int,
    workdir: Path,
    *,
    phases: tuple[str, ...] = PHASES,
    progress: Progress | None = None,
    reproduce: Callable[[int], str] = lambda s: f"make chaos CHAOS_SEED={s}",
) -> dict[str, Any]:
    progress = progress or Progress()
    reports = []
    for phase in phases:
        try:
            reports.append(await run_phase(phase, profile, seed, workdir / phase, progress))
        except Exception:  # the harness broke: say so in the report, run the next phase
            reports.append(_broken_phase(phase, workdir / phase, traceback.format_exc()))
    passed = all(a["ok"] for r in reports for a in r["assertions"])
    return {
        "seed": seed,
        "profile": profile.name,
        "passed": passed,
        "reproduce": reproduce(seed),
        "phases": reports,
    }


def _broken_phase(phase: str, workdir: Path, error: str) -> dict[str, Any]:
    return {
        "phase": phase,
        "error": error,
        "logs": str(workdir),
        "assertions": [{"name": "the phase ran to its end", "ok": False, "violations": 1}],
    }
