"""Invocations, independent of gRPC: accepting them (Invoke, idempotency keys, exclusive
object invocations, workflow runs), and reading them (the record, before any worker wrote
it too; the journal; the outcome, awaited as soon as the journal holds it).

Refusals are ``RequestError`` with a stable reason; the servicer maps them to statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator

from durable.contract import (
    MAX_IDEMPOTENCY_KEY_CHARS,
    MAX_KEY_CHARS,
    EngineConfig,
    LoadedJournal,
    Record,
    RecordNotFound,
    Store,
    Versioned,
    Waker,
    idempotent_invocation_id,
    is_terminal,
    lane_of_record,
    metrics,
    new_invocation_id,
    now_ts,
    quote,
    service_of,
    status_name,
    tracing,
    workflow_run_id,
)
from durable.internal.v1 import storage_pb2
from durable.v1 import control_pb2, types_pb2
from durable_server.control.catalog import HandlerCatalog, closest_names
from durable_server.control.index import InvocationIndex
from durable_server.control.validation import (
    E,
    RequestError,
    check_text,
    invalid,
    payload_to_stored,
    validate_input,
)
from durable_server.control.views import with_final

S = types_pb2

# How many registered handlers a NOT_FOUND names; ListHandlers has them all.
_KNOWN_SHOWN = 20


def _unknown_handler(name: str, names: list[str]) -> str:
    """Why ``name`` is refused, with the names it was likely meant to be (or, without any
    close one, the registered ones, up to a few)."""
    said = f"handler {quote(name)} is not registered"
    if not names:
        return f"{said}; no worker has registered any handler yet (is a worker running?)"
    close = closest_names(name, names)
    if close:
        return f"{said}; did you mean {' or '.join(close)}? (ListHandlers lists them all)"
    known = ", ".join(names[:_KNOWN_SHOWN])
    if len(names) > _KNOWN_SHOWN:
        known += f" and {len(names) - _KNOWN_SHOWN} more (see ListHandlers)"
    return f"{said}; known handlers: {known}"


_WORKFLOW_KINDS = (S.HANDLER_KIND_WORKFLOW_RUN, S.HANDLER_KIND_WORKFLOW_SHARED)
# Statuses whose invocation needs a work item to move on (the reconciler checks it has one).
_WAITING_FOR_ITEM = (S.INVOCATION_STATUS_PENDING, S.INVOCATION_STATUS_SCHEDULED)


def no_invocation(invocation_id: str) -> RequestError:
    return RequestError(
        f"no invocation {invocation_id} (never created, or purged)",
        E.ERROR_REASON_INVOCATION_NOT_FOUND,
        invocation_id=invocation_id,
    )


async def _within(fut: asyncio.Future[Record], timeout: float | None) -> Record | None:
    """The waiter's record, or None once ``timeout`` passed. The future is this caller's
    own, so it is awaited directly: the answer then costs one wake-up of the task, not the
    chain of callbacks of ``wait_for`` over ``shield``."""
    if timeout is None:
        return await fut
    if timeout <= 0:
        return fut.result() if fut.done() else None
    expired = False

    def expire() -> None:
        nonlocal expired
        if not fut.done():
            expired = True
            fut.cancel()

    timer = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        return await fut
    except asyncio.CancelledError:
        if expired:
            return None
        raise
    finally:
        timer.cancel()


def _same_payload(a: storage_pb2.StoredPayload, b: storage_pb2.StoredPayload) -> bool:
    if a.content_type != b.content_type:
        return False
    if a.content_type == "application/json" and a.data != b.data:
        try:
            return bool(json.loads(a.data or b"null") == json.loads(b.data or b"null"))
        except (ValueError, RecursionError):  # stored by an older version: compare bytes
            return False
    return a.data == b.data


class Invocations:
    """Accepting and reading invocations over one engine's store."""

    def __init__(
        self,
        cfg: EngineConfig,
        store: Store,
        waker: Waker,
        index: InvocationIndex,
        catalog: HandlerCatalog,
    ) -> None:
        self.cfg = cfg
        self.records = store.records
        self.journal = store.journal
        self.work = store.work
        self.keys = store.keys
        self.waker = waker
        self.index = index
        self.catalog = catalog
        #: Writes of PENDING records still to come (tests wait for them to settle).
        self.pending_writes: set[asyncio.Task[None]] = set()

    async def invoke(
        self,
        handler: str,
        key: str,
        payload: types_pb2.Payload,
        idempotency_key: str,
        *,
        wait: bool = False,
        timeout: float | None = None,
        id_conflict: int = 0,
    ) -> tuple[Record, bool, bool]:
        """Store and enqueue a new invocation; returns (record, already_existed, ended).

        With ``wait``, also wait up to ``timeout`` for it to end; the record returned is then
        the final one when ``ended``.
        """
        info = self.handler_info(handler)
        if info.kind == S.HANDLER_KIND_SERVICE and key:
            raise invalid(
                f"{handler} is a service handler; it takes no key (got {quote(key)})",
                E.ERROR_REASON_KEY_NOT_ALLOWED,
                handler=handler,
            )
        if info.kind != S.HANDLER_KIND_SERVICE and not key:
            what = "workflow id" if info.kind in _WORKFLOW_KINDS else "object key"
            raise invalid(
                f"{handler} needs a key, the {what} it runs for: set the request's key field "
                "(`durable invoke --key K`, Client.invoke(..., key=K))",
                E.ERROR_REASON_KEY_REQUIRED,
                handler=handler,
            )
        check_text("key", key, MAX_KEY_CHARS)
        check_text("idempotency_key", idempotency_key, MAX_IDEMPOTENCY_KEY_CHARS)
        data, content_type = payload_to_stored(payload, self.cfg.max_payload_bytes, "input")
        validate_input(info, data, content_type)
        now = now_ts()
        record = Record(
            id=(
                idempotent_invocation_id(handler, key, idempotency_key)
                if idempotency_key
                else new_invocation_id()
            ),
            handler=handler,
            key=key,
            input=storage_pb2.StoredPayload(data=data, content_type=content_type),
            status=S.INVOCATION_STATUS_PENDING,
            idempotency_key=idempotency_key,
            created_at=now,
            updated_at=now,
            generation=1,
        )
        if info.kind == S.HANDLER_KIND_WORKFLOW_RUN:
            record.id = workflow_run_id(info.service, key)
        tracing.stamp(record.trace_context)  # Invoke's span: every attempt is its child
        tracing.annotate({"durable.invocation_id": record.id, "durable.handler": handler})
        pinned_to = self.catalog.pinned_version(handler)
        if pinned_to is not None:
            # New invocations of a pinned service go to its newest version, and stay there.
            record.version = pinned_to
            record.pinned = True
        accept = functools.partial(self._accept_kind, info.kind, id_conflict)
        if not wait:
            existing = await accept(record)
            return (record, False, False) if existing is None else (existing, True, False)
        # Listen for the end before anything is written, so no change can slip past.
        async with self._outcome(record.id) as fut:
            if await accept(record) is not None:
                existing, ended = await self.await_result(record.id, timeout)
                return existing, True, ended
            final = await _within(fut, timeout)
            if final is not None:
                return final, False, True
            return await self.view_record(record.id), False, False

    async def _accept_kind(self, kind: int, id_conflict: int, record: Record) -> Record | None:
        """Store and enqueue ``record``; the invocation that exists instead, if one does."""
        if kind == S.HANDLER_KIND_OBJECT_EXCLUSIVE:
            existing = await self._accept_exclusive(record)
        elif kind == S.HANDLER_KIND_WORKFLOW_RUN:
            existing = await self._accept_run(record, id_conflict)
        else:
            existing = await self._accept(record)
        if existing is None:
            metrics.METRICS.started(record.handler)
        return existing

    async def _accept(self, record: Record) -> Record | None:
        """Store and enqueue a new invocation; the existing one instead when its idempotency
        key was used before (with the same input)."""
        if record.idempotency_key:
            # Create first: only the Invoke that created the record enqueues it, unless a
            # repeat finds it still PENDING with no item (that Invoke died in between, and
            # this is likely its client trying again).
            if await self.records.create(record, reuse_purged_id=True) is None:
                existing = await self.check_same_input(record)
                await self.waker.ensure_item(existing, "invoke")
                return existing
            await self.work.enqueue_record(record, "invoke")
            return None
        # A fresh id cannot exist yet, so the work item alone accepts the invocation: one
        # write. The worker creates the record as it claims it; if no worker does so soon,
        # we create it PENDING so that every control plane lists it.
        await self.work.enqueue(
            record.id,
            record.handler,
            1,
            "invoke",
            initial=record,
            lane=lane_of_record(record),
        )
        self.index.apply_if_absent(record)
        asyncio.get_running_loop().call_later(
            self.cfg.pending_record_after, self._spawn_create_pending, record
        )
        return None

    async def check_same_input(self, record: Record) -> Record:
        """The invocation an idempotent request names, if it was made with the same input;
        IDEMPOTENCY_KEY_CONFLICT otherwise."""
        existing = await self.view_record(record.id)
        if not _same_payload(existing.input, record.input):
            raise RequestError(
                f"idempotency key {quote(record.idempotency_key)} was already used for invocation "
                f"{record.id} of {record.handler} with a different input; send the same "
                "input to get that invocation, or use a new key",
                E.ERROR_REASON_IDEMPOTENCY_KEY_CONFLICT,
                invocation_id=record.id,
                idempotency_key=record.idempotency_key[:64],
            )
        return existing

    def handler_info(self, name: str) -> types_pb2.HandlerInfo:
        """A registered handler by full name; HANDLER_NOT_FOUND (with close names) if none."""
        if not name:
            raise invalid(
                "handler is required, as '<service>/<handler>' (see ListHandlers)",
                field="handler",
            )
        handlers = self.catalog.handlers()
        info = handlers.get(name)
        if info is None:
            close = closest_names(name, sorted(handlers))
            metadata = {"handler": name[:64]}
            if close:
                metadata["did_you_mean"] = ",".join(close)
            raise RequestError(
                _unknown_handler(name, sorted(handlers)),
                E.ERROR_REASON_HANDLER_NOT_FOUND,
                **metadata,
            )
        return info

    async def await_result(self, invocation_id: str, timeout: float | None) -> tuple[Record, bool]:
        """The record once ended (True), or as it is when the timeout passes (False)."""
        async with self._outcome(invocation_id) as fut:
            current = await self.view_record(invocation_id)
            if is_terminal(current.status):
                return current, True
            # Journaled before we listened, with the record not written yet (unless its
            # object state is still being written: then the record answers).
            last = await self.journal.final_entry(invocation_id)
            if last is not None and not last.final.state_follows:
                return with_final(Record(id=invocation_id), last), True
            final = await _within(fut, timeout)
            if final is not None:
                return final, True
            return await self.view_record(invocation_id), False

    @contextlib.asynccontextmanager
    async def _outcome(self, invocation_id: str) -> AsyncIterator[asyncio.Future[Record]]:
        """A future for the end of one invocation, resolved by whichever comes first: the
        journal stream republishing its final entry (as soon as it is stored, before the
        worker writes the record; see ``_on_journaled``) or its terminal record arriving
        in the index."""
        fut = self.index.waiter(invocation_id)
        try:
            yield fut
        finally:
            self.index.drop_waiter(invocation_id, fut)

    async def view_record(self, invocation_id: str) -> Record:
        """The record, or, before any worker wrote it, as its queued work item carries it."""
        try:
            return (await self.records.get(invocation_id)).record
        except RecordNotFound:
            pass
        item = await self.work.latest_item(invocation_id)
        if item is not None and item.HasField("initial"):
            return item.initial
        try:  # a worker may have written it since our first look
            return (await self.records.get(invocation_id)).record
        except RecordNotFound:
            raise no_invocation(invocation_id) from None

    async def get_record(self, invocation_id: str) -> Versioned:
        """The record to change, created from its queued work item if no worker wrote it."""
        for _ in range(3):
            try:
                return await self.records.get(invocation_id)
            except RecordNotFound:
                pass
            record = await self.work.fresh_record(invocation_id)
            if record is None:
                break
            # A worker may be starting it without reading the record: fence it off first.
            await self.journal.seal(invocation_id)
            if (rev := await self.records.create(record)) is not None:
                await self.work.retire_fresh_item(record)
                return Versioned(record, rev)
        raise no_invocation(invocation_id)

    async def _create_pending(self, record: Record) -> None:
        summary = self.index.get(record.id)
        if summary is not None and summary.status != S.INVOCATION_STATUS_PENDING:
            return  # a worker claimed it: the record exists
        if summary is None or summary.attempt == 0:
            await self.records.create(record)

    def _spawn_create_pending(self, record: Record) -> None:
        task = asyncio.create_task(self._create_pending(record))
        self.pending_writes.add(task)
        task.add_done_callback(self.pending_writes.discard)

    async def load_journal(self, invocation_id: str) -> LoadedJournal:
        return await self.journal.load(invocation_id)

    async def status_of(self, record: Record) -> int:
        """The record's status, or the journaled outcome's when that came first (the
        record of an invocation that just ended follows its final entry)."""
        if is_terminal(record.status):
            return record.status
        last = await self.journal.final_entry(record.id)
        return last.final.status if last is not None else record.status

    async def _accept_exclusive(self, record: Record) -> Record | None:
        """Create the record, queue it on its key, and enqueue it if it holds the key."""
        obj = service_of(record.handler)
        if await self.records.create(record, reuse_purged_id=True) is None:
            existing = await self.check_same_input(record)
            # The Invoke that created it may have died (or timed out) before queueing it on
            # the key, taking the key or enqueueing it (this is likely its client trying
            # again): finish what it started. Queued once only: a second inbox entry would
            # hand it the key twice.
            if existing.status == S.INVOCATION_STATUS_PENDING:
                await self.keys.ensure_queued(obj, existing.key, existing.id)
                await self.waker.hand_key_on(obj, existing.key)
            return existing
        if await self.keys.enqueue(obj, record.key, record.id):
            await self.work.enqueue_record(record, "invoke")
        return None

    async def _accept_run(self, record: Record, id_conflict: int) -> Record | None:
        """A workflow's run: once per workflow id."""
        if await self.records.create(record, reuse_purged_id=True) is None:
            existing = await self.view_record(record.id)
            if id_conflict == control_pb2.ID_CONFLICT_POLICY_FAIL:
                raise RequestError(
                    f"workflow {record.handler} with id {quote(record.key)} already exists as "
                    f"{existing.id} ({status_name(existing.status)}); purge it to reuse the id",
                    E.ERROR_REASON_WORKFLOW_ID_TAKEN,
                    invocation_id=existing.id,
                )
            # The Invoke that created it may have died before enqueueing it.
            await self.waker.ensure_item(existing, "invoke")
            return existing
        await self.work.enqueue_record(record, "invoke")
        return None
