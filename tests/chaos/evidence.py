"""What the checks read once the chaos has stopped and the load drained: the ledger the step
bodies wrote, every invocation through ``GetWorkflow`` (and ``ListWorkflows`` for ones the
clients were never told about), object state, and the time JetStream stored each journal
entry, read straight from the journal stream.

The stored time is when the entry became durable (the server's clock, as the ledger's); the
worker's ``recorded_at`` is taken just before it publishes, so it only stands in when the
stream cannot be read.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.js.api import DeliverPolicy

from durable import Client, RPCError
from durable._codec import from_payload
from durable._store.config import EngineConfig
from durable.internal.v1 import storage_pb2
from durable.v1 import control_pb2, types_pb2
from tests.chaos.load import READ_FINAL, Driver


@dataclass(frozen=True)
class Run:
    """One run of one step body, as its ledger line says."""

    invocation_id: str
    step: str
    attempt: int
    pid: int
    start_ns: int
    end_ns: int
    prev: int
    value: int
    extra: str


@dataclass(frozen=True)
class Entry:
    """One journal entry, as GetWorkflow shows it, with the time JetStream stored it."""

    index: int
    kind: int
    name: str
    value: Any
    attempt: int
    recorded_ns: int
    stored_ns: int  # 0 when the stream could not be read

    @property
    def journaled_ns(self) -> int:
        return self.stored_ns or self.recorded_ns


@dataclass
class Evidence:
    runs: dict[tuple[str, str], list[Run]]
    views: dict[str, control_pb2.GetWorkflowResponse]
    journals: dict[str, list[Entry]]
    missing: set[str]  # accepted ids GetWorkflow answered NOT_FOUND
    unreadable: dict[str, str]  # ids GetWorkflow did not answer for
    listed: set[str]  # every id ListWorkflows gave
    state: dict[str, dict[str, Any]]  # object key -> state
    stored_read: str  # "stream" or why it fell back to recorded_at
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def read_ledger(path: Path) -> dict[tuple[str, str], list[Run]]:
    runs: dict[tuple[str, str], list[Run]] = collections.defaultdict(list)
    with contextlib.suppress(FileNotFoundError), path.open() as f:
        for raw in f:
            if not raw.strip():
                continue
            x = json.loads(raw)
            run = Run(x["i"], x["n"], x["a"], x["p"], x["s"], x["e"], x["prev"], x["v"], x["x"])
            runs[(run.invocation_id, run.step)].append(run)
    return runs


async def stored_times(cfg: EngineConfig) -> dict[tuple[str, int], int]:
    """(invocation, journal index) -> ns JetStream stored it, for every entry of the stream."""
    nc = await nats.connect(cfg.servers, max_reconnect_attempts=3, connect_timeout=5)
    out: dict[tuple[str, int], int] = {}
    try:
        js = nc.jetstream(timeout=10.0)
        total = (await js.stream_info(cfg.journal_stream)).state.messages
        if not total:
            return out
        sub = await js.subscribe(
            f"{cfg.prefix}.journal.>", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
        )
        try:
            while True:
                msg = await sub.next_msg(timeout=10.0)
                tokens = msg.subject.split(".")
                if len(tokens) == 4 and tokens[3] in ("s", "f"):
                    entry = storage_pb2.JournalRecord()
                    entry.ParseFromString(msg.data)
                    ts = msg.metadata.timestamp
                    out[(tokens[2], entry.index)] = int(ts.timestamp()) * 10**9 + (
                        ts.microsecond * 1000
                    )
                if msg.metadata.num_pending == 0:
                    return out
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()


def _entry(e: types_pb2.JournalEntry, stored: dict[tuple[str, int], int], inv: str) -> Entry:
    value: Any = None
    if e.result.WhichOneof("outcome") == "value":
        value = from_payload(e.result.value)
    return Entry(
        e.index,
        e.kind,
        e.name,
        value,
        e.attempt,
        e.recorded_at.ToNanoseconds(),
        stored.get((inv, e.index), 0),
    )


async def gather(driver: Driver, cfg: EngineConfig, ledger: Path, within: float) -> Evidence:
    started = time.monotonic()
    until = started + within
    errors: list[str] = []
    try:
        stored = await asyncio.wait_for(stored_times(cfg), within)
        stored_read = "stream"
    except Exception as exc:  # the checks fall back to recorded_at
        stored, stored_read = {}, f"recorded_at (reading the stream failed: {exc!r})"[:300]

    listed: set[str] = set()
    try:
        summaries = await driver.call("ListWorkflows", lambda c: _list_all(c), until)
        listed = {s.invocation_id for s in summaries}
    except RPCError as err:
        errors.append(f"ListWorkflows: {err}")

    accepted = {inv for job in driver.jobs.values() for inv in job.ids}
    views: dict[str, control_pb2.GetWorkflowResponse] = {}
    missing: set[str] = set()
    unreadable: dict[str, str] = {}
    gate = asyncio.Semaphore(16)

    async def view(inv: str) -> None:
        async with gate:
            try:
                views[inv] = await driver.call(
                    "GetWorkflow", lambda c: _get(c, inv), until, READ_FINAL
                )
            except RPCError as err:
                if err.code is not None and err.code.name == "NOT_FOUND":
                    missing.add(inv)
                else:
                    unreadable[inv] = str(err)[:200]

    await asyncio.gather(*(view(inv) for inv in sorted(accepted | listed)))
    journals = {inv: [_entry(e, stored, inv) for e in v.journal] for inv, v in views.items()}

    state: dict[str, dict[str, Any]] = {}
    keys = sorted({job.obj_key for job in driver.jobs.values() if job.obj_key})
    for key in keys:
        try:
            state[key] = await driver.call(
                "GetState", lambda c, k=key: c.get_state("chaosobj", k), until
            )
        except RPCError as err:
            errors.append(f"GetState {key}: {err}")
    return Evidence(
        read_ledger(ledger),
        views,
        journals,
        missing,
        unreadable,
        listed,
        state,
        stored_read,
        time.monotonic() - started,
        errors,
    )


async def _list_all(client: Client) -> list[types_pb2.InvocationSummary]:
    # The checks read the wire messages (as any client in any language would see them).
    return [s.raw async for s in client.list_all(page_size=1000)]


async def _get(client: Client, invocation_id: str) -> control_pb2.GetWorkflowResponse:
    view = await client.get(invocation_id)
    return control_pb2.GetWorkflowResponse(
        invocation=view.raw, journal=[e.raw for e in view.journal]
    )
