"""The chaos report: one JSON document (every figure, the seed, the plan and what happened,
samples of every finding) and a human summary, plus the assertions that decide the run.

Assertions, per phase: 0 lost, 0 stuck, 0 duplicated, 0 re-run journaled steps, 0
consistency violations, and no timer later than ``ack_wait + 2 s``. Everything else (process
exits nobody caused, unexpected gRPC answers, keys never accepted, in-flight duplicates,
awakeable latency) is reported for a person to judge.
"""

from __future__ import annotations

import collections
from typing import Any

from tests.chaos.topology import Topology
from tests.chaos.verify import SAMPLES, Findings

LATE_SLACK = 2.0  # seconds a timer may be late beyond the ack wait


_COUNTED = ("kill", "freeze", "kill-nats", "skipped")


#: gRPC codes that only a server bug answers.
_BUGS = frozenset({"INTERNAL", "UNKNOWN"})


def _label(event: dict[str, Any]) -> str:
    """ "kill worker", "kill control", "freeze worker", "kill-nats", "skipped kill-nats"..."""
    if event["action"] == "skipped":
        return f"skipped {event['kind']}"
    if event["action"] == "kill-nats":
        return "kill-nats"
    return f"{event['action']} {str(event['victim']).rstrip('0123456789')}"


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def _lateness(values: list[float]) -> dict[str, Any]:
    return {
        "count": len(values),
        "max_s": round(max(values), 3) if values else 0.0,
        "p99_s": _quantile(values, 0.99),
        "p50_s": _quantile(values, 0.50),
    }


def phase_report(
    phase: str,
    topo: Topology,
    f: Findings,
    *,
    seconds: float,
    rate: float,
    plan: list[dict[str, Any]],
    answers: dict[str, int],
    unexpected: list[dict[str, Any]],
    submitted: int,
    retried_for: dict[str, list[float]],
    timing: dict[str, float],
    stored_read: str,
    evidence_errors: list[str],
    diagnosis: list[dict[str, Any]],
) -> dict[str, Any]:
    bound = topo.shape.ack_wait + LATE_SLACK
    kinds = collections.Counter(_label(e) for e in topo.events if e["action"] in _COUNTED)
    timers = {**_lateness(f.timer_lateness), "bound_s": bound, "late": f.late_timers[:SAMPLES]}
    checks = [
        ("0 lost", len(f.lost)),
        ("0 stuck", len(f.stuck)),
        ("0 duplicated", len(f.duplicated)),
        ("0 re-run journaled steps", len(f.rerun_journaled)),
        ("0 consistency violations", len(f.consistency)),
        (f"timers late by at most {bound:g} s", len(f.late_timers)),
        # A server bug, whatever the chaos: every failure must be a status a client acts on.
        ("0 INTERNAL or UNKNOWN answers", sum(u["code"] in _BUGS for u in unexpected)),
    ]
    return {
        "phase": phase,
        "config": {
            "seconds": seconds,
            "rate": rate,
            "control_planes": topo.shape.controls,
            "workers": topo.shape.workers,
            "slots": topo.shape.slots,
            "ack_wait": topo.shape.ack_wait,
            "nats": "3-node cluster, R3" if phase == "cluster" else "single node",
        },
        "invocations": {
            "submitted": submitted,
            "accepted": f.accepted,
            "completed": f.completed,
            "lost": len(f.lost),
            "stuck": len(f.stuck),
            "duplicated": len(f.duplicated),
            "never_accepted": len(f.refused),
            "by_handler": dict(f.by_handler),
        },
        "steps": {
            "runs": f.step_runs,
            "rerun_journaled": len(f.rerun_journaled),
            "finished_after_journaled": len(f.finished_after_journaled),
            "in_flight_duplicates": dict(f.in_flight),
            "journal_times_from": stored_read,
        },
        "timers": timers,
        "awakeables": {
            **_lateness(f.awakeable_latency),
            "slower_than_bound": f.slow_awakeables[:SAMPLES],
        },
        "processes": {
            "actions": dict(kinds),
            "unexpected_exits": len(topo.exits),
            "exits": topo.exits[:SAMPLES],
        },
        "clients": {
            "answers": answers,
            "failed_over": {
                what: {
                    "calls": len(spans),
                    "max_s": round(max(spans), 3),
                    "p99_s": _quantile(spans, 0.99),
                }
                for what, spans in sorted(retried_for.items())
            },
            "unexpected_answers": unexpected[:SAMPLES],
        },
        "consistency": f.consistency[:SAMPLES],
        "details": {
            "lost": f.lost[:SAMPLES],
            "stuck": f.stuck[:SAMPLES],
            "duplicated": f.duplicated[:SAMPLES],
            "rerun_journaled": f.rerun_journaled[:SAMPLES],
            "finished_after_journaled": f.finished_after_journaled[:SAMPLES],
            "never_accepted": f.refused[:SAMPLES],
            "evidence_errors": evidence_errors,
            "stuck_or_lost_diagnosis": diagnosis,
        },
        "plan": plan,
        "events": topo.events,
        "assertions": [{"name": n, "ok": bad == 0, "violations": bad} for n, bad in checks],
        "timing_s": {k: round(v, 1) for k, v in timing.items()},
        "logs": str(topo.workdir),
    }


def summary(report: dict[str, Any]) -> str:
    """A few lines per phase, then the verdict and how to reproduce it."""
    lines = []
    for p in report["phases"]:
        if "error" in p:
            lines.append(f"[chaos {p['phase']}] BROKE (logs {p['logs']}):\n{p['error']}")
            continue
        inv, steps, procs, cl = p["invocations"], p["steps"], p["processes"], p["clients"]
        t, a = p["timers"], p["awakeables"]
        failures = {k: v for k, v in cl["answers"].items() if not k.endswith(" OK")}
        lines += [
            f"[chaos {p['phase']}] {p['config']['seconds']:g} s of chaos on {p['config']['nats']}"
            f", {p['config']['control_planes']} control planes, {p['config']['workers']} workers"
            f" (ack wait {p['config']['ack_wait']:g} s); took {p['timing_s']}",
            f"  invocations: {inv['accepted']} accepted of {inv['submitted']} submitted "
            f"{inv['by_handler']}, {inv['completed']} completed, lost {inv['lost']}, stuck "
            f"{inv['stuck']}, duplicated {inv['duplicated']}, never accepted "
            f"{inv['never_accepted']}",
            f"  chaos: {procs['actions']}; process exits nobody caused: "
            f"{procs['unexpected_exits']}"
            + "".join(
                f"\n    {e['process']} pid {e['pid']} rc {e['rc']} at {e['t']} s"
                for e in procs["exits"][:5]
            ),
            f"  clients: failed answers {failures}; failed over (calls, longest retry) "
            f"{ {k: (v['calls'], v['max_s']) for k, v in cl['failed_over'].items()} }; "
            f"unexpected answers {len(cl['unexpected_answers'])}",
            f"  steps: {steps['runs']} runs; re-run after journaled {steps['rerun_journaled']}; "
            f"in flight: finished after journaled {steps['finished_after_journaled']}, ended "
            f"before {steps['in_flight_duplicates']}",
            f"  timers: {t['count']}, late max {t['max_s']} s, p99 {t['p99_s']} s (bound "
            f"{t['bound_s']:g} s); awakeables: {a['count']}, woken max {a['max_s']} s, p99 "
            f"{a['p99_s']} s",
        ]
        for c in p["consistency"][:5]:
            lines.append(f"  consistency: {c}")
        verdicts = [
            f"{'ok' if x['ok'] else 'FAIL'} {x['name']}"
            + ("" if x["ok"] else f" ({x['violations']})")
            for x in p["assertions"]
        ]
        lines.append("  " + " | ".join(verdicts))
    lines.append(
        f"chaos {'PASSED' if report['passed'] else 'FAILED'}; seed {report['seed']} "
        f"(reproduce: {report['reproduce']})"
    )
    return "\n".join(lines)
