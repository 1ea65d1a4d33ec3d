"""Drives one invocation attempt: claim the record, replay the journal, run the handler,
record the outcome, then ack, nak or (when fenced) leave the work item alone.

The record is claimed with a CAS that bumps ``attempt``; the journal's per-entry fence decides
which driver may write. Every final write is conditioned on our attempt still being the
current one, so a worker that lost the invocation to another can change nothing.

Longer than our ~400-line norm on purpose: one attempt's whole life (fresh or replayed
start, the handler, the outcome, the object key and state, the ack) reads top to bottom here,
and each ending path must be checked against the others for the fencing argument in
docs/architecture.md. The record writes themselves are ``claim``'s, the lease ``lease``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.msg import Msg

from durable import _codec
from durable import _logs as logs
from durable import _metrics as metrics
from durable import _tracing as tracing
from durable._handlers import HandlerDef, Registry
from durable._retry import DEFAULT_HANDLER_RETRY
from durable._store.ids import service_of
from durable._store.journal import Journal, LoadedJournal
from durable._store.objects import Changes, KeyQueue, StateStore, StateTooLarge
from durable._store.records import (
    MutationRefused,
    Record,
    RecordNotFound,
    RecordPurged,
    RecordStore,
    Versioned,
    is_terminal,
    now_ts,
)
from durable._store.waking import Waker
from durable._worker.claim import Claim, Version
from durable._worker.context import InvocationContext
from durable._worker.encoding import encode_bounded, failure_of
from durable._worker.keyed import StateView, changes_in
from durable._worker.lease import ClaimGuard, ClaimLost, Lease
from durable._worker.rpc import TransportRouter
from durable._worker.signals import ControlFlags, Fenced, RetryAttempt
from durable._worker.waits import any_completed
from durable.errors import CancelledError, NonDeterminismError, SuspendInvocation, TerminalError
from durable.internal.v1 import storage_pb2
from durable.v1 import types_pb2

log = logging.getLogger("durable.worker")

S = types_pb2
_PAUSED = "paused"


def _final_of(outcome: Outcome) -> storage_pb2.FinalOutcome:
    final = storage_pb2.FinalOutcome(status=outcome.status)  # type: ignore[arg-type]
    if outcome.output is not None:
        final.output.CopyFrom(outcome.output)
    if outcome.failure is not None:
        final.failure.CopyFrom(outcome.failure)
    return final


def _pause_stands(r: Record, out: Outcome) -> bool:
    """Whether a PAUSED outcome still stands against the stored record ``r``.

    The attempt stopped at a step for a pause it was told of; by the time it writes, a
    Resume may have withdrawn the request, or a Cancel superseded it (the handler must see
    the cancellation). Writing PAUSED then would leave the invocation paused against the
    last request, and with a Cancel pending no item would ever deliver it. A record the
    control plane paused before the attempt wrote anything stays paused.
    """
    if r.status == S.INVOCATION_STATUS_PAUSED:
        return True
    if r.cancel_requested:
        return False
    return out.reason != _PAUSED or r.pause_requested


def _age(msg: Msg) -> float:
    """Seconds since the work item was published."""
    published = msg.metadata.timestamp
    return time.time() - published.timestamp() if published else 0.0


@dataclass
class Outcome:
    """What the attempt ended with, as a change to apply to the record."""

    status: int
    output: storage_pb2.StoredPayload | None = None
    failure: types_pb2.Failure | None = None
    reason: str = ""
    retry_in: float | None = None
    # When the outcome was journaled: the moment it ended, which views show before the
    # record catches up.
    journaled_at: Timestamp | None = None
    # What a SUSPENDED attempt waits for.
    waits: tuple[types_pb2.WaitTarget, ...] = ()


class Executor:
    """Runs attempts of invocations for one worker."""

    def __init__(
        self,
        *,
        records: RecordStore,
        journal: Journal,
        registry: Registry,
        waker: Waker,
        worker_id: str,
        announce: Callable[[str, int, int, str], None],
        max_payload: int,
        running_record_after: float = 0.2,
        young_item: float = 1.0,
        keys: KeyQueue | None = None,
        state: StateStore | None = None,
        rpc: TransportRouter | None = None,
        version: Version | None = None,
    ) -> None:
        self._rpc = rpc
        self._version = version or Version()
        self._records = records
        self._keys = keys
        self._state = state
        self._journal = journal
        self._registry = registry
        self._waker = waker
        self._worker_id = worker_id
        self._announce = announce
        self._running_record_after = running_record_after
        self._young_item = young_item
        self._max_payload = max_payload
        self._background: set[asyncio.Future[None]] = set()

    async def drive(
        self, msg: Msg, invocation_id: str, flags: ControlFlags, lease: Lease | None = None
    ) -> None:
        item = storage_pb2.WorkItem()
        item.ParseFromString(msg.data or b"")
        fresh = item.HasField("initial")
        # Every earlier delivery of a fresh item may have been an attempt that never wrote
        # the record; counting them keeps attempt numbers unique and increasing.
        floor = (msg.metadata.num_delivered or 1) - 1 if fresh else 0
        delivery = delivery_of(msg)
        current: Versioned | None = None
        if fresh:
            if not await self._serves(msg, item.initial.handler, invocation_id):
                return
            if self._version.foreign(item.initial):
                await self._to_own_lane(msg, item.initial, fresh=True)
                return
            # Fast path: if nobody wrote the record, nobody claimed it. A first delivery of a
            # young item has none unless an operator acted as it started, and then the
            # control plane sealed its journal first (Journal.seal): the first append is
            # fenced and we claim it the ordinary way. Older items read the record first.
            young = floor == 0 and _age(msg) < self._young_item
            if not young:
                current = await self._find(invocation_id)
            if current is None:
                claim = Claim.fresh(
                    self._records, item.initial, floor + 1, self._worker_id, self._version
                )
                claim.record.claimed_item_seq, claim.record.claimed_delivery = delivery
                if await self._attempt(msg, claim, flags, lease, load_journal=floor > 0):
                    return
                # Fenced at once (another driver or a seal came first), or paused for a
                # pause that was withdrawn meanwhile: the record decides.
                floor += 1
                current = None
        while True:
            # The record says whether a pause stands (the flag may be a withdrawn one's).
            flags.pause = False
            claimed = await self._claim_existing(
                msg, invocation_id, current, floor=floor, delivery=delivery
            )
            if claimed is None:
                return
            claim = Claim(self._records, claimed.record, self._worker_id, written=claimed)
            if await self._attempt(msg, claim, flags, lease, load_journal=True):
                return
            current = None  # it paused for a pause withdrawn meanwhile: go on at once

    async def _find(self, invocation_id: str) -> Versioned | None:
        try:
            return await self._records.get(invocation_id)
        except RecordNotFound:
            return None

    async def _claim_existing(
        self,
        msg: Msg,
        invocation_id: str,
        current: Versioned | None,
        *,
        floor: int,
        delivery: tuple[int, int],
    ) -> Versioned | None:
        if current is None:
            try:
                current = await self._records.get(invocation_id)
            except RecordPurged:
                await msg.ack()  # gone for good: nothing may run it again
                return None
            except RecordNotFound:
                if floor:
                    # Another worker drives this fresh invocation without having written
                    # its record yet: leave the item to it (it returns if that worker dies).
                    return None
                log.warning("dropping work item for unknown invocation %s", invocation_id)
                await msg.ack()
                return None
        rec = current.record
        if rec.status == S.INVOCATION_STATUS_SUSPENDED:
            # Its wake-up enqueues a new item. This one may be the redelivery of an attempt
            # that died suspending: do the look it may not have done.
            if await any_completed(rec.id, list(rec.waiting_for), self._journal, self._waker):
                await self._waker.wake(rec.id, "completed while suspending")
            await msg.ack()
            return None
        if is_terminal(rec.status) or rec.status == S.INVOCATION_STATUS_PAUSED:
            if is_terminal(rec.status):
                await self._ended(rec)  # again: the attempt that ended it may have died
            await msg.ack()
            return None
        if not await self._serves(msg, rec.handler, invocation_id):
            return None
        if self._version.foreign(rec):
            await self._to_own_lane(msg, rec)
            return None
        if stale_delivery(rec, delivery):
            await self._leave_stale(msg, rec, delivery)
            return None
        if not await self._holds_key(rec):
            await msg.ack()  # queued behind the key's holder: it is enqueued when its turn comes
            return None
        if rec.status == S.INVOCATION_STATUS_BACKING_OFF and rec.HasField("next_attempt_at"):
            wait = rec.next_attempt_at.ToNanoseconds() / 1e9 - time.time()
            if wait > 0.005:
                await msg.nak(delay=wait)
                return None
        try:
            return await self._records.mutate(
                invocation_id, lambda r: self._claim(r, floor, delivery), current=current
            )
        except MutationRefused as refused:
            if stale_delivery(refused.record, delivery):
                await self._leave_stale(msg, refused.record, delivery)
            else:
                await msg.ack()
            return None

    async def _leave_stale(self, msg: Msg, rec: Record, delivery: tuple[int, int]) -> None:
        """A delivery older than the one whose claim runs the invocation now: a frozen
        worker's, handled after the item was redelivered and claimed. An older item is done
        with (ack it); an older delivery of the claiming item is left alone, since acking or
        naking it would end or hand back the live attempt's delivery (the server tells the
        two apart by stream sequence only)."""
        log.info(
            "invocation %s runs attempt %d from a newer delivery (%d/%d) than this one "
            "(%d/%d); leaving it",
            rec.id,
            rec.attempt,
            rec.claimed_item_seq,
            rec.claimed_delivery,
            *delivery,
        )
        if delivery[0] < rec.claimed_item_seq:
            await msg.ack()

    async def _attempt(
        self,
        msg: Msg,
        claim: Claim,
        flags: ControlFlags,
        lease: Lease | None,
        *,
        load_journal: bool,
    ) -> bool:
        """Run one attempt. False when its very first append was fenced while it had
        assumed an empty journal (the caller then claims it with the journal loaded)."""
        rec = claim.record
        hdef = self._registry.get(rec.handler)
        assert hdef is not None, "checked before claiming"
        logs.note(handler=rec.handler, attempt=rec.attempt)
        flags.pause = flags.pause or rec.pause_requested
        flags.cancel = flags.cancel or rec.cancel_requested
        flags.cancel_reason = flags.cancel_reason or rec.cancel_reason

        # A first delivery on the fast path skips reading the (normally empty) journal; if
        # someone did journal, the first append is fenced and the caller claims it again.
        shortcut = not load_journal
        loaded = LoadedJournal([], 0) if shortcut else await self._journal.load(rec.id)
        if loaded.purged and loaded.purged == rec.created_at.ToNanoseconds():
            # Purged since we read its record (which Purge deletes last): gone for good.
            log.info("invocation %s was purged; dropping its item", rec.id)
            await msg.ack()
            return True
        if not claim.written and loaded.sealed:
            # No record when we looked, but the control plane has sealed the journal since:
            # an operator acted, or it was purged. The record decides (slow path).
            return False
        if loaded.entries and loaded.entries[-1].HasField("final"):
            # It ended in an earlier attempt, which died before writing the record.
            return await self._record_final(msg, claim, loaded.entries)
        ctx = InvocationContext(
            record=rec,
            entries=loaded.entries,
            last_seq=loaded.last_seq,
            journal=self._journal,
            worker_id=self._worker_id,
            flags=flags,
            announce=lambda i, k, n: self._announce(rec.id, i, k, n),
            max_payload=self._max_payload,
            waker=self._waker,
            kind=hdef.kind,
            state=self._state,
            rpc=self._rpc,
            guard=ClaimGuard(
                lease, self._journal, self._records, rec.id, claim.still_ours, loaded.last_seq
            ),
        )
        timer = None
        if not claim.written:
            timer = asyncio.get_running_loop().call_later(
                self._running_record_after, lambda: self._spawn(claim.mark_running(flags))
            )
        final: storage_pb2.FinalOutcome | None = None
        attempt_span = tracing.span(
            f"attempt {rec.handler}",
            parent=tracing.context_of(rec.trace_context),
            attributes={
                "durable.invocation_id": rec.id,
                "durable.handler": rec.handler,
                "durable.attempt": rec.attempt,
                "durable.worker_id": self._worker_id,
                "durable.replayed_steps": len(loaded.entries),
            },
        )
        try:
            with attempt_span as current:
                outcome = await self._run_handler(hdef, rec, ctx)
                current.set_attribute("durable.outcome", metrics.status_label(outcome.status))
                if outcome.failure is not None and not is_terminal(outcome.status):
                    current.set_status(
                        tracing.Status(tracing.StatusCode.ERROR, outcome.failure.message)
                    )
            view = ctx.keyed.view
            if view.touched and not await self._state_fits(rec, view):
                outcome = Outcome(
                    S.INVOCATION_STATUS_FAILED,
                    failure=types_pb2.Failure(
                        message=f"the state of {rec.handler.split('/')[0]}/{rec.key} would "
                        "exceed --max-state-bytes; its changes were not applied",
                        error_type="TerminalError",
                    ),
                )
                view.changes.clear()
                view.cleared_all = False
            if is_terminal(outcome.status):
                final = _final_of(outcome)
                final.state_follows = view.touched
                if rec.HasField("started_at"):
                    final.started_at.CopyFrom(rec.started_at)
            await ctx.flush_all(final)
            if view.touched:
                # With the journal, before the record: readers see all changes or none.
                await self._apply_state(rec, view.changes, view.cleared_all)
            for target in outcome.waits:
                if target.kind == S.WAIT_KIND_TIMER:
                    # Before the record says SUSPENDED: a suspended timer always has one.
                    await self._waker.schedule_timer(
                        rec.id, rec.handler, target.step_index, target.due_at
                    )
            if final is not None:
                outcome.journaled_at = ctx.last_recorded_at
            elif shortcut and ctx.journal_length == 0 and await self._journal.sealed(rec.id):
                # Paused or failed before journaling anything, so no append met the seal:
                # an operator acted as it started; claim it the ordinary way.
                return False
        except Fenced as err:
            if shortcut and ctx.journal_length == 0 and not isinstance(err, ClaimLost):
                return False
            log.info("invocation %s: fenced (%s); another worker drives it", rec.id, err)
            return True
        finally:
            if timer is not None:
                timer.cancel()
        # Once journaled it is complete: the journal stream has told whoever waits for it,
        # and the record follows.
        return await self._settle(msg, claim, outcome, ctx.journal_length, final is not None)

    async def _settle(
        self, msg: Msg, claim: Claim, outcome: Outcome, steps: int, journaled: bool
    ) -> bool:
        """Write the attempt's outcome to the record, then ack (or nak to retry later).

        False when the attempt paused for a pause that no longer stands (``_pause_stands``):
        the record is then PENDING, and the caller claims it again with the same item.
        """
        cancel_asked = False
        # Set by the last call of ``change``: the record written was handed back, or it was
        # left as the control plane made it (a refusal ends the CAS loop).
        handed_back = left_pending = False

        def change(r: Record) -> None:
            nonlocal cancel_asked, handed_back
            cancel_asked = r.cancel_requested
            handed_back = outcome.status == S.INVOCATION_STATUS_PAUSED and not _pause_stands(
                r, outcome
            )
            if not handed_back:
                self._finish(r, claim, steps, outcome)
            elif r.status == S.INVOCATION_STATUS_RUNNING:
                self._hand_back(r, claim, steps)
            else:  # PENDING again by the control plane (a Resume): claim it as it is
                nonlocal left_pending
                left_pending = True
                raise MutationRefused("the pause was withdrawn", r)

        finished = await claim.finish(change, journaled=journaled)
        if (finished and handed_back) or (not finished and left_pending):
            log.info("invocation %s: its pause was withdrawn; going on", claim.record.id)
            return False
        if not finished:
            log.info(
                "invocation %s: attempt %d lost it; leaving it", claim.record.id, claim.attempt
            )
            return True
        rec = claim.record
        metrics.METRICS.attempt(rec.handler, outcome.status)
        if outcome.retry_in is not None:
            error = outcome.failure.error_type if outcome.failure is not None else ""
            metrics.METRICS.retry(rec.handler, "attempt", error)
        if is_terminal(outcome.status):
            metrics.METRICS.ended(rec.handler, outcome.status, rec.created_at)
        if outcome.status == S.INVOCATION_STATUS_SUSPENDED:
            # A completion (or a Cancel) that came while we were suspending found the record
            # still RUNNING and could not wake it: look once more, now that it says SUSPENDED.
            if cancel_asked or await any_completed(
                rec.id, list(outcome.waits), self._journal, self._waker
            ):
                await self._waker.wake(rec.id, "completed while suspending")
        elif is_terminal(outcome.status):
            await self._ended(rec)
        if outcome.retry_in is not None:
            # A Cancel that came during the attempt is delivered by the retry: at once.
            await msg.nak(delay=0 if cancel_asked else outcome.retry_in)
        else:
            await msg.ack()
        return True

    async def _record_final(
        self, msg: Msg, claim: Claim, entries: list[storage_pb2.JournalRecord]
    ) -> bool:
        final = entries[-1].final
        outcome = Outcome(
            final.status,
            output=final.output if final.HasField("output") else None,
            failure=final.failure if final.HasField("failure") else None,
            journaled_at=entries[-1].recorded_at,
        )
        steps = sum(1 for e in entries if e.kind != S.STEP_KIND_UNSPECIFIED)
        view = changes_in(entries)
        if view.touched:
            await self._apply_state(claim.record, view.changes, view.cleared_all)
        return await self._settle(msg, claim, outcome, steps, journaled=True)

    async def _apply_state(self, rec: Record, changes: Changes, cleared_all: bool) -> None:
        """Apply an attempt's journaled state changes. An exclusive invocation applies them
        under the revision of the lock entry by which it holds its key, so that it does so
        at most once and never after a later holder (its worker may have frozen right after
        journaling the outcome, while another worker applied the changes for it and the key
        moved on). One that no longer holds its key applies nothing: whoever ended its
        record applied them first, before the key could pass on."""
        assert self._state is not None
        obj = service_of(rec.handler)
        holder = 0
        if self._kind(rec) == S.HANDLER_KIND_OBJECT_EXCLUSIVE and self._keys is not None:
            held = await self._keys.held_revision(obj, rec.key, rec.id)
            if held is None:
                log.info("invocation %s no longer holds its key: its state is applied", rec.id)
                return
            holder = held
        await self._state.apply(obj, rec.key, changes, cleared_all, holder=holder)

    def _kind(self, rec: Record) -> int:
        hdef = self._registry.get(rec.handler)
        return hdef.kind if hdef is not None else S.HANDLER_KIND_SERVICE

    async def _holds_key(self, rec: Record) -> bool:
        """Whether an exclusive invocation holds its object key (others need none).

        A delayed send to an exclusive handler joins its key's queue when it is due, not
        when it was sent: its arrival is the schedule firing. Once queued it is PENDING.
        """
        if self._kind(rec) != S.HANDLER_KIND_OBJECT_EXCLUSIVE or self._keys is None:
            return True
        obj = service_of(rec.handler)
        if await self._keys.holder(obj, rec.key) == rec.id:
            return True
        if rec.status != S.INVOCATION_STATUS_SCHEDULED:
            return False
        if await self._keys.enqueue(obj, rec.key, rec.id):
            return True

        def queued(r: Record) -> None:
            if r.status != S.INVOCATION_STATUS_SCHEDULED:
                raise MutationRefused("moved on", r)
            r.status = S.INVOCATION_STATUS_PENDING

        with contextlib.suppress(MutationRefused):
            await self._records.mutate(rec.id, queued)
        return False

    async def _ended(self, rec: Record) -> None:
        exclusive = self._kind(rec) == S.HANDLER_KIND_OBJECT_EXCLUSIVE
        await self._waker.ended(rec, exclusive=exclusive)

    async def _state_fits(self, rec: Record, view: StateView) -> bool:
        assert self._state is not None
        try:
            await self._state.check(
                service_of(rec.handler), rec.key, view.changes, view.cleared_all
            )
        except StateTooLarge:
            return False
        return True

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _serves(self, msg: Msg, handler: str, invocation_id: str) -> bool:
        if self._registry.get(handler) is not None:
            return True
        log.warning("no handler %s in this worker; leaving %s to others", handler, invocation_id)
        await msg.nak(delay=1.0)
        return False

    async def _to_own_lane(self, msg: Msg, rec: Record, *, fresh: bool = False) -> None:
        """An item of an invocation pinned to another version reached this one through
        the shared lane (queued before it was pinned): send it to its version's lane,
        where only that version's workers take it."""
        log.info("invocation %s stays on version %s; moving its item there", rec.id, rec.version)
        await self._waker.to_own_lane(rec, fresh=fresh)
        await msg.ack()

    def _claim(self, r: Record, floor: int, delivery: tuple[int, int]) -> None:
        if is_terminal(r.status) or r.status == S.INVOCATION_STATUS_PAUSED:
            raise MutationRefused(f"not runnable ({r.status})", r)
        if stale_delivery(r, delivery):
            raise MutationRefused("claimed by a newer delivery", r)
        if self._version.foreign(r):
            raise MutationRefused(f"pinned to version {r.version}", r)
        self._version.stamp(r)
        r.status = S.INVOCATION_STATUS_RUNNING
        r.attempt = max(r.attempt, floor) + 1
        r.worker_id = self._worker_id
        r.claimed_item_seq, r.claimed_delivery = delivery
        if not r.HasField("started_at"):
            r.started_at.CopyFrom(now_ts())
        r.ClearField("next_attempt_at")

    async def _run_handler(self, hdef: HandlerDef, rec: Record, ctx: InvocationContext) -> Outcome:
        try:
            args: list[Any] = [ctx]
            if hdef.takes_input:
                try:
                    args.append(
                        _codec.decode(rec.input.data, rec.input.content_type, hdef.input_type)
                    )
                except _codec.DecodeFailure as err:
                    raise TerminalError(
                        f"input does not decode for {hdef.full_name}: {err}"
                    ) from err
            value = await hdef.fn(*args)
        except SuspendInvocation as sig:
            if sig.waits:
                return Outcome(S.INVOCATION_STATUS_SUSPENDED, reason=sig.reason, waits=sig.waits)
            return Outcome(S.INVOCATION_STATUS_PAUSED, reason=sig.reason or _PAUSED)
        except NonDeterminismError as err:
            log.error("invocation %s: %s", rec.id, err.message)
            if ctx.cancel_requested:
                # It cannot be replayed, so it cannot compensate either: end it as asked.
                failure = types_pb2.Failure(
                    message=f"cancelled without compensation: {err.message}",
                    error_type="CancelledError",
                )
                return Outcome(S.INVOCATION_STATUS_CANCELLED, failure=failure)
            return Outcome(S.INVOCATION_STATUS_PAUSED, reason=err.message)
        except Fenced:
            raise
        except TerminalError as err:
            if isinstance(err, CancelledError) or ctx.cancel_delivered:
                return Outcome(S.INVOCATION_STATUS_CANCELLED, failure=failure_of(err))
            return Outcome(S.INVOCATION_STATUS_FAILED, failure=failure_of(err))
        except RetryAttempt as sig:
            return self._retry_or_fail(hdef, rec, sig.cause)
        except Exception as err:
            return self._retry_or_fail(hdef, rec, err)
        if ctx.unconsumed_entries():
            if ctx.cancel_requested:
                failure = types_pb2.Failure(
                    message="cancelled without compensation: the handler's code no longer "
                    "matches its journal",
                    error_type="CancelledError",
                )
                return Outcome(S.INVOCATION_STATUS_CANCELLED, failure=failure)
            reason = (
                f"non-deterministic replay: the handler returned after {ctx.steps_taken} steps "
                f"but the journal holds {ctx.steps_taken + ctx.unconsumed_entries()}; the "
                "handler's code changed since this invocation started"
            )
            return Outcome(S.INVOCATION_STATUS_PAUSED, reason=reason)
        if ctx.cancel_delivered:
            failure = types_pb2.Failure(
                message=f"cancelled ({ctx.cancel_reason or 'no reason given'}); "
                "the handler compensated and returned",
                error_type="CancelledError",
            )
            return Outcome(S.INVOCATION_STATUS_CANCELLED, failure=failure)
        try:
            output = encode_bounded(value, self._max_payload, f"the output of {hdef.full_name}")
        except TerminalError as err:
            return Outcome(S.INVOCATION_STATUS_FAILED, failure=failure_of(err))
        return Outcome(S.INVOCATION_STATUS_COMPLETED, output=output)

    @staticmethod
    def _retry_or_fail(hdef: HandlerDef, rec: Record, err: BaseException) -> Outcome:
        """``rec`` is the attempt's view of the record: its ``attempt`` is ours."""
        policy = hdef.retry or DEFAULT_HANDLER_RETRY
        failure = failure_of(err)
        # Attempts that only continued after a wait or a pause are no failures.
        tries = max(1, rec.attempt - rec.continuations)
        if policy.gives_up_after(tries):
            failure.message = f"gave up after {tries} attempts: {failure.message}"
            return Outcome(S.INVOCATION_STATUS_FAILED, failure=failure)
        log.warning("invocation %s attempt %d failed: %r", rec.id, rec.attempt, err)
        return Outcome(
            S.INVOCATION_STATUS_BACKING_OFF, failure=failure, retry_in=policy.delay(tries)
        )

    @staticmethod
    def _hand_back(r: Record, claim: Claim, steps: int) -> None:
        """PENDING again, unclaimed: the attempt stopped for a pause that no longer stands.
        The same delivery claims it next (if this worker dies first, it is redelivered),
        so the generation and its item stay."""
        r.status = S.INVOCATION_STATUS_PENDING
        r.continuations += 1
        r.attempt = max(r.attempt, claim.attempt)
        if not r.HasField("started_at"):
            r.started_at.CopyFrom(claim.record.started_at)
        r.journal_length = steps
        r.worker_id = ""
        r.pause_requested = False
        r.status_reason = ""

    @staticmethod
    def _finish(r: Record, claim: Claim, steps: int, out: Outcome) -> None:
        r.status = out.status  # type: ignore[assignment]
        r.attempt = max(r.attempt, claim.attempt)
        if not r.HasField("started_at"):
            r.started_at.CopyFrom(claim.record.started_at)
        r.journal_length = steps
        r.worker_id = ""
        if out.status == S.INVOCATION_STATUS_PAUSED:
            # An operator's pause keeps the reason they gave; a non-determinism stop says why.
            if out.reason != _PAUSED or not r.status_reason:
                r.status_reason = out.reason
            r.pause_requested = False
        elif out.status == S.INVOCATION_STATUS_SUSPENDED:
            r.status_reason = out.reason
            del r.waiting_for[:]
            r.waiting_for.extend(out.waits)
        elif out.status == S.INVOCATION_STATUS_BACKING_OFF:
            assert out.failure is not None and out.retry_in is not None
            r.last_failure.CopyFrom(out.failure)
            delay = 0.0 if r.cancel_requested else out.retry_in  # see _settle
            due = Timestamp()
            due.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay))
            r.next_attempt_at.CopyFrom(due)
        else:
            r.ended_at.CopyFrom(out.journaled_at or now_ts())
            r.pause_requested = False
            r.status_reason = ""  # a pause or cancel that came too late explains nothing
            if out.output is not None:
                r.output.CopyFrom(out.output)
            if out.failure is not None:
                r.failure.CopyFrom(out.failure)
            # Ended: a cancel that arrived too late to be seen is moot, not pending.
            r.cancel_requested = False


def delivery_of(msg: Msg) -> tuple[int, int]:
    """Which delivery of which work item ``msg`` is: (stream sequence, delivery count).
    Later items have higher sequences, and later deliveries of one item higher counts."""
    meta = msg.metadata
    return int(meta.sequence.stream or 0), int(meta.num_delivered or 0)


def stale_delivery(rec: Record, delivery: tuple[int, int]) -> bool:
    """Whether the record's latest attempt was claimed from a newer delivery than this
    one, and it has not ended: then this one must not claim it (a RUNNING attempt may be
    live; see :meth:`Executor._leave_stale`). Records written before deliveries were
    recorded carry (0, 0), older than any."""
    claimed = (rec.claimed_item_seq, rec.claimed_delivery)
    return not is_terminal(rec.status) and claimed > delivery
