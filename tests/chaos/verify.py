"""The checks of a chaos phase: from the driver's answers, the topology's record of what was
killed, and the evidence read at the end, the figures of the report.

* **lost**: accepted (an Invoke answered OK) but unknown to the engine, or ended other than
  COMPLETED. **stuck**: accepted and still not ended after the drain deadline.
* **duplicated**: one idempotency key answered with two invocation ids, an invocation the
  clients were never told about whose input carries an accepted key, or two different
  outputs (completions) observed for one invocation.
* **re-run journaled steps**: a run of a step body that *started* after JetStream stored the
  step's entry: the driver should have replayed it. A run that started before and wrote its
  side effect after (a worker frozen inside the body, thawed after another journaled it) is
  in flight, told apart as ``finished_after_journaled``; runs that ended before the entry was
  stored are in flight too, and are counted by what happened to their process (killed,
  frozen, neither).
* **consistency**: every journaled value was produced by a run, every run was handed the
  journaled value of the step before, outputs match the journal, each object key's counter
  equals its completed ``add`` invocations and their outputs are 1..n, and the journaled
  ``work`` runs of one key never overlap (exclusive handlers).
* **timers**: lateness = the first start of the step after the timer minus its due time (from
  the journal), counted from the end of a single-node nats outage when the timer fell due
  during one. Awakeables: the first start of the step after it minus the resolve's answer.
"""

from __future__ import annotations

import collections
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from durable._codec import from_payload
from durable.v1 import types_pb2
from tests.chaos.evidence import Entry, Evidence, Run
from tests.chaos.load import Driver

S = types_pb2
TERMINAL = {
    S.INVOCATION_STATUS_COMPLETED,
    S.INVOCATION_STATUS_FAILED,
    S.INVOCATION_STATUS_CANCELLED,
}
SAMPLES = 20  # details kept per list in the report


@dataclass
class Findings:
    accepted: int = 0
    refused: list[dict[str, Any]] = field(default_factory=list)
    completed: int = 0
    lost: list[dict[str, Any]] = field(default_factory=list)
    stuck: list[dict[str, Any]] = field(default_factory=list)
    duplicated: list[dict[str, Any]] = field(default_factory=list)
    rerun_journaled: list[dict[str, Any]] = field(default_factory=list)
    finished_after_journaled: list[dict[str, Any]] = field(default_factory=list)
    in_flight: collections.Counter[str] = field(default_factory=collections.Counter)
    consistency: list[str] = field(default_factory=list)
    timer_lateness: list[float] = field(default_factory=list)
    late_timers: list[dict[str, Any]] = field(default_factory=list)
    awakeable_latency: list[float] = field(default_factory=list)
    slow_awakeables: list[dict[str, Any]] = field(default_factory=list)
    step_runs: int = 0
    by_handler: collections.Counter[str] = field(default_factory=collections.Counter)


@dataclass(frozen=True)
class Context:
    killed: set[int]
    frozen: set[int]
    outages_ns: list[tuple[int, int]]
    late_bound: float
    events: list[dict[str, Any]] = field(default_factory=list)

    def during(self, start_ns: int, end_ns: int) -> list[str]:
        """The chaos actions from ack_wait before ``start_ns`` to ``end_ns``: what may have
        made a wait late."""
        since = start_ns - int(self.late_bound * 1e9)
        return [
            f"{e['wall']} {e['action']} {e['victim']}"
            for e in self.events
            if "wall_ns" in e and since <= e["wall_ns"] <= end_ns
        ]

    def down_ns(self, start_ns: int, end_ns: int) -> int:
        """How long JetStream could not serve the engine between ``start_ns`` and ``end_ns``:
        a single node down, or a cluster electing leaders for what a killed node led."""
        return sum(
            max(0, min(end, end_ns) - max(start, start_ns)) for start, end in self.outages_ns
        )


def check(driver: Driver, ev: Evidence, ctx: Context) -> Findings:
    f = Findings(step_runs=sum(len(r) for r in ev.runs.values()))
    ids_of_key: dict[str, set[str]] = {}
    for job in driver.jobs.values():
        if job.accepted is None:
            f.refused.append({"key": job.key, "handler": job.handler, "error": job.last_error})
            continue
        f.accepted += 1
        f.by_handler[job.handler] += 1
        ids_of_key[job.key] = set(job.ids)
        if len(job.ids) > 1:
            f.duplicated.append(
                {"key": job.key, "why": "two invocation ids", "ids": sorted(job.ids)}
            )
        inv = job.invocation_id
        view = ev.views.get(inv)
        if view is None:
            why = "NOT_FOUND" if inv in ev.missing else ev.unreadable.get(inv, "no view")
            f.lost.append({"id": inv, "key": job.key, "handler": job.handler, "why": why})
            continue
        status = view.invocation.status
        if status not in TERMINAL:
            stuck = _stuck(inv, job.handler, view)
            resolved = {
                awk: a.answer or "not answered"
                for awk, a in driver.awakeables.items()
                if a.invocation_id == inv
            }
            if resolved:
                stuck["driver_resolved"] = resolved
            f.stuck.append(stuck)
            continue
        if status != S.INVOCATION_STATUS_COMPLETED:
            f.lost.append(
                {
                    "id": inv,
                    "key": job.key,
                    "handler": job.handler,
                    "why": S.InvocationStatus.Name(status),
                    "reason": view.invocation.status_reason,
                }
            )
            continue
        f.completed += 1
        entries = ev.journals.get(inv, [])
        _check_output(f, job.key, inv, view, entries, job.outputs)
        _check_steps(f, job.handler, inv, entries, ev.runs, ctx)
        if job.handler == "chaos/nap":
            _check_timer(f, inv, entries, ev.runs, ctx)
        if job.handler == "chaos/approve":
            _check_awakeable(f, inv, ev.runs, driver, ctx)
    _check_strays(f, driver, ev, ids_of_key)
    _check_objects(f, driver, ev)
    return f


def _stuck(inv: str, handler: str, view: Any) -> dict[str, Any]:
    i = view.invocation
    return {
        "id": inv,
        "handler": handler,
        "key": i.key,
        "status": S.InvocationStatus.Name(i.status),
        "attempt": i.attempt,
        "journal_length": len(view.journal),
        "waiting_for": [str(w).replace("\n", " ").strip() for w in i.waiting_for],
        "updated_at": i.updated_at.ToJsonString(),
        "reason": i.status_reason,
    }


def _canon(output: Any) -> str:
    return json.dumps(output, sort_keys=True)


def _check_output(
    f: Findings, key: str, inv: str, view: Any, entries: list[Entry], seen: list[Any]
) -> None:
    final = from_payload(view.invocation.result.value)
    outputs = {_canon(o) for o in seen} | {_canon(final)}
    if len(outputs) > 1:
        f.duplicated.append(
            {"key": key, "id": inv, "why": "two outputs", "outputs": sorted(outputs)}
        )
    runs = [e for e in entries if e.kind == S.STEP_KIND_RUN]
    if (
        not isinstance(final, dict)
        or final.get("key") != key
        or not runs
        or (final.get("value") != runs[-1].value)
    ):
        f.consistency.append(
            f"{inv}: output {final} is not key {key} with the last journaled value"
        )


def _cause(pid: int, ctx: Context) -> str:
    if pid in ctx.killed:
        return "killed"
    return "frozen" if pid in ctx.frozen else "neither killed nor frozen"


def _check_steps(
    f: Findings,
    handler: str,
    inv: str,
    entries: list[Entry],
    runs: dict[tuple[str, str], list[Run]],
    ctx: Context,
) -> None:
    prev = 0
    for entry in (e for e in entries if e.kind == S.STEP_KIND_RUN):
        mine = runs.get((inv, entry.name), [])
        journaled = next((r for r in mine if r.value == entry.value), None)
        if journaled is None:
            f.consistency.append(f"{inv} {entry.name}: journaled {entry.value}, no run made it")
        if handler != "chaosobj/add":
            wrong = [r for r in mine if r.prev != prev]
            if wrong:
                f.consistency.append(
                    f"{inv} {entry.name}: runs not handed the journaled {prev}: {wrong[:3]}"
                )
        at = entry.journaled_ns
        for run in mine:
            if run is journaled:
                continue
            detail = {
                "id": inv,
                "handler": handler,
                "step": entry.name,
                "pid": run.pid,
                "process": _cause(run.pid, ctx),
                "run_attempt": run.attempt,
                "journaled_by_attempt": entry.attempt,
                "started_after_ms": round((run.start_ns - at) / 1e6, 1),
                "ended_after_ms": round((run.end_ns - at) / 1e6, 1),
            }
            if run.start_ns > at:
                f.rerun_journaled.append(detail)
            elif run.end_ns > at:
                f.finished_after_journaled.append(detail)
            else:
                f.in_flight[_cause(run.pid, ctx)] += 1
        prev = entry.value


def _first_start(runs: dict[tuple[str, str], list[Run]], inv: str, step: str) -> int | None:
    mine = runs.get((inv, step), [])
    return min(r.start_ns for r in mine) if mine else None


def _check_timer(
    f: Findings,
    inv: str,
    entries: list[Entry],
    runs: dict[tuple[str, str], list[Run]],
    ctx: Context,
) -> None:
    sleep = next((e for e in entries if e.kind == S.STEP_KIND_SLEEP), None)
    after = _first_start(runs, inv, "after")
    if sleep is None or after is None:
        f.consistency.append(f"{inv}: no SLEEP entry or no run of 'after'")
        return
    due_ts = Timestamp()
    due_ts.FromJsonString(str(sleep.value))
    due = due_ts.ToNanoseconds()
    down = ctx.down_ns(due, after)
    late = (after - due - down) / 1e9
    f.timer_lateness.append(late)
    if late > ctx.late_bound:
        f.late_timers.append(
            {
                "id": inv,
                "late_s": round(late, 3),
                "due": due_ts.ToJsonString(),
                "jetstream_unavailable_s": round(down / 1e9, 3),
                "chaos_around": ctx.during(due, after),
            }
        )


def _check_awakeable(
    f: Findings,
    inv: str,
    runs: dict[tuple[str, str], list[Run]],
    driver: Driver,
    ctx: Context,
) -> None:
    after = _first_start(runs, inv, "after")
    resolved = [a.resolved_ns for a in driver.awakeables.values() if a.invocation_id == inv]
    if after is None or not resolved or not resolved[0]:
        return
    latency = max(after - resolved[0], 0) / 1e9
    f.awakeable_latency.append(latency)
    if latency > ctx.late_bound:
        f.slow_awakeables.append(
            {
                "id": inv,
                "woken_after_s": round(latency, 3),
                "chaos_around": ctx.during(resolved[0], after),
            }
        )


def _check_strays(
    f: Findings, driver: Driver, ev: Evidence, ids_of_key: dict[str, set[str]]
) -> None:
    known = {inv for ids in ids_of_key.values() for inv in ids}
    for inv in sorted(ev.listed - known):
        view = ev.views.get(inv)
        key = ""
        if view is not None:
            job_input = from_payload(view.invocation.input)
            key = job_input.get("key", "") if isinstance(job_input, dict) else ""
        if key in ids_of_key:
            f.duplicated.append(
                {
                    "key": key,
                    "why": "a second invocation for an accepted key",
                    "ids": sorted(ids_of_key[key] | {inv}),
                }
            )


def _check_objects(f: Findings, driver: Driver, ev: Evidence) -> None:
    by_key: dict[str, list[tuple[str, Any]]] = collections.defaultdict(list)
    for inv, view in ev.views.items():
        if view.invocation.handler == "chaosobj/add":
            by_key[view.invocation.key].append((inv, view))
    for key, views in sorted(by_key.items()):
        done = [
            (inv, v) for inv, v in views if v.invocation.status == S.INVOCATION_STATUS_COMPLETED
        ]
        counts = sorted(int(from_payload(v.invocation.result.value)["count"]) for _, v in done)
        if counts != list(range(1, len(done) + 1)):
            f.consistency.append(f"object {key}: outputs count {counts}, not 1..{len(done)}")
        stored = ev.state.get(key, {}).get("count")
        if stored != len(done) and len(done) == len(views):
            f.consistency.append(f"object {key}: state count {stored}, {len(done)} adds completed")
        spans = []
        for inv, _ in done:
            work = next((e for e in ev.journals.get(inv, []) if e.name == "work"), None)
            run = next(
                (r for r in ev.runs.get((inv, "work"), []) if work and r.value == work.value), None
            )
            if run is not None:
                spans.append((run.start_ns, run.end_ns, inv))
        spans.sort()
        for a, b in itertools.pairwise(spans):
            if b[0] < a[1]:
                f.consistency.append(f"object {key}: exclusive runs overlap: {a[2]} and {b[2]}")
