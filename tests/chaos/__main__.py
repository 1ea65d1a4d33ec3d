"""``python -m tests.chaos`` (``make chaos``): the long chaos run; prints a summary and the
path of the JSON report, exits 1 when an assertion failed."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from tests.chaos.report import summary
from tests.chaos.run import PHASES, PROFILES, new_seed, run_chaos, with_overrides


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    p.add_argument("--profile", choices=sorted(PROFILES), default="long")
    p.add_argument("--seconds", type=float, default=None, help="seconds of chaos per phase")
    p.add_argument("--rate", type=float, default=None, help="invocations per second")
    p.add_argument("--seed", type=int, default=None, help="default: a fresh one, printed")
    p.add_argument("--phases", default=",".join(PHASES), help="single,cluster (or one)")
    p.add_argument("--report", type=Path, default=None, help="JSON report path")
    p.add_argument("--workdir", type=Path, default=None, help="logs, stores and ledgers")
    args = p.parse_args(argv)

    seed = args.seed if args.seed is not None else new_seed()
    phases = tuple(x.strip() for x in args.phases.split(",") if x.strip())
    unknown = set(phases) - set(PHASES)
    if unknown:
        p.error(f"unknown phases {sorted(unknown)}; choose from {PHASES}")
    profile = with_overrides(PROFILES[args.profile], seconds=args.seconds, rate=args.rate)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = (args.workdir or Path("build/chaos") / f"{stamp}-seed{seed}").resolve()
    report_path = (args.report or workdir / "report.json").resolve()
    print(
        f"chaos: seed {seed} (CHAOS_SEED={seed} reproduces the victims and times), profile "
        f"{profile.name}, phases {','.join(phases)}, "
        f"{', '.join(f'{ph} {profile.seconds[ph]:g} s at {profile.rate[ph]:g}/s' for ph in phases)}"
        f"; logs under {workdir}",
        flush=True,
    )

    def reproduce(s: int) -> str:
        extra = "".join(
            f" {k}={v:g}" if isinstance(v, float) else f" {k}={v}"
            for k, v in (
                ("CHAOS_SECONDS", args.seconds),
                ("CHAOS_RATE", args.rate),
                ("CHAOS_PHASES", args.phases if phases != PHASES else None),
            )
            if v is not None
        )
        return f"make chaos CHAOS_SEED={s}{extra}"

    report = asyncio.run(run_chaos(profile, seed, workdir, phases=phases, reproduce=reproduce))
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(summary(report))
    print(f"report: {report_path}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
