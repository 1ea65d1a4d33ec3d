"""Control-plane operations for virtual objects and workflows, and the ones that end or
delete invocations: whether an exclusive invocation holds its key, object state, Kill,
Purge and retention. (Accepting exclusive invocations and workflow runs is Invoke's, in
``invocations``; promises are ``completions``'.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from nats.js import JetStreamContext

from durable.contract import (
    MAX_KEY_CHARS,
    MAX_NAME_CHARS,
    EngineConfig,
    JournalFenced,
    MutationRefused,
    Record,
    RecordNotFound,
    StateTooLarge,
    Store,
    Waker,
    is_terminal,
    metrics,
    quote,
    service_of,
    status_name,
)
from durable.internal.v1 import storage_pb2
from durable.v1 import control_pb2, errors_pb2, types_pb2
from durable_server.control.invocations import Invocations
from durable_server.control.steering import Signals
from durable_server.control.validation import (
    RequestError,
    check_text,
    invalid,
    payload_to_stored,
    stored_to_payload,
)
from durable_server.control.views import with_final

E = errors_pb2

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

    def __init__(
        self,
        cfg: EngineConfig,
        js: JetStreamContext,
        store: Store,
        waker: Waker,
        invocations: Invocations,
        signals: Signals,
    ) -> None:
        self._cfg = cfg
        self._js = js
        self._records = store.records
        self._journal = store.journal
        self._keys = store.keys
        self._state = store.state
        self._waker = waker
        self._invocations = invocations
        self._catalog = invocations.catalog
        self._index = invocations.index
        self._signals = signals

    async def may_run(self, record: Record) -> bool:
        """False for an exclusive invocation queued behind its key's holder."""
        info = self._catalog.handlers().get(record.handler)
        if info is None or info.kind != S.HANDLER_KIND_OBJECT_EXCLUSIVE:
            return True
        obj = service_of(record.handler)
        return await self._keys.holder(obj, record.key) == record.id

    # -- state --------------------------------------------------------------------------

    def _check_object(self, obj: str, key: str) -> None:
        if not obj:
            raise invalid("object is required: the virtual object or workflow name", field="object")
        kinds = {h.kind for h in self._catalog.handlers().values() if h.service == obj}
        if not kinds & set(_STATEFUL):
            raise RequestError(
                f"no virtual object or workflow named {quote(obj)} is registered",
                E.ERROR_REASON_OBJECT_NOT_FOUND,
                object=obj[:64],
            )
        check_text("key", key, MAX_KEY_CHARS, required="the object key or workflow id")

    async def get_state(self, obj: str, key: str) -> list[types_pb2.StateEntry]:
        self._check_object(obj, key)
        return _entries(await self._state.load(obj, key))

    async def set_state(
        self, request: control_pb2.SetObjectStateRequest
    ) -> list[types_pb2.StateEntry]:
        obj, key = request.object, request.key
        self._check_object(obj, key)
        values: dict[str, storage_pb2.StoredPayload] = {}
        for e in request.set:
            check_text("a state entry's name", e.name, MAX_NAME_CHARS, required="every one")
            data, ct = payload_to_stored(
                e.value, self._cfg.max_payload_bytes, f"state {quote(e.name)}"
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
            written = await self._state.edit(obj, key, change)
            assert written is not None, "an edit without seq always writes"
            return _entries(written)
        except StateTooLarge as err:
            raise RequestError(
                str(err),
                E.ERROR_REASON_STATE_TOO_LARGE,
                limit_bytes=str(self._cfg.max_state_bytes),
            ) from None

    # -- kill, purge, retention -----------------------------------------------------------

    async def kill(self, invocation_id: str, reason: str) -> Record:
        """End it CANCELLED now: a final entry appended through the journal's fence (so the
        worker driving it is fenced at its next append), then the record, then its key and
        its caller, as a worker would."""
        current = (await self._invocations.get_record(invocation_id)).record
        status = await self._invocations.status_of(current)
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
            loaded = await self._journal.load(invocation_id)
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
                await self._journal.append(invocation_id, entry, loaded.last_seq)
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
            written = await self._records.mutate(invocation_id, change)
            ended = written.record
            metrics.METRICS.ended(ended.handler, ended.status, ended.created_at)
        record = (await self._records.get(invocation_id)).record
        await self._ended(record)
        await self._signals.send(invocation_id, {"cancel": True, "reason": failure.message})
        return record

    async def _ended(self, record: Record) -> None:
        info = self._catalog.handlers().get(record.handler)
        exclusive = info is not None and info.kind == S.HANDLER_KIND_OBJECT_EXCLUSIVE
        await self._waker.ended(record, exclusive=exclusive)

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
        record = await self._invocations.view_record(invocation_id)
        status = await self._invocations.status_of(record)
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
        await self._journal.purge(invocation_id, record.created_at.ToNanoseconds())
        cfg = self._cfg
        service = service_of(record.handler)
        for subject in (
            cfg.run_subject_any_lane(service, invocation_id),
            cfg.wake_subject(service, invocation_id),
            f"{cfg.prefix}.work.timer.{invocation_id}.>",
            cfg.delay_subject(invocation_id),
            cfg.legacy_work_subject(invocation_id),
            cfg.legacy_wake_subject(invocation_id),
        ):
            await self._js.purge_stream(cfg.work_stream, subject=subject)
        info = self._catalog.handlers().get(record.handler)
        if info is not None and info.kind == S.HANDLER_KIND_WORKFLOW_RUN:
            await self._state.delete(service_of(record.handler), record.key)
        with contextlib.suppress(RecordNotFound):
            await self._records.purge(invocation_id)
        self._index.remove(invocation_id)

    async def retention_loop(self) -> None:
        """Purge invocations that ended more than ``retention`` seconds ago."""
        retention = self._cfg.retention
        if retention <= 0:
            return
        while True:
            await asyncio.sleep(min(60.0, max(0.2, retention / 4)))
            cutoff = time.time_ns() - int(retention * 1e9)
            for invocation_id in self._index.ended_before(cutoff):
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
