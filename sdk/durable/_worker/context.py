"""The runtime's ``ctx``: replays journaled steps and journals new ones, in order.

Step numbers are taken when a step is *called*, and entries are appended in that order even
when steps finish out of order (``asyncio.gather`` over several ``ctx.run``), so a replay maps
the same calls to the same entries. Before a new step it honours Pause (unwind, keep the
journal) and Cancel (journal the cancellation as this step's outcome and raise it, once).

Longer than our ~400-line norm on purpose: this is the one class every ``ctx`` method of every
handler kind lands in, and the step-numbering, replay-or-run and deferred-append logic must
be read together to see that a replay maps each call to its entry. What can stand alone
already does: waits (``waits``), state and promises (``keyed``), encoding (``encoding``),
the claim check (``lease``) and gRPC calls (``rpc``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random as _random
import time
import uuid as _uuid
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from durable import _codec
from durable import _logs as logs
from durable import _metrics as metrics
from durable import _tracing as tracing
from durable._context import DurableFuture, DurablePromise, Duration, StubT, WorkflowContext
from durable._handlers import handler_name
from durable._retry import RetryPolicy
from durable._store.completions import CompletionRefused
from durable._store.ids import awakeable_id, child_invocation_id, parse_awakeable_id
from durable._store.journal import Journal, JournalFenced
from durable._store.objects import StateStore
from durable._store.records import now_ts
from durable._store.waking import AlreadyCompleted, Waker
from durable._worker.encoding import (
    CANCELLED_ERROR_TYPE,
    declared_return_type,
    describe_step,
    encode_bounded,
    error_from_failure,
    execute,
    failure_of,
)
from durable._worker.keyed import KeyedSteps
from durable._worker.lease import ClaimGuard
from durable._worker.rpc import TERMINAL_CODES, DurableChannel, TransportRouter
from durable._worker.signals import ControlFlags, Fenced, ReplayDone, RetryAttempt
from durable._worker.waits import (
    IN_PROCESS_WAIT,
    StepFuture,
    probe,
    seconds,
    step_futures,
    timestamp_in,
)
from durable.errors import CancelledError, NonDeterminismError, SuspendInvocation, TerminalError
from durable.internal.v1 import storage_pb2
from durable.v1 import types_pb2

_ANNOUNCE_AFTER = 0.05


class InvocationContext(WorkflowContext):
    """``ctx`` of one attempt of one invocation."""

    def __init__(
        self,
        *,
        record: storage_pb2.InvocationRecord,
        entries: list[storage_pb2.JournalRecord],
        last_seq: int,
        journal: Journal,
        worker_id: str,
        flags: ControlFlags,
        announce: Callable[[int, int, str], None],
        max_payload: int,
        waker: Waker,
        kind: int = types_pb2.HANDLER_KIND_SERVICE,
        state: StateStore | None = None,
        rpc: TransportRouter | None = None,
        guard: ClaimGuard | None = None,
        replay_only: bool = False,
    ) -> None:
        """``replay_only``: check the code against the journal and stop (``ReplayDone``)
        where it would take a step the journal does not hold; nothing runs or is written
        (``durable replay``)."""
        self._rpc = rpc
        self._guard = guard
        # Held while an append is in flight, so the claim check compares the journal with
        # a last sequence that includes every append of ours the server has stored.
        self._append_lock = asyncio.Lock()
        self._record = record
        self._waker = waker
        self._entries = entries
        self._last_seq = last_seq
        self._journal = journal
        self._worker_id = worker_id
        self._flags = flags
        self._announce = announce
        self._max_payload = max_payload
        self._next_index = 0
        self._next_append = len(entries)
        # Finished steps not journaled yet, by index, and the highest index whose result
        # the handler has been handed: see _flush.
        self._ready: dict[int, storage_pb2.JournalRecord] = {}
        self._ready_changed = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._handed = len(entries) - 1
        self._final_only = False
        self._last_recorded_at: Timestamp | None = None
        self._aborted: RetryAttempt | None = None
        self._rng = _random.Random(record.id)
        self._draws = 0
        #: Draws made before each new step was taken, until its entry is made.
        self._draws_at: dict[int, int] = {}
        self._replay_only = replay_only
        self.keyed = KeyedSteps(
            self,
            kind=kind,
            handler=record.handler,
            key=record.key,
            invocation_id=record.id,
            store=state,
            waker=waker,
            max_payload=max_payload,
        )
        self.cancel_delivered = any(
            e.HasField("failure") and e.failure.error_type == CANCELLED_ERROR_TYPE for e in entries
        )

    # -- identity -------------------------------------------------------------------------

    @property
    def invocation_id(self) -> str:
        return self._record.id

    @property
    def handler(self) -> str:
        return self._record.handler

    @property
    def key(self) -> str:
        return self._record.key

    @property
    def attempt(self) -> int:
        return self._record.attempt

    @property
    def cancel_requested(self) -> bool:
        return self._flags.cancel

    @property
    def cancel_reason(self) -> str:
        return self._flags.cancel_reason

    @property
    def steps_taken(self) -> int:
        return self._next_index

    @property
    def journal_length(self) -> int:
        """Steps journaled (a final-only entry is not a step)."""
        return self._next_append - (1 if self._final_only else 0)

    @property
    def last_recorded_at(self) -> Timestamp | None:
        """When the newest entry this attempt appended was recorded."""
        return self._last_recorded_at

    def unconsumed_entries(self) -> int:
        """Journaled steps the code has not asked for (non-determinism once it returned)."""
        return max(0, len(self._entries) - self._next_index)

    # -- steps ----------------------------------------------------------------------------

    def _take(self, kind: int, name: str) -> tuple[int, storage_pb2.JournalRecord | None]:
        index = self._next_index
        self._next_index += 1
        logs.at_step(index)
        if index < len(self._entries):
            entry = self._entries[index]
            if entry.HasField("draws") and entry.draws != self._draws:
                raise NonDeterminismError(
                    f"non-deterministic replay at step {index}: the code had drawn "
                    f"{self._draws} values from ctx.random()/ctx.uuid() before it, the "
                    f"journal says {entry.draws}; the handler's code changed since this "
                    "invocation started (deploy the old code, or cancel it)",
                    index=index,
                    expected=f"{entry.draws} random draws",
                    actual=f"{self._draws} random draws",
                )
            if entry.kind != kind or entry.name != name:
                expected = describe_step(entry.kind, entry.name)
                actual = describe_step(kind, name)
                raise NonDeterminismError(
                    f"non-deterministic replay at step {index}: the journal holds {expected} "
                    f"but the code asked for {actual}; the handler's code changed since this "
                    "invocation started (deploy the old code, or cancel it)",
                    index=index,
                    expected=expected,
                    actual=actual,
                )
            return index, entry
        if self._replay_only:
            raise ReplayDone(index)
        self._draws_at[index] = self._draws
        return index, None

    def _before_new_step(self, index: int, kind: int, name: str) -> bool:
        """Apply Pause and Cancel; True when this step must deliver the cancellation."""
        if self._flags.cancel and not self.cancel_delivered:
            return True
        if self._flags.pause:
            raise SuspendInvocation("paused")
        return False

    # -- journaling ----------------------------------------------------------------------
    #
    # A step's entry is journaled lazily: not when the step finishes, but before the next
    # step's side effect runs, or with the handler's outcome when it ends. The handler's code
    # between steps is deterministic and has no side effects, so nothing durable can depend
    # on a result before it is journaled; in exchange the last step's entry and the outcome
    # travel in one fenced write. Entries are appended strictly in step order.

    def _complete(self, entry: storage_pb2.JournalRecord) -> None:
        """Record a finished step whose result is handed to the handler."""
        self._ready[entry.index] = entry
        self._handed = max(self._handed, entry.index)
        self._ready_changed.set()

    def _abort(self, abort: RetryAttempt) -> None:
        """A step will never be journaled: nothing may wait for it any longer."""
        self._aborted = abort
        self._ready_changed.set()

    async def _flush(self, upto: int, final: storage_pb2.FinalOutcome | None = None) -> None:
        """Journal every entry up to index ``upto``, in order (waiting for steps still
        running below it); attach ``final`` to the last one, or journal it alone."""
        if self._next_append > upto and final is None:
            return  # journaled already (the common case: one step at a time)
        async with self._flush_lock:
            while self._next_append <= upto:
                while self._next_append not in self._ready and self._aborted is None:
                    self._ready_changed.clear()
                    await self._ready_changed.wait()
                if self._next_append not in self._ready:
                    assert self._aborted is not None
                    raise RetryAttempt(self._aborted.cause)
                entry = self._ready.pop(self._next_append)
                if final is not None and entry.index == upto:
                    entry.final.CopyFrom(final)
                    final = None
                await self._publish(entry)
            if final is not None:
                entry = self._entry(self._next_append, types_pb2.STEP_KIND_UNSPECIFIED, "")
                entry.final.CopyFrom(final)
                await self._publish(entry)
                self._final_only = True

    async def flush_all(self, final: storage_pb2.FinalOutcome | None = None) -> None:
        """Journal the finished steps (and the outcome, when the handler ended for good).

        The handler has ended, so nothing waits here for a step that never finished (one
        that failed, or was left running): journaling stops at the first such gap.
        """
        upto = self._next_append - 1
        while upto + 1 in self._ready:
            upto += 1
        await self._flush(upto, final)

    async def _publish(self, entry: storage_pb2.JournalRecord) -> None:
        entry.recorded_at.CopyFrom(now_ts())
        try:
            async with self._append_lock:
                self._last_seq = await self._journal.append(self._record.id, entry, self._last_seq)
        except JournalFenced as err:
            raise Fenced(str(err)) from err
        if self._guard is not None:
            self._guard.appended(self._last_seq)
        self._next_append += 1
        self._last_recorded_at = entry.recorded_at

    async def _check_claim(self) -> None:
        """Right before a side effect: stop (``ClaimLost``) if this worker may have lost the
        invocation and another has taken it over. Free while the lease is held."""
        if self._guard is None or self._guard.sure():
            return
        async with self._append_lock:
            try:
                await self._guard.check(self._last_seq)
            except Exception as err:
                # NATS did not answer: end the attempt (it is retried) rather than guess, and
                # out of reach of the handler's own ``except Exception``.
                abort = RetryAttempt(err)
                self._abort(abort)
                raise abort from err

    def _entry(self, index: int, kind: int, name: str) -> storage_pb2.JournalRecord:
        return storage_pb2.JournalRecord(
            index=index,
            kind=kind,  # type: ignore[arg-type]
            name=name,
            recorded_at=now_ts(),
            attempt=self._record.attempt,
            worker_id=self._worker_id,
            version=self._record.attempt_version,
            draws=self._draws_at.pop(index, self._draws),
        )

    def _cancellation(self, index: int, kind: int, name: str) -> CancelledError:
        """Journal the cancellation as this step's outcome; the error to raise in it."""
        reason = self._flags.cancel_reason or "invocation cancelled"
        entry = self._entry(index, kind, name)
        entry.failure.CopyFrom(types_pb2.Failure(message=reason, error_type=CANCELLED_ERROR_TYPE))
        self._complete(entry)
        self.cancel_delivered = True
        return CancelledError(reason)

    @staticmethod
    def _replay(entry: storage_pb2.JournalRecord, result_type: Any) -> Any:
        if entry.HasField("failure"):
            raise error_from_failure(entry.failure)
        return _codec.decode(entry.value.data, entry.value.content_type, result_type)

    async def run(
        self,
        name: str,
        fn: Callable[..., Any],
        *args: Any,
        retry: RetryPolicy | None = None,
        result_type: Any = None,
        **kwargs: Any,
    ) -> Any:
        if result_type is None:
            result_type = declared_return_type(fn)
        index, entry = self._take(types_pb2.STEP_KIND_RUN, name)
        if entry is not None:
            return self._replay(entry, result_type)
        # Every result handed to the handler so far is journaled before a new side effect;
        # Pause and Cancel are looked at after that, right before the side effect.
        await self._flush(self._handed)
        if self._before_new_step(index, types_pb2.STEP_KIND_RUN, name):
            raise self._cancellation(index, types_pb2.STEP_KIND_RUN, name)
        entry = self._entry(index, types_pb2.STEP_KIND_RUN, name)
        entry.started_at.CopyFrom(entry.recorded_at)  # recorded_at is set again when stored
        failed: TerminalError | None = None
        # Tell the control plane which step is running only when it takes a while: quick
        # steps would cost a message each for nothing an operator could see.
        announce = asyncio.get_running_loop().call_later(
            _ANNOUNCE_AFTER, self._announce, index, types_pb2.STEP_KIND_RUN, name
        )
        began = time.perf_counter()
        try:
            with tracing.span(f"step {name}", attributes=self._step_attributes(index, "run")):
                value = await execute(
                    fn, args, kwargs, retry, self._check_claim, on_retry=self._retried
                )
            entry.value.CopyFrom(
                encode_bounded(value, self._max_payload, f"the result of step {name!r}")
            )
        except TerminalError as err:
            failed = err
        except RetryAttempt as abort:
            self._abort(abort)
            raise
        finally:
            announce.cancel()
            metrics.METRICS.step(self._record.handler, "run", time.perf_counter() - began)
        if failed is not None:
            entry.failure.CopyFrom(failure_of(failed))
        self._complete(entry)
        if failed is not None:
            raise failed
        # Hand back what a replay would, so the first run and the replays agree.
        return _codec.decode(entry.value.data, entry.value.content_type, result_type)

    def _step_attributes(self, index: int, kind: str) -> dict[str, Any]:
        return {
            "durable.invocation_id": self._record.id,
            "durable.step": index,
            "durable.step_kind": kind,
            "durable.attempt": self._record.attempt,
        }

    def _retried(self, err: BaseException) -> None:
        """A try of a step failed and will be tried again in place."""
        metrics.METRICS.retry(self._record.handler, "step", type(err).__name__)

    async def now(self) -> dt.datetime:
        index, entry = self._take(types_pb2.STEP_KIND_NOW, "now")
        if entry is not None:
            return dt.datetime.fromisoformat(self._replay(entry, str))
        if self._before_new_step(index, types_pb2.STEP_KIND_NOW, "now"):
            raise self._cancellation(index, types_pb2.STEP_KIND_NOW, "now")
        value = dt.datetime.now(dt.UTC)
        entry = self._entry(index, types_pb2.STEP_KIND_NOW, "now")
        data, ct = _codec.encode(value.isoformat())
        entry.value.CopyFrom(storage_pb2.StoredPayload(data=data, content_type=ct))
        self._complete(entry)
        return value

    def random(self) -> float:
        self._draws += 1
        return self._rng.random()

    def uuid(self) -> _uuid.UUID:
        self._draws += 1
        return _uuid.UUID(int=self._rng.getrandbits(128), version=4)

    # -- waiting without holding anything ------------------------------------------------

    def _check_new_step(self, index: int, kind: int, name: str) -> TerminalError | None:
        """Pause (raises) and Cancel (the error to deliver, journaled as this step's
        outcome) for a step that is neither ``run`` nor awaited."""
        if not self._before_new_step(index, kind, name):
            return None
        return self._cancellation(index, kind, name)

    def _value_entry(self, index: int, kind: int, name: str, value: Any) -> None:
        entry = self._entry(index, kind, name)
        data, ct = _codec.encode(value)
        entry.value.CopyFrom(storage_pb2.StoredPayload(data=data, content_type=ct))
        self._complete(entry)

    def sleep(self, duration: Duration) -> DurableFuture[None]:
        index, entry = self._take(types_pb2.STEP_KIND_SLEEP, "sleep")
        target = types_pb2.WaitTarget(kind=types_pb2.WAIT_KIND_TIMER, step_index=index)
        if entry is not None:
            target.due_at.FromJsonString(self._replay(entry, str))
        else:
            target.due_at.CopyFrom(timestamp_in(seconds(duration)))
            attributes = self._step_attributes(index, "sleep")
            attributes["durable.due_at"] = target.due_at.ToJsonString()
            with tracing.span("sleep", attributes=attributes):
                self._value_entry(
                    index, types_pb2.STEP_KIND_SLEEP, "sleep", target.due_at.ToJsonString()
                )
        return StepFuture(self._await, target, type(None))

    def awakeable(self, result_type: Any = None) -> tuple[str, DurableFuture[Any]]:
        index, entry = self._take(types_pb2.STEP_KIND_AWAKEABLE, "awakeable")
        awk = awakeable_id(self._record.id, index)
        if entry is None:
            self._value_entry(index, types_pb2.STEP_KIND_AWAKEABLE, "awakeable", awk)
        target = types_pb2.WaitTarget(
            kind=types_pb2.WAIT_KIND_AWAKEABLE, step_index=index, awakeable_id=awk
        )
        return awk, StepFuture(self._await, target, Any if result_type is None else result_type)

    def call(
        self, handler: Any, input: Any = None, *, key: str = "", result_type: Any = None
    ) -> DurableFuture[Any]:
        name = handler_name(handler)
        if result_type is None:
            result_type = Any if isinstance(handler, str) else declared_return_type(handler)
        index, entry = self._take(types_pb2.STEP_KIND_CALL, name)
        target = types_pb2.WaitTarget(kind=types_pb2.WAIT_KIND_CALL, step_index=index)
        fut = StepFuture(self._await, target, result_type)
        if entry is not None:
            if entry.HasField("failure"):
                fut.outcome, fut.settled = entry, True  # cancelled before it started
            else:
                target.invocation_id = self._replay(entry, str)
            return fut
        target.invocation_id = child_invocation_id(self._record.id, index)
        cancelled = self._check_new_step(index, types_pb2.STEP_KIND_CALL, name)
        if cancelled is not None:
            fut.outcome, fut.settled = self._ready[index], True
            return fut
        fut.started = asyncio.ensure_future(
            self._start_child(index, types_pb2.STEP_KIND_CALL, name, key, input, None, target)
        )
        return fut

    async def send(
        self, handler: Any, input: Any = None, *, key: str = "", delay: Duration | None = None
    ) -> str:
        name = handler_name(handler)
        index, entry = self._take(types_pb2.STEP_KIND_SEND, name)
        if entry is not None:
            return str(self._replay(entry, str))
        cancelled = self._check_new_step(index, types_pb2.STEP_KIND_SEND, name)
        if cancelled is not None:
            raise cancelled
        at = timestamp_in(seconds(delay)) if delay is not None else None
        return await self._start_child(index, types_pb2.STEP_KIND_SEND, name, key, input, at, None)

    async def _start_child(
        self,
        index: int,
        kind: int,
        name: str,
        key: str,
        input: Any,
        at: Timestamp | None,
        call: types_pb2.WaitTarget | None,
    ) -> str:
        """Start the invocation of a call or send (idempotently: its id is derived from
        ours and the step, or from the workflow id), then journal the step with its id."""
        child = child_invocation_id(self._record.id, index)
        verb = "call" if call is not None else "send"
        with tracing.span(f"{verb} {name}", attributes=self._step_attributes(index, verb)):
            try:
                # Our results so far, before the side effect (not this step's own entry).
                await self._flush(min(self._handed, index - 1))
                payload = encode_bounded(input, self._max_payload, f"the input of {name}")
                await self._check_claim()
                now = now_ts()
                record = storage_pb2.InvocationRecord(
                    id=child,
                    handler=name,
                    key=key,
                    input=payload,
                    status=(
                        types_pb2.INVOCATION_STATUS_SCHEDULED
                        if at is not None
                        else types_pb2.INVOCATION_STATUS_PENDING
                    ),
                    created_at=now,
                    updated_at=now,
                    generation=1,
                    caller_id=self._record.id if call is not None else "",
                    scheduled_at=at,
                )
                tracing.stamp(record.trace_context)  # the callee's attempts continue this span
                child = await self._waker.start(record, at=at)
                metrics.METRICS.started(name)
            except TerminalError as err:
                # Journaled as the step's outcome, so a replay fails the same way.
                entry = self._entry(index, kind, name)
                entry.failure.CopyFrom(failure_of(err))
                self._complete(entry)
                raise
            except Exception as err:
                self._abort(RetryAttempt(err))
                raise RetryAttempt(err) from err
            if call is not None:
                call.invocation_id = child
            self._value_entry(index, kind, name, child)
            return child

    async def _await(self, fut: StepFuture) -> Any:
        """The outcome of a timer, awakeable or call; suspends while it has none."""
        if fut.started is not None:
            await fut.started
        if not fut.settled:
            await self._settle(fut)
        assert fut.outcome is not None
        return self._replay(fut.outcome, fut.result_type)

    async def _settle(self, fut: StepFuture) -> None:
        name = f"#{fut.index}"
        index, entry = self._take(types_pb2.STEP_KIND_AWAIT, name)
        if entry is None:
            cancelled = self._check_new_step(index, types_pb2.STEP_KIND_AWAIT, name)
            if cancelled is not None:
                raise cancelled
            began = now_ts()
            outcome = fut.outcome or await self._probe(fut, wait=True)
            if outcome is None:
                raise SuspendInvocation(f"waiting for {fut.describe()}", (fut.target,))
            entry = self._entry(index, types_pb2.STEP_KIND_AWAIT, name)
            entry.started_at.CopyFrom(began)
            if outcome.HasField("failure"):
                entry.failure.CopyFrom(outcome.failure)
            else:
                entry.value.CopyFrom(outcome.value)
            self._complete(entry)
        fut.outcome, fut.settled = entry, True

    async def _probe(self, fut: StepFuture, *, wait: bool) -> storage_pb2.JournalRecord | None:
        remaining = fut.remaining()
        if wait and 0 < remaining <= IN_PROCESS_WAIT:
            await asyncio.sleep(remaining)
        out = await probe(fut.target, self._record.id, self._journal, self._waker)
        if out is not None and fut.target.kind == types_pb2.WAIT_KIND_TIMER:
            out.value.CopyFrom(storage_pb2.StoredPayload(data=b"null", content_type=_JSON))
        return out

    def _futures(self, futures: tuple[DurableFuture[Any], ...]) -> list[StepFuture]:
        return step_futures(tuple(self.keyed.as_future(f) for f in futures))

    async def select(self, *futures: DurableFuture[Any]) -> tuple[int, Any]:
        futs = self._futures(futures)
        index, entry = self._take(types_pb2.STEP_KIND_SELECT, "select")
        if entry is None:
            cancelled = self._check_new_step(index, types_pb2.STEP_KIND_SELECT, "select")
            if cancelled is not None:
                raise cancelled
            winner = await self._first_completed(futs)
            self._value_entry(index, types_pb2.STEP_KIND_SELECT, "select", winner)
        else:
            winner = int(self._replay(entry, int))
        return winner, await futs[winner]

    async def _first_completed(self, futs: list[StepFuture]) -> int:
        for f in futs:
            if f.started is not None:
                await f.started
        while True:
            for i, f in enumerate(futs):
                if f.settled or f.outcome is not None:
                    return i
                f.outcome = await self._probe(f, wait=False)
                if f.outcome is not None:
                    return i
            soonest = min(f.remaining() for f in futs)
            if soonest > IN_PROCESS_WAIT:
                waits = tuple(f.target for f in futs)
                raise SuspendInvocation(f"waiting for one of {len(futs)}", waits)
            await asyncio.sleep(soonest)

    async def gather(self, *futures: DurableFuture[Any]) -> list[Any]:
        return [await f for f in self._futures(futures)]

    async def resolve_awakeable(self, awakeable_id: str, value: Any = None) -> None:
        out = storage_pb2.JournalRecord()
        out.value.CopyFrom(encode_bounded(value, self._max_payload, "the awakeable's value"))
        await self._complete_awakeable(awakeable_id, out)

    async def reject_awakeable(self, awakeable_id: str, reason: str) -> None:
        out = storage_pb2.JournalRecord()
        out.failure.CopyFrom(types_pb2.Failure(message=reason, error_type="TerminalError"))
        await self._complete_awakeable(awakeable_id, out)

    async def _complete_awakeable(self, awk: str, out: storage_pb2.JournalRecord) -> None:
        parsed = parse_awakeable_id(awk)
        if parsed is None:
            raise TerminalError(f"{awk!r} is not an awakeable id (awk_<26 characters>_<step>)")

        async def effect() -> None:
            # The first resolution wins; a second one changes nothing, as from the outside.
            with contextlib.suppress(AlreadyCompleted):
                try:
                    await self._waker.complete_awakeable(*parsed, out)
                except CompletionRefused as err:
                    raise TerminalError(str(err)) from None

        await self._once(types_pb2.STEP_KIND_RESOLVE_AWAKEABLE, awk, effect)

    async def _once(self, kind: int, label: str, effect: Callable[[], Awaitable[None]]) -> None:
        """A step that is only a side effect: run once, then journaled (empty, or with
        the TerminalError it raised)."""
        index, entry = self._take(kind, label)
        if entry is not None:
            if entry.HasField("failure"):
                raise error_from_failure(entry.failure)
            return
        await self._flush(min(self._handed, index - 1))
        cancelled = self._check_new_step(index, kind, label)
        if cancelled is not None:
            raise cancelled
        await self._check_claim()
        try:
            await effect()
        except TerminalError as err:
            # The step's outcome: a replay fails the same way, and the steps after it do not
            # wait for an entry that would never come.
            entry = self._entry(index, kind, label)
            entry.failure.CopyFrom(failure_of(err))
            self._complete(entry)
            raise
        self._value_entry(index, kind, label, None)

    # -- state and promises (virtual objects, workflows; see keyed.py) --------------------

    async def get(self, name: str, result_type: Any = None) -> Any:
        return await self.keyed.get(name, result_type)

    def set(self, name: str, value: Any) -> None:
        self.keyed.set(name, value)

    def clear(self, name: str) -> None:
        self.keyed.clear(name)

    def clear_all(self) -> None:
        self.keyed.clear_all()

    async def state_keys(self) -> list[str]:
        return await self.keyed.keys()

    def promise(self, name: str, result_type: Any = None) -> DurablePromise[Any]:
        return self.keyed.promise(name, result_type)

    def stub(
        self,
        stub_class: Callable[[Any], StubT],
        *,
        retry: RetryPolicy | None = None,
        terminal_codes: Any = None,
    ) -> StubT:
        if self._rpc is None:
            raise TerminalError("this worker has no gRPC transport configured")
        channel = DurableChannel(
            self.run,
            lambda: f"{self._record.id}:{self._next_index}",
            self._rpc,
            retry=retry,
            terminal_codes=frozenset(terminal_codes) if terminal_codes else TERMINAL_CODES,
        )
        return stub_class(channel)


_JSON = "application/json"
