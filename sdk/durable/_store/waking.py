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
from collections.abc import Iterable

from google.protobuf.timestamp_pb2 import Timestamp
from nats.js import JetStreamContext
from nats.js.errors import APIError, KeyNotFoundError, NoKeysError, NotFoundError
from nats.js.kv import KeyValue

from durable._limits import MAX_KEY_CHARS, text_problem
from durable._store.completions import check_awakeable_step, check_promise_room
from durable._store.config import EngineConfig
from durable._store.ids import awakeable_id, service_of, workflow_run_id
from durable._store.journal import Journal
from durable._store.objects import KeyQueue
from durable._store.records import (
    MutationRefused,
    Record,
    RecordNotFound,
    RecordStore,
    is_terminal,
)
from durable._store.workqueue import WorkQueue, lane_of_record
from durable.errors import TerminalError
from durable.internal.v1 import storage_pb2
from durable.v1 import types_pb2

log = logging.getLogger("durable.waking")
S = types_pb2

_WRONG_LAST_SEQUENCE = (10071, 10164)


class UnknownHandler(LookupError):
    """ctx.call or ctx.send names a handler no worker has registered."""


class AlreadyCompleted(Exception):
    """The awakeable was resolved or rejected before."""


def _at(ts: Timestamp) -> str:
    """``@at`` schedule with the fraction kept, so it does not fire up to a second early."""
    when = ts.ToDatetime(tzinfo=dt.UTC)
    return "@at " + when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class HandlerKinds:
    """The kind of every registered handler: this process's own, then the workers bucket."""

    def __init__(self, local: dict[str, int], workers: KeyValue | None = None) -> None:
        self._kinds = dict(local)
        self._workers = workers

    async def kind_of(self, handler: str) -> int | None:
        """The handler's kind, or None when no worker has registered it."""
        if handler not in self._kinds and self._workers is not None:
            with contextlib.suppress(NoKeysError):
                for name in await self._workers.keys():
                    with contextlib.suppress(KeyNotFoundError):
                        entry = await self._workers.get(name)
                        reg = storage_pb2.WorkerRegistration()
                        reg.ParseFromString(entry.value or b"")
                        for h in reg.handlers:
                            self._kinds[h.name] = h.kind
        return self._kinds.get(handler)


class Waker:
    """The writes that start, suspend-and-wake and complete invocations."""

    def __init__(
        self,
        js: JetStreamContext,
        cfg: EngineConfig,
        records: RecordStore,
        work: WorkQueue,
        *,
        keys: KeyQueue | None = None,
        kinds: HandlerKinds | None = None,
    ) -> None:
        self._js = js
        self._cfg = cfg
        self._records = records
        self._work = work
        self.keys = keys
        self.kinds = kinds or HandlerKinds({})

    async def wake(self, invocation_id: str, reason: str) -> bool:
        """Move a SUSPENDED invocation to PENDING and enqueue it; False when it is not
        suspended (running, paused, ended: then whoever drives it next sees the
        completion when it replays).

        A record found PENDING may be a wake-up whose waker died between its CAS and its
        enqueue (this call may be that wake-up, redelivered): its item is made sure of.
        """

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
        except MutationRefused as refused:
            await self.ensure_item(refused.record, reason)
            return False
        except RecordNotFound:
            return False
        await self._work.enqueue_record(written.record, reason)
        return True

    async def ensure_item(self, record: Record, reason: str) -> bool:
        """Enqueue a PENDING invocation's item at its generation unless the newest item has
        that generation already (queued, or in a worker's hands: workers ack an item only
        once the record moved on). True when it enqueued.

        Whoever changes a record so that it needs work enqueues right after the CAS; this
        repairs a writer that died in between, for anyone who finds the change made (a
        redelivered wake-up, a repeated Invoke, Resume or Cancel) instead of leaving it to
        the reconciler. Racing repairs of one generation are stored once (message id).
        """
        if record.status != S.INVOCATION_STATUS_PENDING:
            return False
        item = await self._work.latest_item(record.id, record.handler)
        if item is not None and item.generation >= record.generation:
            return False
        log.info("enqueueing %s at generation %d (%s)", record.id, record.generation, reason)
        await self._work.enqueue_record(record, reason)
        return True

    async def exists(self, invocation_id: str) -> bool:
        """Whether the invocation's record exists (it was not purged)."""
        try:
            await self._records.get(invocation_id)
        except RecordNotFound:
            return False
        return True

    async def to_own_lane(self, record: Record, *, fresh: bool = False) -> None:
        """Enqueue a pinned invocation's item in its version's lane (it was found in
        another); ``fresh``: the item carries ``record`` as not yet written."""
        await self._work.enqueue_record(record, "its version's lane", dedupe=":lane", fresh=fresh)

    async def enqueue_current(self, invocation_id: str, reason: str) -> None:
        """Enqueue an invocation at its record's generation (one that just got its key)."""
        try:
            current = await self._records.get(invocation_id)
        except RecordNotFound:
            return
        await self._work.enqueue_record(current.record, reason, dedupe=":key")

    async def schedule_timer(
        self, invocation_id: str, handler: str, index: int, due: Timestamp
    ) -> None:
        """Have the server wake the invocation at ``due`` (a wake-up on its service's
        subject). Publishing again replaces the schedule (one per subject), so suspending
        twice on one timer keeps one."""
        item = storage_pb2.WorkItem(invocation_id=invocation_id, reason=f"timer #{index}")
        await self._js.publish(
            self._cfg.timer_subject(invocation_id, index),
            item.SerializeToString(),
            headers={
                "Nats-Schedule": _at(due),
                "Nats-Schedule-Target": self._cfg.wake_subject(service_of(handler), invocation_id),
            },
        )

    async def start(self, record: Record, *, at: Timestamp | None = None) -> str:
        """Start an invocation from a handler (ctx.call, ctx.send); returns its id.

        Creates its record, then queues it as its handler's kind asks: on its object key
        (exclusive handlers), once per workflow id (a workflow's run, whose id is derived
        from it), or straight to the work queue; with ``at``, a message schedule starts it
        then. A record that exists already means a replay started it before (or, for a
        workflow, someone did): nothing is started twice.
        """
        kind = await self.kinds.kind_of(record.handler)
        if kind is None:
            # Retried (the handler's policy): a worker hosting it may be on its way.
            raise UnknownHandler(
                f"handler {record.handler} is not registered by any worker; check the name, "
                "or start a worker that hosts it"
            )
        obj = service_of(record.handler)
        if kind != S.HANDLER_KIND_SERVICE and not record.key:
            raise TerminalError(f"{record.handler} needs a key (ctx.call/ctx.send key=...)")
        if kind == S.HANDLER_KIND_SERVICE and record.key:
            raise TerminalError(f"{record.handler} is a service handler; it takes no key")
        if (problem := text_problem(record.key, MAX_KEY_CHARS)) is not None:
            raise TerminalError(f"the key of a call to {record.handler} {problem}")
        run = kind == S.HANDLER_KIND_WORKFLOW_RUN
        if run:
            record.id = workflow_run_id(obj, record.key)
        # A callee's id is derived from its caller's step: one that was purged stays purged
        # (its caller learns so when it awaits it). A workflow id may be used again.
        if await self._records.create(record, reuse_purged_id=run) is None:
            if record.caller_id:
                await self._add_caller(record.id, record.caller_id)
            await self._started_before(record.id, kind)
            return record.id
        if at is not None:
            await self._schedule_start(record, at)
        elif kind != S.HANDLER_KIND_OBJECT_EXCLUSIVE or (
            self.keys is not None and await self.keys.enqueue(obj, record.key, record.id)
        ):
            await self._work.enqueue_record(record, "call")
        return record.id

    async def _started_before(self, invocation_id: str, kind: int) -> None:
        """A replay starts a callee again that an earlier attempt created: if that attempt
        died before queueing it, queue it now."""
        try:
            current = (await self._records.get(invocation_id)).record
        except RecordNotFound:
            return
        if current.status != S.INVOCATION_STATUS_PENDING:
            return
        if kind == S.HANDLER_KIND_OBJECT_EXCLUSIVE and self.keys is not None:
            obj = service_of(current.handler)
            if await self.keys.holder(obj, current.key) != invocation_id:
                return  # queued behind the key's holder, which passes it on
        await self.ensure_item(current, "call")

    async def _add_caller(self, invocation_id: str, caller: str) -> None:
        def change(r: Record) -> None:
            if r.caller_id == caller or caller in r.more_callers or is_terminal(r.status):
                raise MutationRefused("nothing to add", r)
            r.more_callers.append(caller)

        with contextlib.suppress(MutationRefused, RecordNotFound):
            await self._records.mutate(invocation_id, change)

    async def _schedule_start(self, record: Record, at: Timestamp) -> None:
        item = storage_pb2.WorkItem(
            invocation_id=record.id, reason="delayed send", generation=record.generation
        )
        await self._js.publish(
            self._cfg.delay_subject(record.id),
            item.SerializeToString(),
            headers={
                "Nats-Schedule": _at(at),
                "Nats-Schedule-Target": self._cfg.run_subject(
                    service_of(record.handler), record.id, lane_of_record(record)
                ),
                "Nats-Msg-Id": f"{record.id}:scheduled",
            },
        )

    async def ended(self, record: Record, *, exclusive: bool) -> None:
        """After ``record`` ended: pass its object key on (``exclusive``) and wake every
        invocation waiting for its result. Idempotent, so whoever finds an invocation ended
        may call it again (a worker that died after the record write left it undone)."""
        if exclusive and self.keys is not None:
            nxt = await self.keys.release(service_of(record.handler), record.key, record.id)
            if nxt is not None:
                await self.enqueue_current(nxt, "key free")
        for caller in [record.caller_id, *record.more_callers]:
            if caller:
                await self.wake(caller, f"call {record.id} ended")

    async def hand_key_on(self, obj: str, key: str) -> None:
        """Make sure an object key's line moves: the key held by an invocation that has not
        ended and has its work item, or free with nobody waiting. Repairs a key left free
        with a line (see ``KeyQueue.take_if_free``) and one still held by an invocation that
        ended or was purged (a worker died before passing it on). Idempotent."""
        assert self.keys is not None
        holder = await self.keys.holder(obj, key) or await self.keys.take_if_free(obj, key)
        for _ in range(1000):  # each turn moves the lock one place down the line
            if holder is None:
                return
            try:
                record: Record | None = (await self._records.get(holder)).record
            except RecordNotFound:
                record = None
            if record is not None and not is_terminal(record.status):
                await self.ensure_item(record, "key holder")
                return
            holder = await self.keys.release(obj, key, holder)

    async def drop_schedule(self, invocation_id: str) -> None:
        """Remove the delayed start of a SCHEDULED invocation (it is started now instead)."""
        with contextlib.suppress(NotFoundError):
            await self._js.purge_stream(
                self._cfg.work_stream, subject=self._cfg.delay_subject(invocation_id)
            )

    async def complete_awakeable(
        self,
        invocation_id: str,
        index: int,
        outcome: storage_pb2.JournalRecord,
        *,
        waiting_for: Iterable[types_pb2.WaitTarget] = (),
    ) -> None:
        """Store an awakeable's resolution (once: a second one raises AlreadyCompleted),
        then wake its invocation. A step that is not, and will not soon be, an awakeable
        raises CompletionRefused (``waiting_for``: the record's, when the caller has it)."""
        await check_awakeable_step(
            Journal(self._js, self._cfg),
            invocation_id,
            index,
            awakeable_id(invocation_id, index),
            waiting_for,
        )
        try:
            await self._store_once(self._cfg.awakeable_subject(invocation_id, index), outcome)
        except AlreadyCompleted:
            # Its completer may have died before the wake-up (a client retrying after an
            # error lands here): wake it anyway.
            await self.wake(invocation_id, "awakeable")
            raise
        await self.wake(invocation_id, "awakeable")

    async def awakeable_outcome(
        self, invocation_id: str, index: int
    ) -> storage_pb2.JournalRecord | None:
        """The stored resolution of an awakeable, if any."""
        return await self._stored(self._cfg.awakeable_subject(invocation_id, index))

    async def complete_promise(
        self, run_id: str, name_token: str, outcome: storage_pb2.JournalRecord
    ) -> None:
        """Store a workflow promise's resolution (once), then wake the workflow's run; a run
        that holds too many already raises CompletionRefused."""
        await check_promise_room(self._js, self._cfg, run_id, name_token)
        try:
            await self._store_once(self._cfg.promise_subject(run_id, name_token), outcome)
        except AlreadyCompleted:
            await self.wake(run_id, "promise")  # as for awakeables
            raise
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
