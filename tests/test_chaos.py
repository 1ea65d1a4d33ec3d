"""The short chaos profile, in ``make test``: a few hundred idempotent invocations (five-step
chains, durable timers, awakeables, a virtual object) through two control planes and two
workers while a seeded monkey SIGKILLs workers, control planes and nats-server and freezes a
worker past the ack wait; first on one nats-server, then on a 3-node R3 cluster whose leaders
it kills. See ``tests/chaos/`` and docs/development.md's "Chaos run" for what is checked and how.

The seed is printed (and written to the report); ``CHAOS_SEED=<n>`` makes this test (and
``make chaos``) choose the same victims at the same times again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.chaos.report import summary
from tests.chaos.run import PROFILES, run_chaos

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


async def test_chaos_short_profile(tmp_path: Path) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or int.from_bytes(os.urandom(4)) % 10**6)
    print(f"\n[chaos] CHAOS_SEED={seed} (set it to choose the same victims and times again)")
    report = await run_chaos(
        PROFILES["short"],
        seed,
        tmp_path,
        reproduce=lambda s: (
            f"CHAOS_SEED={s} .venv/bin/pytest -q tests/test_chaos.py (or make chaos "
            f"CHAOS_SEED={s} for the long run)"
        ),
    )
    (tmp_path / "report.json").write_text(json.dumps(report, indent=2, default=str))
    text = summary(report)
    print(text)
    failed = [
        f"{p['phase']}: {a['name']} ({a['violations']})"
        for p in report["phases"]
        for a in p["assertions"]
        if not a["ok"]
    ]
    # The summary is in the captured output above; the message says what failed and where.
    assert not failed, f"chaos failed {failed}; seed {seed}; report {tmp_path / 'report.json'}"
