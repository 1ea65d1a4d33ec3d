"""Fencing: one invocation is driven by at most one worker at a time (docs/guarantees.md).

Two real worker processes are made to drive one invocation at once: worker A is frozen with
SIGSTOP in the middle of a long step (so its in-progress heartbeats stop), the work item is
redelivered after the short ack wait to worker B, which drives the invocation on; then A is
thawed with SIGCONT. Whichever of the two appends second must be fenced (error 10071) and
stop. Read straight from the journal stream: one journal, indexes 0..n-1 each exactly once,
no interleaving of the two drivers, and one completion with the journal's values.

A unit-level test checks the fence itself on ``durable._store.journal.Journal.append``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.errors import NotFoundError

from durable import Client
from durable._store import open_store
from durable._store.config import EngineConfig
from durable._store.journal import Journal, JournalFenced
from durable._worker.runtime import Worker
from durable._worker.signals import ControlFlags
from durable.internal.v1 import storage_pb2
from durable.v1 import types_pb2
from durable_server.natsd import EmbeddedNats
from durable_server.provision import ensure_resources
from tests.crash_handlers import FENCE_STEP, STEPS, crash, release_marker
from tests.procs import EngineProc, ProcGroup, free_port, read_ledger, wait_healthy

pytestmark = pytest.mark.slow  # real processes or long waits: not in make test-fast

ACK_WAIT = 1.0


async def raw_journal(
    nats_url: str, cfg: EngineConfig, invocation_id: str
) -> tuple[dict[str, int], list[Any]]:
    """Message count per subject of the journal stream, and (stream sequence, JournalRecord)
    of every message on the invocation's journal subject, read straight from JetStream."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(cfg.journal_stream, subjects_filter=">")
        subjects = dict(info.state.subjects or {})
        subject = cfg.journal_filter(invocation_id)
        out = []
        seq = 0
        for _ in range(1000):
            try:
                msg = await js.get_msg(cfg.journal_stream, seq=seq + 1, subject=subject, next=True)
            except NotFoundError:
                break
            entry = storage_pb2.JournalRecord()
            entry.ParseFromString(msg.data or b"")
            out.append((msg.seq, entry))
            seq = int(msg.seq or 0)
        return subjects, out
    finally:
        await nc.close()


async def written_record(
    nats_url: str, cfg: EngineConfig, invocation_id: str, within: float = 10.0
) -> tuple[int, storage_pb2.InvocationRecord]:
    """(KV revision, record) once the record itself is terminal: an answer can come from the
    journaled outcome a moment before the record is written."""
    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(cfg.invocations_bucket)
        deadline = time.monotonic() + within
        while True:
            entry = await kv.get(invocation_id)
            record = storage_pb2.InvocationRecord()
            record.ParseFromString(entry.value or b"")
            if record.status == types_pb2.INVOCATION_STATUS_COMPLETED or (
                time.monotonic() > deadline
            ):
                return int(entry.revision or 0), record
            await asyncio.sleep(0.05)
    finally:
        await nc.close()


async def wait_view(
    client: Client, invocation_id: str, pred: Any, what: str, within: float = 20.0
) -> Any:
    deadline = time.monotonic() + within
    while True:
        view = await client.get(invocation_id)
        if pred(view):
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"{invocation_id}: not {what} within {within}s: {view}")
        await asyncio.sleep(0.05)


async def wait_log(procs: list[EngineProc], text: str, within: float) -> list[EngineProc]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = [p for p in procs if text in p.log()]
        if found:
            return found
        await asyncio.sleep(0.05)
    return []


@pytest.mark.slow
@pytest.mark.parametrize("thaw", ["after_completion", "mid_step"])
async def test_two_workers_one_invocation(
    isolated_nats: EmbeddedNats, tmp_path: Path, thaw: str
) -> None:
    """``after_completion``: A wakes after B finished the invocation, and must be fenced at
    its next append. ``mid_step``: A wakes while B is inside the same long step, so both
    drive it at once; A's append lands first and B must be the one fenced."""
    ledger = tmp_path / "ledger.txt"
    prefix = "fence"
    cfg = EngineConfig(nats_url=isolated_nats.url, prefix=prefix)
    group = ProcGroup(
        tmp_path / "logs", isolated_nats.url, prefix, ack_wait=ACK_WAIT, ledger=ledger
    )
    try:
        port = free_port()
        target = f"127.0.0.1:{port}"
        server = group.server(port).start()
        # One slot: while A drives the invocation it has no pull request open, so the
        # redelivered item cannot be handed back to the frozen A.
        a = group.worker("worker-a", slots=1, worker_id="wa").start()
        await wait_healthy(target, proc=server)
        await a.wait_for_log("serving")
        b = group.worker("worker-b", slots=4, worker_id="wb")

        async with Client(target) as client:
            seed = random.randrange(1_000_000)
            handle = await client.start("crash/fence_chain", seed)
            inv = handle.id
            # A journaled the steps before the long one and is inside it now.
            await wait_view(
                client, inv, lambda v: len(v.journal) >= FENCE_STEP, f"at step {FENCE_STEP}"
            )
            a.freeze()
            frozen_at = time.monotonic()
            b.start()
            await b.wait_for_log("serving")
            # B takes it over after the ack wait: a second attempt, by another worker.
            await wait_view(client, inv, lambda v: v.attempt >= 2, "taken over")
            if thaw == "mid_step":
                a.thaw()  # A's sleep is over: it appends at once, while B is mid-step
            result = await client.result(inv, timeout=30)
            if thaw == "after_completion":
                a.thaw()
            done = await written_record(isolated_nats.url, cfg, inv)
            fenced = await wait_log([a, b], "fenced", within=10)
            await asyncio.sleep(2 * ACK_WAIT)  # room for any late write by the loser
            later = await written_record(isolated_nats.url, cfg, inv)

        subjects, journal = await raw_journal(isolated_nats.url, cfg, inv)
        executions = read_ledger(ledger)
        problems: list[str] = []
        # Steps on .s, the last one (carrying the outcome) on .f.
        expected = {cfg.journal_subject(inv): STEPS - 1, cfg.journal_subject(inv, final=True): 1}
        if subjects != expected:
            problems.append(f"journal stream holds {subjects}, expected one journal of {STEPS}")
        indexes = [e.index for _, e in journal]
        if indexes != list(range(STEPS)):
            problems.append(f"journal indexes {indexes}, expected 0..{STEPS - 1} once each")
        # No interleaving: once a later attempt wrote, no earlier attempt writes again.
        attempts = [e.attempt for _, e in journal]
        if attempts != sorted(attempts):
            problems.append(f"journal attempts interleave: {attempts}")
        writers = [e.worker_id for _, e in journal]
        if any(w != writers[i - 1] and w in writers[:i] for i, w in enumerate(writers)):
            problems.append(f"journal writers interleave: {writers}")
        values = [int(e.value.data) for _, e in journal]
        if result != {"seed": seed, "value": values[-1] if values else None}:
            problems.append(f"result {result} is not the journal's last value {values}")
        if done[1].status != types_pb2.INVOCATION_STATUS_COMPLETED:
            problems.append(f"not completed: {done[1]}")
        if later != done:
            problems.append(f"record changed after completion: {done} -> {later}")
        if len(fenced) != 1:
            problems.append(f"fenced workers: {[p.name for p in fenced]} (expected exactly one)")
        pid_of = {"wa": a.pid, "wb": b.pid}
        prev = seed
        for step, value in enumerate(values):
            runs = executions.get((inv, step), [])
            # Only the long step, inside which A was frozen, runs twice (by A and by B).
            if len(runs) != (2 if step == FENCE_STEP else 1):
                problems.append(f"step {step} ran {len(runs)} times: {runs}")
            if any(r.prev != prev for r in runs):
                problems.append(f"step {step} was not given the journaled {prev}: {runs}")
            # The journaled value is the run of the worker that journaled it.
            if not any(r.value == value and r.pid == pid_of[writers[step]] for r in runs):
                problems.append(f"step {step}: journaled {value} by {writers[step]}, runs {runs}")
            prev = value
        if thaw == "after_completion":
            # B drove everything from the long step on; A's late run was thrown away.
            if writers != ["wa"] * FENCE_STEP + ["wb"] * (STEPS - FENCE_STEP):
                problems.append(f"journal writers {writers}")
            if fenced and fenced[0] is not a:
                problems.append(f"{fenced[0].name} was fenced, expected worker-a")
        print(
            f"\n[fencing {thaw}] frozen {time.monotonic() - frozen_at:.1f}s, journal writers "
            f"{writers} attempts {attempts}, fenced: {[p.name for p in fenced]}, "
            f"final attempt {later[1].attempt}"
        )
        assert not problems, "\n".join(problems)
        assert a.running and b.running, "a fenced worker must stop driving, not crash"
    finally:
        group.close()


def _stopped(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


@pytest.mark.slow
@pytest.mark.parametrize("handler", ["stop_at_start", "stop_in_retry", "stop_then_hold"])
async def test_thawed_worker_runs_no_step_another_journaled(
    isolated_nats: EmbeddedNats, tmp_path: Path, handler: str
) -> None:
    """Worker A freezes itself (SIGSTOP) where nothing of its own is left to journal before
    the next side effect: before the first step (``stop_at_start``), or in the failed first
    try of a step that retries in place (``stop_in_retry``). B takes the invocation over
    after the ack wait and completes it; then A is thawed. A's next side effect would be a
    step B journaled, and no append comes first to fence it: A must see that its claim may
    have lapsed, find B's entries, and stop. ``stop_then_hold``: A is thawed while B has
    claimed the record but holds its first step, journaling nothing: A must see the claim
    and leave the step to B. The ledger shows no step run by A after the thaw."""
    ledger = tmp_path / "ledger.txt"
    prefix = "thaw"
    cfg = EngineConfig(nats_url=isolated_nats.url, prefix=prefix)
    group = ProcGroup(
        tmp_path / "logs", isolated_nats.url, prefix, ack_wait=ACK_WAIT, ledger=ledger
    )
    try:
        port = free_port()
        target = f"127.0.0.1:{port}"
        server = group.server(port).start()
        a = group.worker("worker-a", slots=1, worker_id="wa").start()
        await wait_healthy(target, proc=server)
        await a.wait_for_log("serving")
        b = group.worker("worker-b", slots=4, worker_id="wb")
        async with Client(target) as client:
            seed = random.randrange(1_000_000)
            inv = (await client.start(f"crash/{handler}", seed)).id
            deadline = time.monotonic() + 20
            while not _stopped(a.pid):
                assert time.monotonic() < deadline, f"worker A never stopped:\n{a.tail()}"
                await asyncio.sleep(0.02)
            b.start()
            if handler == "stop_then_hold":
                await wait_view(
                    client,
                    inv,
                    lambda v: v.attempt >= 2 and v.status == types_pb2.INVOCATION_STATUS_RUNNING,
                    "claimed by B",
                )
            else:
                await client.result(inv, timeout=30)  # B drove it to the end
            before_thaw = sum(len(runs) for runs in read_ledger(ledger).values())
            a.thaw()
            fenced = await wait_log([a], "fenced", within=20)
            await asyncio.to_thread(Path(release_marker(str(ledger), inv)).touch)
            result = await client.result(inv, timeout=30)

        _, journal = await raw_journal(isolated_nats.url, cfg, inv)
        writers = {e.index: e.worker_id for _, e in journal}
        runs = sorted(
            (r for runs in read_ledger(ledger).values() for r in runs), key=lambda r: r.line
        )
        after_thaw = [r for r in runs[before_thaw:] if r.pid == a.pid]
        print(
            f"\n[thaw {handler}] journal writers {writers}, A's runs after the thaw "
            f"{after_thaw}, A's log: {[ln for ln in a.log().splitlines() if 'fenced' in ln]}"
        )
        journaled_by_b = [r for r in after_thaw if writers.get(r.step) == "wb"]
        assert not journaled_by_b, f"A ran steps B had journaled: {journaled_by_b}"
        assert not after_thaw, f"A ran steps after the thaw: {after_thaw}"
        assert fenced == [a], f"worker A did not stop:\n{a.tail()}"
        if handler == "stop_then_hold":
            assert "was claimed by attempt 2 (wb)" in a.log(), a.tail()
        assert sorted(writers) == list(range(STEPS)), writers
        assert result == {"seed": seed, "value": int(journal[-1][1].value.data)}
        assert a.running and b.running
    finally:
        group.close()


async def test_stale_delivery_takes_nothing_over(
    isolated_nats: EmbeddedNats, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A frozen worker's delivery, handled after the item was redelivered and claimed by
    another worker, must not claim the invocation (nor ack or nak the item): it would run a
    second attempt beside the live one, and step side effects twice (the chaos finding of
    seed 819409). The test process holds the first delivery, unacked, as a frozen worker
    would; worker A gets the redelivery and holds its first step; then the test hands the
    stale delivery to an in-process worker's executor."""
    caplog.set_level(logging.INFO)
    ledger = tmp_path / "ledger.txt"
    prefix = "stale"
    cfg = EngineConfig(nats_url=isolated_nats.url, prefix=prefix, ack_wait=ACK_WAIT)
    group = ProcGroup(
        tmp_path / "logs", isolated_nats.url, prefix, ack_wait=ACK_WAIT, ledger=ledger
    )
    nc = await nats.connect(isolated_nats.url)
    try:
        port = free_port()
        target = f"127.0.0.1:{port}"
        server = group.server(port).start()
        first = group.worker("first", slots=1).start()
        await wait_healthy(target, proc=server)
        await first.wait_for_log("serving")  # its registration created the consumer
        # Frozen, it stays registered; its open pull request expires (a third of the ack
        # wait, at least a second) before the invocation is made, so the test gets the item.
        first.freeze()
        await asyncio.sleep(1.5)
        async with Client(target) as client:
            inv = (await client.start("crash/held", random.randrange(1_000_000))).id
            sub = await nc.jetstream().pull_subscribe_bind(
                durable=cfg.run_consumer("crash"), stream=cfg.work_stream
            )
            [stale] = await sub.fetch(1, timeout=10)
            assert stale.metadata.num_delivered == 1
            a = group.worker("worker-a", slots=1, worker_id="wa").start()
            records = (await open_store(nc, cfg)).records
            await wait_view(
                client,
                inv,
                lambda v: v.status == types_pb2.INVOCATION_STATUS_RUNNING,
                "claimed by A from the redelivery",
            )
            claimed = (await records.get(inv)).record
            assert (claimed.worker_id, claimed.claimed_delivery) == ("wa", 2), claimed
            async with Worker(cfg, [crash], slots=1, worker_id="wb") as b:
                assert b._executor is not None
                await asyncio.wait_for(b._executor.drive(stale, inv, ControlFlags()), 20)
            after = (await records.get(inv)).record
            assert (after.worker_id, after.attempt) == ("wa", claimed.attempt), after
            assert "from a newer delivery" in caplog.text
            info = await nc.jetstream().consumer_info(cfg.work_stream, cfg.run_consumer("crash"))
            assert info.num_ack_pending == 1, "the stale delivery acked A's item"
            await asyncio.to_thread(Path(release_marker(str(ledger), inv)).touch)
            await client.result(inv, timeout=30)
        _, journal = await raw_journal(isolated_nats.url, cfg, inv)
        assert {e.worker_id for _, e in journal} == {"wa"}
        runs = [r for runs in read_ledger(ledger).values() for r in runs]
        assert all(r.pid == a.pid for r in runs), runs
    finally:
        await nc.close()
        group.close()


async def test_journal_append_is_fenced(nats_server: EmbeddedNats, unique: str) -> None:
    """Two appenders holding the same expected last sequence: exactly one entry lands."""
    cfg = EngineConfig(nats_url=nats_server.url, prefix=f"j{unique}")
    ncs = [await nats.connect(nats_server.url) for _ in range(2)]
    try:
        await ensure_resources(ncs[0].jetstream(), cfg)
        journals = [Journal(nc.jetstream(), cfg) for nc in ncs]
        inv = "inv_" + "a" * 26

        def entry(index: int, attempt: int, worker: str) -> storage_pb2.JournalRecord:
            e = storage_pb2.JournalRecord(index=index, name=f"step{index}", attempt=attempt)
            e.worker_id = worker
            e.value.data = f"{worker}-{index}".encode()
            return e

        first = await journals[0].append(inv, entry(0, 1, "w1"), 0)
        # Both drivers read the journal up to `first` and append entry 1 at the same time.
        results = await asyncio.gather(
            journals[0].append(inv, entry(1, 1, "w1"), first),
            journals[1].append(inv, entry(1, 2, "w2"), first),
            return_exceptions=True,
        )
        won = [r for r in results if isinstance(r, int)]
        lost = [r for r in results if isinstance(r, JournalFenced)]
        assert len(won) == 1 and len(lost) == 1, results
        # It is JetStream's own verdict: wrong last sequence (10071).
        cause = lost[0].__cause__
        assert getattr(cause, "err_code", None) == 10071, repr(cause)
        # The loser stays fenced: its next append, on its stale view, fails too.
        loser = journals[1] if isinstance(results[1], JournalFenced) else journals[0]
        with pytest.raises(JournalFenced):
            await loser.append(inv, entry(2, 9, "loser"), first)
        # The winner goes on from its own last sequence.
        await (journals[0] if loser is journals[1] else journals[1]).append(
            inv, entry(2, 3, "winner"), won[0]
        )
        loaded = await journals[0].load(inv)
        assert [e.index for e in loaded.entries] == [0, 1, 2]
        assert loaded.entries[2].worker_id == "winner"
        # Sequential case: an appender whose view is stale by one entry is fenced.
        with pytest.raises(JournalFenced):
            await journals[1].append(inv, entry(3, 4, "stale"), won[0])
        assert len((await journals[0].load(inv)).entries) == 3
    finally:
        for nc in ncs:
            with contextlib.suppress(Exception):
                await nc.close()
