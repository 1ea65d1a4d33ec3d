"""Waiting without holding anything: waking suspended invocations, durable timers, starting
invocations from handlers, and completing awakeables.

A suspended invocation holds no worker slot, task or unacked message: its record says
SUSPENDED and what it waits for. Whoever completes one of those things stores the completion
first and then calls :meth:`Waker.wake`, which moves the record from SUSPENDED to PENDING (a
CAS, so one waker wins) and enqueues a work item. A worker that suspends does the reverse:
it writes SUSPENDED, then looks at its completions again and wakes itself if one arrived
meanwhile. One of the two always sees the other, so no completion is missed.

Timers are JetStream message schedules on the work stream: they survive restarts of every
process, need no ack_wait or redelivery to fire, and fire onto a wake-up subject (never the
invocation's work item, which a running worker may be holding).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging

from google.protobuf.timestamp_pb2 import Timestamp
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from durable.internal.v1 import storage_pb2
from durable.v1 import types_pb2
from durable_server.config import EngineConfig
from durable_server.records import MutationRefused, Record, RecordNotFound, RecordStore
from durable_server.workqueue import WorkQueue

log = logging.getLogger("durable.waking")
S = types_pb2

_WRONG_LAST_SEQUENCE = (10071, 10164)


class AlreadyCompleted(Exception):
    """The awakeable was resolved or rejected before."""


def _at(ts: Timestamp) -> str:
    """``@at`` schedule with the fraction kept, so it does not fire up to a second early."""
    when = ts.ToDatetime(tzinfo=dt.UTC)
    return "@at " + when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Waker:
    """The writes that start, suspend-and-wake and complete invocations."""

    def __init__(
        self, js: JetStreamContext, cfg: EngineConfig, records: RecordStore, work: WorkQueue
    ) -> None:
        self._js = js
        self._cfg = cfg
        self._records = records
        self._work = work

    async def wake(self, invocation_id: str, reason: str) -> bool:
        """Move a SUSPENDED invocation to PENDING and enqueue it; False when it is not
        suspended (running, paused, ended: then whoever drives it next sees the
        completion when it replays)."""

        def change(r: Record) -> None:
            if r.status != S.INVOCATION_STATUS_SUSPENDED:
                raise MutationRefused("not suspended", r)
            r.status = S.INVOCATION_STATUS_PENDING
            r.generation += 1
            r.continuations += 1
            r.status_reason = ""
            del r.waiting_for[:]

        try:
            written = await self._records.mutate(invocation_id, change)
        except (MutationRefused, RecordNotFound):
            return False
        await self._work.enqueue(
            invocation_id,
            written.record.generation,
            reason,
            incarnation=written.record.created_at.ToNanoseconds(),
        )
        return True

    async def enqueue_current(self, invocation_id: str, reason: str) -> None:
        """Enqueue an invocation at its record's generation (one that just got its key)."""
        try:
            current = await self._records.get(invocation_id)
        except RecordNotFound:
            return
        await self._work.enqueue(
            invocation_id,
            current.record.generation,
            reason,
            dedupe=":key",
            incarnation=current.record.created_at.ToNanoseconds(),
        )

    async def schedule_timer(self, invocation_id: str, index: int, due: Timestamp) -> None:
        """Have the server wake the invocation at ``due``. Publishing again replaces the
        schedule (one per subject), so suspending twice on one timer keeps one."""
        item = storage_pb2.WorkItem(invocation_id=invocation_id, reason=f"timer #{index}")
        await self._js.publish(
            self._cfg.timer_subject(invocation_id, index),
            item.SerializeToString(),
            headers={
                "Nats-Schedule": _at(due),
                "Nats-Schedule-Target": self._cfg.wake_subject(invocation_id),
            },
        )

    async def start(self, record: Record, *, at: Timestamp | None = None) -> bool:
        """Start an invocation from a handler (ctx.call, ctx.send): create its record, then
        enqueue its work item (or schedule it for ``at``). False when it existed already,
        which is how a replay finds the one it started before instead of a second one."""
        if await self._records.create(record) is None:
            return False
        if at is None:
            await self._work.enqueue(
                record.id,
                record.generation,
                "call",
                incarnation=record.created_at.ToNanoseconds(),
            )
            return True
        item = storage_pb2.WorkItem(
            invocation_id=record.id, reason="delayed send", generation=record.generation
        )
        await self._js.publish(
            self._cfg.delay_subject(record.id),
            item.SerializeToString(),
            headers={
                "Nats-Schedule": _at(at),
                "Nats-Schedule-Target": self._cfg.work_subject(record.id),
                "Nats-Msg-Id": f"{record.id}:scheduled",
            },
        )
        return True

    async def drop_schedule(self, invocation_id: str) -> None:
        """Remove the delayed start of a SCHEDULED invocation (it is started now instead)."""
        with contextlib.suppress(NotFoundError):
            await self._js.purge_stream(
                self._cfg.work_stream, subject=self._cfg.delay_subject(invocation_id)
            )

    async def complete_awakeable(
        self, invocation_id: str, index: int, outcome: storage_pb2.JournalRecord
    ) -> None:
        """Store an awakeable's resolution (once: a second one raises AlreadyCompleted),
        then wake its invocation."""
        await self._store_once(self._cfg.awakeable_subject(invocation_id, index), outcome)
        await self.wake(invocation_id, "awakeable")

    async def awakeable_outcome(
        self, invocation_id: str, index: int
    ) -> storage_pb2.JournalRecord | None:
        """The stored resolution of an awakeable, if any."""
        return await self._stored(self._cfg.awakeable_subject(invocation_id, index))

    async def complete_promise(
        self, run_id: str, name_token: str, outcome: storage_pb2.JournalRecord
    ) -> None:
        """Store a workflow promise's resolution (once), then wake the workflow's run."""
        await self._store_once(self._cfg.promise_subject(run_id, name_token), outcome)
        await self.wake(run_id, "promise")

    async def promise_outcome(
        self, run_id: str, name_token: str
    ) -> storage_pb2.JournalRecord | None:
        return await self._stored(self._cfg.promise_subject(run_id, name_token))

    async def _store_once(self, subject: str, outcome: storage_pb2.JournalRecord) -> None:
        try:
            await self._js.publish(
                subject,
                outcome.SerializeToString(),
                headers={"Nats-Expected-Last-Subject-Sequence": "0"},
            )
        except APIError as err:
            if err.err_code in _WRONG_LAST_SEQUENCE:
                raise AlreadyCompleted(subject) from err
            raise

    async def _stored(self, subject: str) -> storage_pb2.JournalRecord | None:
        try:
            msg = await self._js.get_msg(
                self._cfg.journal_stream, subject=subject, direct=self._cfg.direct_reads
            )
        except NotFoundError:
            return None
        entry = storage_pb2.JournalRecord()
        entry.ParseFromString(msg.data or b"")
        return entry
