"""The rules of Pause, Resume and Cancel: what each does to an invocation record, and when
the record's state refuses it (with the reason a client is told).

Each rule is a change function for ``RecordStore.mutate``, which applies it by CAS and
calls it again on every retry, so a rule decides from the record it is handed alone, never
from an earlier read; the rules are pure functions of a record, with no I/O.
``Steering`` below runs them and does what follows the write (signals, work items,
schedules).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TypeAlias

from nats.aio.client import Client as NATS

from durable.contract import (
    EngineConfig,
    MutationRefused,
    Record,
    Store,
    Waker,
    is_terminal,
    status_name,
)
from durable.v1 import errors_pb2, types_pb2
from durable_server.control.invocations import Invocations
from durable_server.control.validation import RequestError

S = types_pb2
E = errors_pb2
Reason: TypeAlias = errors_pb2.ErrorReason.ValueType
#: A change function for ``RecordStore.mutate``.
MutateFn: TypeAlias = Callable[[Record], None]

# Statuses in which no work item drives the invocation now: a Cancel must enqueue one.
NOT_DRIVEN = (
    S.INVOCATION_STATUS_PAUSED,
    S.INVOCATION_STATUS_BACKING_OFF,
    S.INVOCATION_STATUS_SUSPENDED,
    S.INVOCATION_STATUS_SCHEDULED,
)


class Refused(MutationRefused):
    """A steering change the record's state does not allow, and the reason to answer with."""

    def __init__(
        self, message: str, record: Record, reason: Reason = E.ERROR_REASON_INVOCATION_ENDED
    ) -> None:
        super().__init__(message, record)
        self.reason = reason


def _ended(r: Record) -> Refused:
    return Refused(
        f"invocation {r.id} already ended ({status_name(r.status)}); nothing is left to change",
        r,
    )


def still_scheduled(r: Record) -> bool:
    """A delayed start not yet due (its schedule fires then), and never started."""
    return (
        r.HasField("scheduled_at")
        and not r.HasField("started_at")
        and r.scheduled_at.ToNanoseconds() > time.time_ns()
    )


def pause_change(reason: str) -> MutateFn:
    """Pause: a running invocation stops at its next step (``pause_requested``); one that
    is not running is PAUSED at once."""

    def change(r: Record) -> None:
        if is_terminal(r.status):
            raise _ended(r)
        if r.status == S.INVOCATION_STATUS_PAUSED:
            raise Refused(
                f"invocation {r.id} is already paused; Resume continues it",
                r,
                E.ERROR_REASON_INVOCATION_ALREADY_PAUSED,
            )
        if r.pause_requested:
            raise Refused(
                f"invocation {r.id} is already pausing at its next step",
                r,
                E.ERROR_REASON_INVOCATION_ALREADY_PAUSED,
            )
        if r.cancel_requested:
            # A pause would hold back the cancellation the handler is about to see.
            raise Refused(
                f"invocation {r.id} is being cancelled; it cannot be paused",
                r,
                E.ERROR_REASON_INVOCATION_CANCELLING,
            )
        r.status_reason = reason or "paused by an operator"
        if r.status == S.INVOCATION_STATUS_RUNNING:
            r.pause_requested = True
        else:
            r.status = S.INVOCATION_STATUS_PAUSED

    return change


def resume_change() -> MutateFn:
    """Resume: a paused invocation goes on from the same journal position (PENDING, a new
    generation), or waits for its delayed start again; a pending pause is withdrawn."""

    def change(r: Record) -> None:
        if r.status == S.INVOCATION_STATUS_PAUSED and still_scheduled(r):
            # Paused before its delayed start: its schedule still starts it.
            r.status = S.INVOCATION_STATUS_SCHEDULED
            r.status_reason = ""
        elif r.status == S.INVOCATION_STATUS_PAUSED:
            # Replayed from its journal: what it waited for, it waits for again, unless
            # it completed meanwhile (a timer that fired while paused).
            r.status = S.INVOCATION_STATUS_PENDING
            r.generation += 1
            r.continuations += 1
            r.status_reason = ""
            del r.waiting_for[:]
        elif r.status == S.INVOCATION_STATUS_RUNNING and r.pause_requested:
            r.pause_requested = False
            r.status_reason = ""
        elif is_terminal(r.status):
            raise _ended(r)
        else:
            raise Refused(
                f"invocation {r.id} is {status_name(r.status)}, not paused; "
                "only a paused invocation can be resumed",
                r,
                E.ERROR_REASON_INVOCATION_NOT_PAUSED,
            )

    return change


class CancelChange:
    """Cancel: always delivered through the handler (``cancel_requested``), so it can
    compensate; one that no work item drives now is woken (PENDING, a new generation).
    ``woke_from`` says, after the write, from which status it was woken (UNSPECIFIED when it
    was not): decided on every CAS try, so it describes what was written."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.woke_from: int = S.INVOCATION_STATUS_UNSPECIFIED

    def __call__(self, r: Record) -> None:
        self.woke_from = S.INVOCATION_STATUS_UNSPECIFIED
        if is_terminal(r.status):
            raise _ended(r)
        if r.cancel_requested:
            raise Refused(
                f"invocation {r.id} is already being cancelled",
                r,
                E.ERROR_REASON_INVOCATION_CANCELLING,
            )
        # Cancellation is always delivered through the handler, even before it started: a
        # worker may be running a fresh invocation before writing its record, and ending it
        # here would discard what that worker did.
        r.cancel_requested = True
        r.cancel_reason = self.reason
        r.pause_requested = False
        if r.status in NOT_DRIVEN:
            # Its work item is gone or delayed: wake it so that it can compensate.
            self.woke_from = r.status
            r.status = S.INVOCATION_STATUS_PENDING
            r.generation += 1
            r.status_reason = ""
            del r.waiting_for[:]


class Signals:
    """Tells the worker driving an invocation about a change at once."""

    def __init__(self, nc: NATS, cfg: EngineConfig) -> None:
        self._nc = nc
        self._cfg = cfg

    async def send(self, invocation_id: str, body: dict[str, object]) -> None:
        """Tell the worker driving the invocation at once (core NATS, not stored: the record
        holds the truth, this only saves waiting for the worker's next look)."""
        await self._nc.publish(self._cfg.signal_subject(invocation_id), json.dumps(body).encode())


class Steering:
    """Pause, Resume and Cancel: each a CAS of the record by the rules above, then the
    signal and the work item the new state needs."""

    def __init__(
        self, invocations: Invocations, store: Store, waker: Waker, signals: Signals
    ) -> None:
        self._invocations = invocations
        self._records = store.records
        self._work = store.work
        self._waker = waker
        self._signals = signals

    async def _change(self, invocation_id: str, change: Callable[[Record], None]) -> Record:
        current = await self._invocations.get_record(invocation_id)
        status = await self._invocations.status_of(current.record)
        if is_terminal(status) and not is_terminal(current.record.status):
            raise RequestError(
                f"invocation {invocation_id} already ended ({status_name(status)}); "
                "nothing is left to change",
                E.ERROR_REASON_INVOCATION_ENDED,
                invocation_id=invocation_id,
                status=status_name(status),
            )
        try:
            written = await self._records.mutate(invocation_id, change, current=current)
        except MutationRefused as err:
            # Refused as already done (a client trying again after an error): the call that
            # did it may have died before enqueueing what the record needs.
            await self._waker.ensure_item(err.record, "steering")
            reason = err.reason if isinstance(err, Refused) else E.ERROR_REASON_INVOCATION_ENDED
            raise RequestError(
                str(err),
                reason,
                invocation_id=invocation_id,
                status=status_name(err.record.status),
            ) from None
        return written.record

    async def pause(self, invocation_id: str, reason: str) -> Record:
        record = await self._change(invocation_id, pause_change(reason))
        # Always: a worker may be running a fresh invocation before writing its record.
        await self._signals.send(invocation_id, {"pause": True})
        return record

    async def resume(self, invocation_id: str) -> Record:
        record = await self._change(invocation_id, resume_change())
        await self._signals.send(invocation_id, {"resume": True})
        if record.status == S.INVOCATION_STATUS_PENDING:
            await self._work.enqueue_record(record, "resume")
        return record

    async def cancel(self, invocation_id: str, reason: str) -> Record:
        reason = reason or "cancelled by an operator"
        change = CancelChange(reason)
        before = (await self._invocations.get_record(invocation_id)).record.status
        if before == S.INVOCATION_STATUS_SCHEDULED:
            # It runs now, to see the cancellation: its delayed start must not come later.
            await self._waker.drop_schedule(invocation_id)
        record = await self._change(invocation_id, change)
        woke_from = change.woke_from
        if woke_from == S.INVOCATION_STATUS_SCHEDULED and before != woke_from:
            await self._waker.drop_schedule(invocation_id)
        await self._signals.send(invocation_id, {"cancel": True, "reason": reason})
        # Decided by what the CAS wrote, not by a read before it: the record may have moved
        # in between (a Pause, a Resume, a worker), and a PENDING record needs its item.
        if woke_from != S.INVOCATION_STATUS_UNSPECIFIED:
            await self._work.enqueue_record(record, "cancel")
        else:
            await self._waker.ensure_item(record, "cancel")
        return record
