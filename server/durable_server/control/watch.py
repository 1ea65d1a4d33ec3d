"""WatchWorkflow: one invocation's steps and status changes, pushed as they happen.

Steps come from an ordered push consumer on the invocation's journal subjects, started right
after the snapshot's last entry; status changes come from the index, which follows every
record write. Nothing is polled, and the consumer lives only as long as the watch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from durable.contract import Record, is_terminal
from durable.internal.v1 import storage_pb2
from durable.v1 import control_pb2, types_pb2
from durable_server.control.plane import ControlPlane
from durable_server.control.views import invocation_view, journal_entry, with_final

C = control_pb2
S = types_pb2


def _event(
    kind: int, record: Record, steps: list[types_pb2.JournalEntry] | None = None
) -> C.WatchWorkflowResponse:
    invocation, _ = invocation_view(record, None, None)
    return C.WatchWorkflowResponse(
        kind=kind,  # type: ignore[arg-type]
        invocation=invocation,
        steps=steps or [],
    )


async def watch(plane: ControlPlane, invocation_id: str) -> AsyncIterator[C.WatchWorkflowResponse]:
    """A snapshot, then STEP and STATUS events, then ENDED (the last one)."""
    queue: asyncio.Queue[Msg | Record] = asyncio.Queue()
    plane.index.listen(invocation_id, queue.put_nowait)
    sub = None
    try:
        record = await plane.invocations.view_record(invocation_id)
        journal = await plane.invocations.load_journal(invocation_id)
        invocation, entries = invocation_view(record, journal, plane.progress.get(invocation_id))
        yield C.WatchWorkflowResponse(
            kind=C.WATCH_EVENT_KIND_SNAPSHOT, invocation=invocation, steps=entries
        )
        if journal.entries and journal.entries[-1].HasField("final"):
            record = with_final(record, journal.entries[-1])
        if is_terminal(record.status):
            yield _event(C.WATCH_EVENT_KIND_ENDED, record)
            return

        async def on_msg(msg: Msg) -> None:
            queue.put_nowait(msg)

        sub = await plane.nc.jetstream().subscribe(
            plane.cfg.journal_filter(invocation_id),
            stream=plane.cfg.journal_stream,
            cb=on_msg,
            ordered_consumer=True,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=journal.last_seq + 1,
            ),
            inactive_threshold=60.0,
        )
        status = record.status
        seen = {e.index: e for e in journal.entries}  # what an AWAIT step refers back to
        while True:
            item = await queue.get()
            if isinstance(item, Record):
                if item.status != status and not is_terminal(item.status):
                    status = item.status
                    record = item
                    yield _event(C.WATCH_EVENT_KIND_STATUS, item)
                continue
            if item.subject == plane.cfg.journal_seal_subject(invocation_id):
                continue
            entry = storage_pb2.JournalRecord()
            entry.ParseFromString(item.data or b"")
            if entry.kind != S.STEP_KIND_UNSPECIFIED:
                seen[entry.index] = entry
                step = journal_entry(entry, seen)
                yield _event(C.WATCH_EVENT_KIND_STEP, record, [step])
            if entry.HasField("final"):
                yield _event(C.WATCH_EVENT_KIND_ENDED, with_final(record, entry))
                return
    finally:
        plane.index.unlisten(invocation_id, queue.put_nowait)
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
