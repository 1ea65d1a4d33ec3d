"""The control plane's index answers List pages, counts, the reconciler's and retention's
questions exactly as a scan of every invocation would, whichever path it takes (walking the
creation order, or sorting the few matching ones)."""

from __future__ import annotations

import random

import pytest

from durable.internal.v1 import storage_pb2
from durable.v1 import types_pb2
from durable_server.control import index as index_module
from durable_server.control.index import Cursor, InvocationIndex, Summary

S = types_pb2
STATUSES = [
    S.INVOCATION_STATUS_PENDING,
    S.INVOCATION_STATUS_RUNNING,
    S.INVOCATION_STATUS_SUSPENDED,
    S.INVOCATION_STATUS_COMPLETED,
    S.INVOCATION_STATUS_FAILED,
]
HANDLERS = ["a/x", "a/y", "b/z"]


def _record(rng: random.Random, i: int) -> storage_pb2.InvocationRecord:
    status = rng.choices(STATUSES, weights=[2, 1, 1, 30, 1])[0]
    r = storage_pb2.InvocationRecord(
        id=f"inv_{i:026d}",
        handler=rng.choice(HANDLERS),
        key=rng.choice(["", "", "k1", "k2"]),
        status=status,
        attempt=1,
    )
    # Creation times collide now and then: the id breaks the tie.
    r.created_at.FromNanoseconds(1_000_000 + rng.randrange(5000) * 1000)
    r.updated_at.FromNanoseconds(r.created_at.ToNanoseconds() + rng.randrange(10**6))
    if status in (S.INVOCATION_STATUS_COMPLETED, S.INVOCATION_STATUS_FAILED):
        r.ended_at.FromNanoseconds(r.updated_at.ToNanoseconds())
    return r


def _pages(idx: InvocationIndex, **filters: object) -> tuple[list[str], int]:
    out: list[str] = []
    after: Cursor | None = None
    total = -1
    while True:
        page, after, total = idx.list(page_size=7, after=after, **filters)  # type: ignore[arg-type]
        out += [s.id for s in page]
        if after is None:
            return out, total


@pytest.mark.parametrize(
    ("sort_cost", "walk_slack"),
    [(10**9, 10**9), (0, 10**9), (10**9, 1)],
    ids=["walk", "sort", "walk-gives-up"],
)
def test_pages_and_counts_match_a_scan(
    monkeypatch: pytest.MonkeyPatch, sort_cost: int, walk_slack: int
) -> None:
    monkeypatch.setattr(index_module, "_SORT_COST", sort_cost)
    monkeypatch.setattr(index_module, "_WALK_SLACK", walk_slack)
    monkeypatch.setattr(index_module, "_WALK_AT_LEAST", 0)
    rng = random.Random(7)
    idx = InvocationIndex()
    records = {r.id: r for r in (_record(rng, i) for i in range(1500))}
    for r in records.values():
        idx.apply(r)
    # Changes (an ended invocation never runs again), and removals, as the follow delivers.
    for r in rng.sample(list(records.values()), 300):
        if r.status not in (S.INVOCATION_STATUS_COMPLETED, S.INVOCATION_STATUS_FAILED):
            r.status = rng.choice(STATUSES)
            if r.status in (S.INVOCATION_STATUS_COMPLETED, S.INVOCATION_STATUS_FAILED):
                r.ended_at.FromNanoseconds(r.updated_at.ToNanoseconds() + 1)
            idx.apply(r)
    for gone in rng.sample(list(records), 100):
        idx.remove(gone)
        del records[gone]
    everyone = sorted(
        (Summary.of(r) for r in records.values()),
        key=lambda s: (s.created_ns, s.id),
        reverse=True,
    )
    for statuses in ([], [S.INVOCATION_STATUS_FAILED], [STATUSES[0], STATUSES[2]]):
        for handler in ("", "a/y"):
            for key in ("", "k2"):
                want = [
                    s.id
                    for s in everyone
                    if (not statuses or s.status in statuses)
                    and (not handler or s.handler == handler)
                    and (not key or s.key == key)
                ]
                got, total = _pages(idx, statuses=statuses, handler=handler, key=key)
                assert (got, total) == (want, len(want)), (statuses, handler, key)
    # The console's filters: a service (every handler of it) and a creation-time range.
    times = sorted(s.created_ns for s in everyone)
    ranges = [(0, 0), (times[len(times) // 3], 0), (0, times[len(times) // 2])]
    ranges.append((times[len(times) // 4], times[len(times) // 4 + 40]))
    for service in ("", "a", "b"):
        for statuses in ([], [S.INVOCATION_STATUS_COMPLETED]):
            for handler in ("", "a/y"):
                for start, end in ranges:
                    want = [
                        s.id
                        for s in everyone
                        if (not service or s.handler.startswith(service + "/"))
                        and (not statuses or s.status in statuses)
                        and (not handler or s.handler == handler)
                        and (not start or s.created_ns >= start)
                        and (not end or s.created_ns < end)
                    ]
                    got, total = _pages(
                        idx,
                        statuses=statuses,
                        handler=handler,
                        service=service,
                        created_from_ns=start,
                        created_before_ns=end,
                    )
                    case = (service, statuses, handler, start, end)
                    assert (got, total) == (want, len(want)), case

    cutoff = max(s.updated_ns for s in everyone) // 2
    stale = {
        s.id
        for s in everyone
        if s.status in (S.INVOCATION_STATUS_PENDING, S.INVOCATION_STATUS_SCHEDULED)
        and s.updated_ns < cutoff
    }
    assert set(idx.stale(cutoff, limit=10**6)) == stale
    ended = sorted(
        (s.ended_ns, s.id)
        for s in everyone
        if s.status in (S.INVOCATION_STATUS_COMPLETED, S.INVOCATION_STATUS_FAILED)
        and s.ended_ns
        and s.ended_ns < cutoff
    )
    assert idx.ended_before(cutoff, limit=10**6) == [i for _, i in ended]
    # Asked again before they are purged, the same ones are due.
    assert idx.ended_before(cutoff, limit=10**6) == [i for _, i in ended]
