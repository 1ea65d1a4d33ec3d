"""Control-plane operations for virtual objects and workflows, and the ones that end or
delete invocations: accepting exclusive invocations and workflow runs, promises, object
state, Kill, Purge and retention.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from durable.contract import (
    MAX_KEY_CHARS,
    MAX_NAME_CHARS,
    AlreadyCompleted,
    JournalFenced,
    MutationRefused,
    Record,
    RecordNotFound,
    StateTooLarge,
    TooManyPromises,
    is_terminal,
    quote,
    status_name,
    token,
    workflow_run_id,
)
from durable.internal.v1 import storage_pb2
from durable.v1 import control_pb2, errors_pb2, types_pb2
from durable_server.control.validation import (
    RequestError,
    check_text,
    invalid,
    payload_to_stored,
    stored_to_payload,
)
from durable_server.control.views import with_final

E = errors_pb2

if TYPE_CHECKING:
    from durable_server.control.plane import ControlPlane

log = logging.getLogger("durable.control")
S = types_pb2
_STATEFUL = (
    S.HANDLER_KIND_OBJECT_EXCLUSIVE,
    S.HANDLER_KIND_OBJECT_SHARED,
    S.HANDLER_KIND_WORKFLOW_RUN,
    S.HANDLER_KIND_WORKFLOW_SHARED,
)
KILLED = "KilledError"


class KeyedControl:
    """What the control plane does for objects, workflows, Kill, Purge and retention."""

    def __init__(self, plane: ControlPlane) -> None:
        self._plane = plane

    # -- accepting ----------------------------------------------------------------------

    async def accept_exclusive(self, record: Record) -> Record | None:
        """Create the record, queue it on its key, and enqueue it if it holds the key."""
        p = self._plane
        obj = record.handler.split("/", 1)[0]
        if await p.records.create(record, reuse_purged_id=True) is None:
            existing = await p.check_same_input(record)
            # The Invoke that created it may have died (or timed out) before queueing it on
            # the key, taking the key or enqueueing it (this is likely its client trying
            # again): finish what it started. Queued once only: a second inbox entry would
            # hand it the key twice.
            if existing.status == S.INVOCATION_STATUS_PENDING:
                await p.keys.ensure_queued(obj, existing.key, existing.id)
                await p.waker.hand_key_on(obj, existing.key)
            return existing
        if await p.keys.enqueue(obj, record.key, record.id):
            await p.work.enqueue_record(record, "invoke")
        return None

    async def accept_run(self, record: Record, id_conflict: int) -> Record | None:
        """A workflow's run: once per workflow id."""
        p = self._plane
        if await p.records.create(record, reuse_purged_id=True) is None:
            existing = await p.view_record(record.id)
            if id_conflict == control_pb2.ID_CONFLICT_POLICY_FAIL:
                raise RequestError(
                    f"workflow {record.handler} with id {quote(record.key)} already exists as "
                    f"{existing.id} ({status_name(existing.status)}); purge it to reuse the id",
                    E.ERROR_REASON_WORKFLOW_ID_TAKEN,
                    invocation_id=existing.id,
                )
            # The Invoke that created it may have died before enqueueing it.
            await p.waker.ensure_item(existing, "invoke")
            return existing
        await p.work.enqueue_record(record, "invoke")
        return None

    async def may_run(self, record: Record) -> bool:
        """False for an exclusive invocation queued behind its key's holder."""
        info = self._plane.catalog.handlers().get(record.handler)
        if info is None or info.kind != S.HANDLER_KIND_OBJECT_EXCLUSIVE:
            return True
        obj = record.handler.split("/", 1)[0]
        return await self._plane.keys.holder(obj, record.key) == record.id

    # -- promises -----------------------------------------------------------------------

    async def complete_promise(
        self, handler: str, key: str, promise: str, outcome: storage_pb2.JournalRecord
    ) -> str:
        info = self._plane.handler_info(handler)
        if info.kind not in (S.HANDLER_KIND_WORKFLOW_RUN, S.HANDLER_KIND_WORKFLOW_SHARED):
            raise invalid(
                f"{handler} is not a workflow handler; only workflows have promises",
                E.ERROR_REASON_HANDLER_KIND_MISMATCH,
                handler=handler,
            )
        check_text("key", key, MAX_KEY_CHARS, required="the workflow id")
        check_text(
            "promise",
            promise,
            MAX_NAME_CHARS,
            required="the name the handler passed to ctx.promise",
        )
        run_id = workflow_run_id(info.service, key)
        try:
            record = await self._plane.view_record(run_id)
        except RequestError:
            raise RequestError(
                f"no workflow {info.service} with id {quote(key)} (never started, or purged)",
                E.ERROR_REASON_INVOCATION_NOT_FOUND,
                invocation_id=run_id,
            ) from None
        status = await self._plane.status_of(record)
        if is_terminal(status):
            raise RequestError(
                f"workflow {info.service} {quote(key)} already ended "
                f"({status_name(status)}); nothing awaits its promises",
                E.ERROR_REASON_INVOCATION_ENDED,
                invocation_id=run_id,
                status=status_name(status),
            )
        try:
            await self._plane.waker.complete_promise(run_id, token(promise), outcome)
        except TooManyPromises as err:
            raise RequestError(str(err), E.ERROR_REASON_TOO_MANY_PROMISES) from None
        except AlreadyCompleted:
            raise RequestError(
                f"promise {quote(promise)} of workflow {info.service} {quote(key)} was "
                "already resolved or rejected; the first completion stands",
                E.ERROR_REASON_ALREADY_COMPLETED,
            ) from None
        return run_id

    # -- state --------------------------------------------------------------------------

    def _check_object(self, obj: str, key: str) -> None:
        if not obj:
            raise invalid("object is required: the virtual object or workflow name", field="object")
        kinds = {h.kind for h in self._plane.catalog.handlers().values() if h.service == obj}
        if not kinds & set(_STATEFUL):
            raise RequestError(
                f"no virtual object or workflow named {quote(obj)} is registered",
                E.ERROR_REASON_OBJECT_NOT_FOUND,
                object=obj[:64],
            )
        check_text("key", key, MAX_KEY_CHARS, required="the object key or workflow id")

    async def get_state(self, obj: str, key: str) -> list[types_pb2.StateEntry]:
        self._check_object(obj, key)
        return _entries(await self._plane.state.load(obj, key))

    async def set_state(
        self, request: control_pb2.SetObjectStateRequest
    ) -> list[types_pb2.StateEntry]:
        obj, key = request.object, request.key
        self._check_object(obj, key)
        values: dict[str, storage_pb2.StoredPayload] = {}
        for e in request.set:
            check_text("a state entry's name", e.name, MAX_NAME_CHARS, required="every one")
            data, ct = payload_to_stored(
                e.value, self._plane.cfg.max_payload_bytes, f"state {quote(e.name)}"
            )
            values[e.name] = storage_pb2.StoredPayload(data=data, content_type=ct)
        for name in request.clear:
            check_text("a name to clear", name, MAX_NAME_CHARS, required="every one")

        def change(entries: dict[str, storage_pb2.StoredPayload]) -> None:
            if request.clear_all:
                entries.clear()
            for name in request.clear:
                entries.pop(name, None)
            entries.update(values)

        try:
            return _entries(await self._plane.state.edit(obj, key, change))
        except StateTooLarge as err:
            raise RequestError(
                str(err),
                E.ERROR_REASON_STATE_TOO_LARGE,
                limit_bytes=str(self._plane.cfg.max_state_bytes),
            ) from None

    # -- kill, purge, retention -----------------------------------------------------------

    async def kill(self, invocation_id: str, reason: str) -> Record:
        """End it CANCELLED now: a final entry appended through the journal's fence (so the
        worker driving it is fenced at its next append), then the record, then its key and
        its caller, as a worker would."""
        p = self._plane
        current = (await p.get_record(invocation_id)).record
        status = await p.status_of(current)
        if is_terminal(status):
            raise RequestError(
                f"invocation {invocation_id} already ended ({status_name(status)})",
                E.ERROR_REASON_INVOCATION_ENDED,
                invocation_id=invocation_id,
                status=status_name(status),
            )
        failure = types_pb2.Failure(message=reason or "killed by an operator", error_type=KILLED)
        final = storage_pb2.FinalOutcome(status=S.INVOCATION_STATUS_CANCELLED, failure=failure)
        entry = None
        for _ in range(20):
            loaded = await p.journal.load(invocation_id)
            if loaded.entries and loaded.entries[-1].HasField("final"):
                entry = loaded.entries[-1]  # it ended meanwhile, on its own
                break
            entry = storage_pb2.JournalRecord(
                index=len(loaded.entries),
                attempt=current.attempt,
                worker_id="control-plane",
                final=final,
            )
            entry.recorded_at.GetCurrentTime()
            try:
                await p.journal.append(invocation_id, entry, loaded.last_seq)
                break
            except JournalFenced:
                continue
        assert entry is not None

        def change(r: Record) -> None:
            if is_terminal(r.status):
                raise MutationRefused("already ended", r)
            ended = with_final(r, entry)
            r.CopyFrom(ended)
            r.worker_id = ""
            del r.waiting_for[:]

        with contextlib.suppress(MutationRefused):
            await p.records.mutate(invocation_id, change)
        record = (await p.records.get(invocation_id)).record
        await self._ended(record)
        await p.signal(invocation_id, {"cancel": True, "reason": failure.message})
        return record

    async def _ended(self, record: Record) -> None:
        info = self._plane.catalog.handlers().get(record.handler)
        exclusive = info is not None and info.kind == S.HANDLER_KIND_OBJECT_EXCLUSIVE
        await self._plane.waker.ended(record, exclusive=exclusive)

    async def purge(self, invocation_id: str) -> None:
        """Delete an ended invocation's journal, work items and record; for a workflow's
        run also the workflow's state, so its id can be used again.

        Gone stays gone: the journal keeps a seal (``Journal.purge``) and the record's key
        its purge marker, and every writer that could bring the invocation back (the
        PENDING-record timer, a worker holding its fresh item, a replayed ctx.call) creates
        records only where no marker is (``RecordStore.create``), and runs a fresh item only
        on an unsealed journal. The record goes last, so anything written meanwhile from
        the invocation's own items is purged with it.
        """
        p = self._plane
        record = await p.view_record(invocation_id)
        status = await p.status_of(record)
        if not is_terminal(status):
            raise RequestError(
                f"invocation {invocation_id} is {status_name(status)}; only an ended one "
                "can be purged (cancel or kill it first)",
                E.ERROR_REASON_INVOCATION_NOT_ENDED,
                invocation_id=invocation_id,
                status=status_name(status),
            )
        # The worker that ended it may have died before passing its key on.
        await self._ended(record)
        await p.journal.purge(invocation_id, record.created_at.ToNanoseconds())
        js = p.nc.jetstream()
        cfg = p.cfg
        for stream, subject in (
            (cfg.work_stream, cfg.work_subject(invocation_id)),
            (cfg.work_stream, cfg.wake_subject(invocation_id)),
            (cfg.work_stream, f"{cfg.prefix}.work.timer.{invocation_id}.>"),
            (cfg.work_stream, cfg.delay_subject(invocation_id)),
        ):
            await js.purge_stream(stream, subject=subject)
        info = p.catalog.handlers().get(record.handler)
        if info is not None and info.kind == S.HANDLER_KIND_WORKFLOW_RUN:
            await p.state.delete(record.handler.split("/")[0], record.key)
        with contextlib.suppress(RecordNotFound):
            await p.records.purge(invocation_id)
        p.index.remove(invocation_id)

    async def retention_loop(self) -> None:
        """Purge invocations that ended more than ``retention`` seconds ago."""
        retention = self._plane.cfg.retention
        if retention <= 0:
            return
        while True:
            await asyncio.sleep(min(60.0, max(0.2, retention / 4)))
            cutoff = time.time_ns() - int(retention * 1e9)
            for invocation_id in self._plane.index.ended_before(cutoff):
                try:
                    await self.purge(invocation_id)
                except RequestError:
                    continue
                except Exception:
                    log.exception("purging %s failed", invocation_id)


def _entries(state: dict[str, storage_pb2.StoredPayload]) -> list[types_pb2.StateEntry]:
    return [
        types_pb2.StateEntry(name=name, value=stored_to_payload(v.data, v.content_type))
        for name, v in sorted(state.items())
    ]
