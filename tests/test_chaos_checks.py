"""The chaos run's checks on made-up evidence, so that a finding means what the report says:
a step body that started after its entry was stored is a re-run journaled step; one in
flight when its entry was stored is told apart by what happened to its process; two ids for
one key, or two outputs, are duplicates; a late timer counts without nats downtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from durable._codec import to_payload
from durable.v1 import control_pb2, types_pb2
from tests.chaos.evidence import Entry, Evidence, Run
from tests.chaos.load import Driver, Job
from tests.chaos.verify import Context, check

S = types_pb2
MS = 1_000_000
T0 = 1_800_000_000 * 10**9  # wall clock ns of the first journal entry


def _view(inv: str, handler: str, output: Any, input_: Any) -> control_pb2.GetWorkflowResponse:
    view = control_pb2.GetWorkflowResponse()
    view.invocation.invocation_id = inv
    view.invocation.handler = handler
    view.invocation.status = S.INVOCATION_STATUS_COMPLETED
    view.invocation.result.value.CopyFrom(to_payload(output))
    view.invocation.input.CopyFrom(to_payload(input_))
    return view


def _driver(jobs: list[Job]) -> Driver:
    driver = Driver(["127.0.0.1:1"], 1, "test", Path("/nonexistent"), 0.0)
    driver.jobs = {j.key: j for j in jobs}
    return driver


def _job(key: str, handler: str, ids: set[str], outputs: list[Any]) -> Job:
    job = Job(key, handler, {"key": key, "ms": [5]}, "", False, None, accepted=1.0)
    job.ids, job.outputs = ids, outputs
    return job


def _run(inv: str, step: str, pid: int, start: int, end: int, prev: int, value: int) -> Run:
    return Run(inv, step, 1, pid, start, end, prev, value, "")


def test_rerun_in_flight_and_duplicates_are_told_apart() -> None:
    inv = "inv_a"
    # Two steps journaled at T0 and T0 + 100 ms (stored times), values 11 and 22.
    entries = [
        Entry(0, S.STEP_KIND_RUN, "s0", 11, 1, T0 - MS, T0),
        Entry(1, S.STEP_KIND_RUN, "s1", 22, 2, T0 + 99 * MS, T0 + 100 * MS),
    ]
    runs = {
        (inv, "s0"): [
            _run(inv, "s0", 100, T0 - 50 * MS, T0 - 40 * MS, 0, 10),  # in flight, then killed
            _run(inv, "s0", 200, T0 - 30 * MS, T0 - 20 * MS, 0, 11),  # the journaled run
            _run(inv, "s0", 300, T0 + 5 * MS, T0 + 9 * MS, 0, 12),  # started after: a re-run
        ],
        (inv, "s1"): [
            _run(inv, "s1", 400, T0 + 10 * MS, T0 + 500 * MS, 11, 21),  # frozen across it
            _run(inv, "s1", 200, T0 + 20 * MS, T0 + 30 * MS, 11, 22),
        ],
    }
    output = {"key": "k1", "value": 22}
    driver = _driver(
        [
            _job("k1", "chaos/chain", {inv}, [output, {"key": "k1", "value": 21}]),
            _job("k2", "chaos/chain", {"inv_b", "inv_c"}, []),
        ]
    )
    ev = Evidence(
        runs=runs,
        views={inv: _view(inv, "chaos/chain", output, {"key": "k1"})},
        journals={inv: entries},
        missing={"inv_b"},
        unreadable={},
        listed={inv},
        state={},
        stored_read="stream",
    )
    f = check(driver, ev, Context(killed={100}, frozen={400}, outages_ns=[], late_bound=5.0))
    assert [(r["step"], r["pid"]) for r in f.rerun_journaled] == [("s0", 300)]
    assert [(r["step"], r["process"]) for r in f.finished_after_journaled] == [("s1", "frozen")]
    assert dict(f.in_flight) == {"killed": 1}
    assert sorted(d["why"] for d in f.duplicated) == ["two invocation ids", "two outputs"]
    assert [x["why"] for x in f.lost] == ["NOT_FOUND"]
    assert f.completed == 1 and not f.consistency


def test_timer_lateness_leaves_out_nats_downtime() -> None:
    inv = "inv_n"
    due = "2027-01-15T08:00:05Z"
    due_ns = 1_800_000_005 * 10**9
    entries = [
        Entry(0, S.STEP_KIND_RUN, "before", 1, 1, T0, T0),
        Entry(1, S.STEP_KIND_SLEEP, "sleep", due, 1, T0, T0),
        Entry(2, S.STEP_KIND_RUN, "after", 2, 1, due_ns + 9 * 10**9, due_ns + 9 * 10**9),
    ]
    runs = {
        (inv, "before"): [_run(inv, "before", 1, T0 - MS, T0 - MS, 0, 1)],
        (inv, "after"): [_run(inv, "after", 1, due_ns + 8 * 10**9, due_ns + 8 * 10**9, 1, 2)],
    }
    output = {"key": "n1", "value": 2}
    ev = Evidence(
        runs=runs,
        views={inv: _view(inv, "chaos/nap", output, {"key": "n1"})},
        journals={inv: entries},
        missing=set(),
        unreadable={},
        listed={inv},
        state={},
        stored_read="stream",
    )
    driver = _driver([_job("n1", "chaos/nap", {inv}, [output])])
    # Ran 8 s after it was due; nats was down for 4 s of those: 4 s late, within the bound.
    outage = [(due_ns + 1 * 10**9, due_ns + 5 * 10**9)]
    f = check(driver, ev, Context(set(), set(), outage, late_bound=5.0))
    assert f.timer_lateness == [4.0] and not f.late_timers
    f = check(driver, ev, Context(set(), set(), [], late_bound=5.0))
    assert [t["late_s"] for t in f.late_timers] == [8.0]


async def test_a_pause_of_the_whole_machine_is_an_outage_not_lateness(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wall time that moves on while monotonic time does not (the host paused the machine)
    is recorded as an outage, which timer lateness does not count."""
    import asyncio
    import time

    from tests.chaos import topology
    from tests.chaos.topology import Shape, Topology

    topo = Topology("single", tmp_path, Shape(1, 1, 1, 3.0), tmp_path / "ledger.jsonl")
    jump = {"ns": 0}
    real = time.time_ns
    monkeypatch.setattr(topology.time, "time_ns", lambda: real() + jump["ns"])
    done = asyncio.Event()
    watch = asyncio.create_task(topo.watch_machine_stalls(done))
    await asyncio.sleep(0.25)
    jump["ns"] = 6_000_000_000  # the machine stood still for 6 s
    await asyncio.sleep(0.25)
    done.set()
    await watch
    [(start, end)] = topo.outages_ns
    assert 5.9e9 < end - start < 6.5e9
    assert [e["action"] for e in topo.events] == ["machine-stall"]
