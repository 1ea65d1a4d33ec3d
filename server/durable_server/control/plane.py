"""Control-plane operations on invocations, independent of gRPC.

Every state change is a CAS on the record (``RecordStore.mutate``) whose change function
refuses, with a FAILED_PRECONDITION message, any transition the current state does not allow;
then, where a worker must act, a work item is enqueued or a signal is published.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable

from google.protobuf.message import DecodeError
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from durable.contract import (
    MAX_IDEMPOTENCY_KEY_CHARS,
    MAX_KEY_CHARS,
    AlreadyCompleted,
    EngineConfig,
    LoadedJournal,
    MutationRefused,
    NotAnAwakeable,
    Record,
    RecordNotFound,
    TooFarAhead,
    Versioned,
    Waker,
    at_start_up,
    idempotent_invocation_id,
    is_terminal,
    new_invocation_id,
    now_ts,
    open_store,
    parse_awakeable_id,
    quote,
    status_name,
    workflow_run_id,
)
from durable.internal.v1 import storage_pb2
from durable.v1 import types_pb2
from durable_server.control.catalog import HandlerCatalog, closest_names
from durable_server.control.index import InvocationIndex
from durable_server.control.keyed import KeyedControl
from durable_server.control.steering import (
    CancelChange,
    Refused,
    pause_change,
    resume_change,
)
from durable_server.control.validation import (
    E,
    RequestError,
    check_text,
    invalid,
    payload_to_stored,
    validate_input,
)
from durable_server.control.views import Progress, with_final
from durable_server.provision import provision

log = logging.getLogger("durable.control")
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


def _no_invocation(invocation_id: str) -> RequestError:
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


class ControlPlane:
    """The engine's control operations over one NATS connection."""

    def __init__(self, cfg: EngineConfig, nc: NATS) -> None:
        self.cfg = cfg
        self.nc = nc
        self.index = InvocationIndex()
        self.catalog = HandlerCatalog(live_after=3 * cfg.heartbeat_interval + 1)
        self.progress: dict[str, Progress] = {}
        self.started_at = now_ts()
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        js = self.nc.jetstream()
        await at_start_up(self.nc, lambda: self._open_stores(js), "the engine's streams")
        await self.nc.subscribe(f"{self.cfg.prefix}.progress.>", cb=self._on_progress)
        await self.nc.subscribe(self.cfg.journaled_subject("*"), cb=self._on_journaled)
        # Each step is tried again while JetStream elects (a follow creates a consumer).
        await at_start_up(
            self.nc,
            lambda: self.catalog.start(js, self.cfg.workers_bucket),
            "the handler catalog",
        )
        await at_start_up(
            self.nc,
            lambda: self.index.start(js, self.cfg.invocations_bucket),
            "the invocation index",
        )
        await at_start_up(self.nc, self._index_queued_items, "the queued work items")
        self._tasks.append(asyncio.create_task(self._reconcile_loop(), name="reconciler"))
        self._tasks.append(asyncio.create_task(self.keyed.retention_loop(), name="retention"))

    async def _index_queued_items(self) -> None:
        """Invocations accepted but not yet written by any worker exist only as work items
        (idempotent: an item already indexed is left as it is)."""
        async for item in self.work.queued_items():
            if item.HasField("initial"):
                self.index.apply_if_absent(item.initial)

    async def _open_stores(self, js: JetStreamContext) -> None:
        """Create what is missing and open every store (idempotent: tried again at start-up
        while JetStream elects leaders). The control plane provisions; workers only open."""
        await provision(self.nc, self.cfg)
        self.store = await open_store(self.nc, self.cfg)
        self.records = self.store.records
        self.journal = self.store.journal
        self.work = self.store.work
        self.keys = self.store.keys
        self.waker = Waker(js, self.cfg, self.records, self.work, keys=self.keys)
        self.state = self.store.state
        self.keyed = KeyedControl(self)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.index.stop()
        await self.catalog.stop()

    # -- invoke & await -------------------------------------------------------------------

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
        if kind == S.HANDLER_KIND_OBJECT_EXCLUSIVE:
            return await self.keyed.accept_exclusive(record)
        if kind == S.HANDLER_KIND_WORKFLOW_RUN:
            return await self.keyed.accept_run(record, id_conflict)
        return await self._accept(record)

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
        await self.work.enqueue(record.id, 1, "invoke", initial=record)
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
            raise _no_invocation(invocation_id) from None

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
                await self.work.retire_fresh_item(invocation_id)
                return Versioned(record, rev)
        raise _no_invocation(invocation_id)

    async def _create_pending(self, record: Record) -> None:
        summary = self.index.get(record.id)
        if summary is not None and summary.status != S.INVOCATION_STATUS_PENDING:
            return  # a worker claimed it: the record exists
        if summary is None or summary.attempt == 0:
            await self.records.create(record)

    def _spawn_create_pending(self, record: Record) -> None:
        task = asyncio.create_task(self._create_pending(record))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def load_journal(self, invocation_id: str) -> LoadedJournal:
        return await self.journal.load(invocation_id)

    async def status_of(self, record: Record) -> int:
        """The record's status, or the journaled outcome's when that came first (the
        record of an invocation that just ended follows its final entry)."""
        if is_terminal(record.status):
            return record.status
        last = await self.journal.final_entry(record.id)
        return last.final.status if last is not None else record.status

    # -- steering -------------------------------------------------------------------------

    async def _mutate(self, invocation_id: str, change: Callable[[Record], None]) -> Record:
        current = await self.get_record(invocation_id)
        status = await self.status_of(current.record)
        if is_terminal(status) and not is_terminal(current.record.status):
            raise RequestError(
                f"invocation {invocation_id} already ended ({status_name(status)}); "
                "nothing is left to change",
                E.ERROR_REASON_INVOCATION_ENDED,
                invocation_id=invocation_id,
                status=status_name(status),
            )
        try:
            written = await self.records.mutate(invocation_id, change, current=current)
        except MutationRefused as err:
            # Refused as already done (a client trying again after an error): the call that
            # did it may have died before enqueueing what the record needs.
            await self.waker.ensure_item(err.record, "steering")
            reason = err.reason if isinstance(err, Refused) else E.ERROR_REASON_INVOCATION_ENDED
            raise RequestError(
                str(err),
                reason,
                invocation_id=invocation_id,
                status=status_name(err.record.status),
            ) from None
        return written.record

    async def pause(self, invocation_id: str, reason: str) -> Record:
        record = await self._mutate(invocation_id, pause_change(reason))
        # Always: a worker may be running a fresh invocation before writing its record.
        await self.signal(invocation_id, {"pause": True})
        return record

    async def resume(self, invocation_id: str) -> Record:
        record = await self._mutate(invocation_id, resume_change())
        await self.signal(invocation_id, {"resume": True})
        if record.status == S.INVOCATION_STATUS_PENDING:
            await self.work.enqueue_record(record, "resume")
        return record

    async def cancel(self, invocation_id: str, reason: str) -> Record:
        reason = reason or "cancelled by an operator"
        change = CancelChange(reason)
        before = (await self.get_record(invocation_id)).record.status
        if before == S.INVOCATION_STATUS_SCHEDULED:
            # It runs now, to see the cancellation: its delayed start must not come later.
            await self.waker.drop_schedule(invocation_id)
        record = await self._mutate(invocation_id, change)
        woke_from = change.woke_from
        if woke_from == S.INVOCATION_STATUS_SCHEDULED and before != woke_from:
            await self.waker.drop_schedule(invocation_id)
        await self.signal(invocation_id, {"cancel": True, "reason": reason})
        # Decided by what the CAS wrote, not by a read before it: the record may have moved
        # in between (a Pause, a Resume, a worker), and a PENDING record needs its item.
        if woke_from != S.INVOCATION_STATUS_UNSPECIFIED:
            await self.work.enqueue_record(record, "cancel")
        else:
            await self.waker.ensure_item(record, "cancel")
        return record

    async def complete_awakeable(
        self, awakeable_id: str, outcome: storage_pb2.JournalRecord
    ) -> str:
        """Resolve or reject an awakeable; the id names its invocation, so nothing is
        scanned. Returns the invocation id."""
        parsed = parse_awakeable_id(awakeable_id)
        if parsed is None:
            raise invalid(
                f"awakeable_id {quote(awakeable_id)} is not an awakeable id; they look like "
                "awk_<26 characters>_<step>, as ctx.awakeable() returned it",
                E.ERROR_REASON_AWAKEABLE_ID_MALFORMED,
                awakeable_id=awakeable_id[:80],
            )
        invocation_id, index = parsed
        try:
            record = await self.view_record(invocation_id)
        except RequestError:
            raise RequestError(
                f"no awakeable {awakeable_id}: its invocation {invocation_id} does not exist "
                "(never created, or purged)",
                E.ERROR_REASON_INVOCATION_NOT_FOUND,
                invocation_id=invocation_id,
            ) from None
        status = await self.status_of(record)
        if is_terminal(status):
            raise RequestError(
                f"awakeable {awakeable_id} belongs to invocation {invocation_id}, which "
                f"already ended ({status_name(status)}); nothing waits for it any more",
                E.ERROR_REASON_INVOCATION_ENDED,
                invocation_id=invocation_id,
                status=status_name(status),
            )
        try:
            await self.waker.complete_awakeable(
                invocation_id, index, outcome, waiting_for=record.waiting_for
            )
        except NotAnAwakeable as err:
            raise RequestError(
                str(err),
                E.ERROR_REASON_AWAKEABLE_NOT_FOUND,
                awakeable_id=awakeable_id,
            ) from None
        except TooFarAhead as err:
            raise RequestError(
                str(err),
                E.ERROR_REASON_AWAKEABLE_OUT_OF_RANGE,
                awakeable_id=awakeable_id,
            ) from None
        except AlreadyCompleted:
            raise RequestError(
                f"awakeable {awakeable_id} was already resolved or rejected; the first "
                "completion stands",
                E.ERROR_REASON_ALREADY_COMPLETED,
                awakeable_id=awakeable_id,
            ) from None
        return invocation_id

    async def signal(self, invocation_id: str, body: dict[str, object]) -> None:
        """Tell the worker driving the invocation at once (core NATS, not stored: the record
        holds the truth, this only saves waiting for the worker's next look)."""
        await self.nc.publish(self.cfg.signal_subject(invocation_id), json.dumps(body).encode())

    # -- background -----------------------------------------------------------------------

    async def _on_journaled(self, msg: Msg) -> None:
        """An invocation's final entry was stored: answer whoever waits for it now, before
        the record (and so the index) catches up."""
        entry = storage_pb2.JournalRecord()
        try:
            entry.ParseFromString(msg.data)
        except DecodeError:
            return
        if not entry.HasField("final"):
            return
        ended = with_final(Record(id=msg.subject.rsplit(".", 1)[-1]), entry)
        self.index.mark_ended(ended)
        if not entry.final.state_follows:
            # Otherwise the record, written once the state is, answers them (index.apply).
            self.index.resolve_waiters(ended)

    async def _on_progress(self, msg: Msg) -> None:
        subject = msg.subject
        try:
            body = json.loads(msg.data)
            self.progress[subject.rsplit(".", 1)[-1]] = Progress(
                int(body["i"]), int(body["k"]), str(body["n"]), float(body["t"])
            )
        except (ValueError, KeyError, TypeError):
            return
        if len(self.progress) > 100_000:
            # Keep only running invocations' entries.
            for inv in list(self.progress):
                s = self.index.get(inv)
                if s is None or s.status != S.INVOCATION_STATUS_RUNNING:
                    del self.progress[inv]

    async def _reconcile_loop(self) -> None:
        """Enqueue again a PENDING invocation whose work item is missing.

        That happens only when a process died between writing the record and the work item
        (e.g. the control plane during Invoke or Resume); the client then got no answer.
        """
        while True:
            await asyncio.sleep(self.cfg.reconcile_after)
            cutoff = time.time_ns() - int(self.cfg.reconcile_after * 1e9)
            keys_seen: set[tuple[str, str]] = set()
            for invocation_id in self.index.stale(cutoff):
                try:
                    current = await self.records.get(invocation_id)
                    item = await self.work.latest_item(invocation_id)
                    # The newest item is the record's generation (queued or in flight: a
                    # worker acks it only once the record moved on), or it never made it.
                    if item is not None and item.generation >= current.record.generation:
                        continue
                    if current.record.status == S.INVOCATION_STATUS_SCHEDULED and (
                        current.record.scheduled_at.ToNanoseconds() > cutoff
                    ):
                        continue  # its schedule is not due yet (or only just fired)
                    if not await self.keyed.may_run(current.record):
                        # Queued behind its key's holder, which passes the key on; unless
                        # that holder ended, or nobody holds it, when a process died in
                        # between: move the line on.
                        line = (current.record.handler.split("/", 1)[0], current.record.key)
                        if line not in keys_seen:
                            keys_seen.add(line)
                            await self.waker.hand_key_on(*line)
                        continue
                    if current.record.status in _WAITING_FOR_ITEM:
                        log.info("re-enqueueing %s (work item missing)", invocation_id)
                        await self.work.enqueue_record(current.record, "reconcile")
                except RecordNotFound:
                    continue
                except Exception:
                    log.exception("reconcile %s failed", invocation_id)
