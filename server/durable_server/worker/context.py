"""The runtime's ``ctx``: replays journaled steps and journals new ones, in order.

Step numbers are taken when a step is *called*, and entries are appended in that order even
when steps finish out of order (``asyncio.gather`` over several ``ctx.run``), so a replay maps
the same calls to the same entries. Before a new step it honours Pause (unwind, keep the
journal) and Cancel (journal the cancellation as this step's outcome and raise it, once).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import inspect
import random as _random
import typing
import uuid as _uuid
from collections.abc import Callable
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from durable import _serde
from durable._context import Context
from durable._retry import RetryPolicy
from durable.errors import CancelledError, NonDeterminismError, SuspendInvocation, TerminalError
from durable.internal.v1 import storage_pb2
from durable.v1 import types_pb2
from durable_server.journal import Journal, JournalFenced
from durable_server.records import now_ts
from durable_server.worker.signals import ControlFlags, Fenced, RetryAttempt

CANCELLED_ERROR_TYPE = "CancelledError"
_ANNOUNCE_AFTER = 0.05
_KIND_NAMES: dict[int, str] = {
    types_pb2.STEP_KIND_RUN: "run",
    types_pb2.STEP_KIND_NOW: "now",
}


def describe_step(kind: int, name: str) -> str:
    label = _KIND_NAMES.get(kind) or types_pb2.StepKind.Name(kind)  # type: ignore[arg-type]
    return f"{label} {name!r}"


def failure_of(err: BaseException) -> types_pb2.Failure:
    code = err.code if isinstance(err, TerminalError) else 0
    message = err.message if isinstance(err, TerminalError) else str(err)
    return types_pb2.Failure(
        message=message or type(err).__name__, error_type=type(err).__name__, code=code
    )


def encode_bounded(value: Any, limit: int, what: str) -> storage_pb2.StoredPayload:
    """Encode a step result or handler output; a TerminalError when it cannot be stored."""
    try:
        data, content_type = _serde.encode(value)
    except TypeError as err:  # retrying cannot make the value encodable
        raise TerminalError(f"{what}: {err}") from err
    if len(data) > limit:
        raise TerminalError(
            f"{what} is {len(data)} bytes encoded; the limit is {limit} bytes "
            "(--max-payload-bytes). Store large data elsewhere and return a reference."
        )
    return storage_pb2.StoredPayload(data=data, content_type=content_type)


def error_from_failure(failure: types_pb2.Failure) -> TerminalError:
    if failure.error_type == CANCELLED_ERROR_TYPE:
        return CancelledError(failure.message, failure.code)
    return TerminalError(failure.message, failure.code)


def _declared_return_type(fn: Callable[..., Any]) -> Any:
    """``fn``'s return annotation, evaluated once per function (lambdas have none)."""
    if not getattr(fn, "__annotations__", None):
        return Any
    try:
        return _return_type_cached(fn)
    except TypeError:  # unhashable callable
        return _return_type(fn)


def _return_type(fn: Callable[..., Any]) -> Any:
    try:
        return typing.get_type_hints(fn).get("return", Any)
    except Exception:
        return Any


_return_type_cached = functools.lru_cache(maxsize=1024)(_return_type)


class InvocationContext(Context):
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
    ) -> None:
        self._record = record
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
        self._ready_changed = asyncio.Condition()
        self._flush_lock = asyncio.Lock()
        self._handed = len(entries) - 1
        self._final_only = False
        self._last_recorded_at: Timestamp | None = None
        self._aborted: RetryAttempt | None = None
        self._rng = _random.Random(record.id)
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
        if index < len(self._entries):
            entry = self._entries[index]
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

    async def _complete(self, entry: storage_pb2.JournalRecord) -> None:
        """Record a finished step whose result is handed to the handler."""
        async with self._ready_changed:
            self._ready[entry.index] = entry
            self._ready_changed.notify_all()
        self._handed = max(self._handed, entry.index)

    async def _flush(self, upto: int, final: storage_pb2.FinalOutcome | None = None) -> None:
        """Journal every entry up to index ``upto``, in order (waiting for steps still
        running below it); attach ``final`` to the last one, or journal it alone."""
        if self._next_append > upto and final is None:
            return  # journaled already (the common case: one step at a time)
        async with self._flush_lock:
            while self._next_append <= upto:
                async with self._ready_changed:
                    await self._ready_changed.wait_for(
                        lambda: self._next_append in self._ready or self._aborted is not None
                    )
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
            self._last_seq = await self._journal.append(self._record.id, entry, self._last_seq)
        except JournalFenced as err:
            raise Fenced(str(err)) from err
        self._next_append += 1
        self._last_recorded_at = entry.recorded_at

    def _entry(self, index: int, kind: int, name: str) -> storage_pb2.JournalRecord:
        return storage_pb2.JournalRecord(
            index=index,
            kind=kind,  # type: ignore[arg-type]
            name=name,
            recorded_at=now_ts(),
            attempt=self._record.attempt,
            worker_id=self._worker_id,
        )

    async def _deliver_cancel(self, index: int, kind: int, name: str) -> None:
        reason = self._flags.cancel_reason or "invocation cancelled"
        entry = self._entry(index, kind, name)
        entry.failure.CopyFrom(types_pb2.Failure(message=reason, error_type=CANCELLED_ERROR_TYPE))
        await self._complete(entry)
        self.cancel_delivered = True
        raise CancelledError(reason)

    @staticmethod
    def _replay(entry: storage_pb2.JournalRecord, result_type: Any) -> Any:
        if entry.HasField("failure"):
            raise error_from_failure(entry.failure)
        return _serde.decode(entry.value.data, entry.value.content_type, result_type)

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
            result_type = _declared_return_type(fn)
        index, entry = self._take(types_pb2.STEP_KIND_RUN, name)
        if entry is not None:
            return self._replay(entry, result_type)
        # Every result handed to the handler so far is journaled before a new side effect;
        # Pause and Cancel are looked at after that, right before the side effect.
        await self._flush(self._handed)
        if self._before_new_step(index, types_pb2.STEP_KIND_RUN, name):
            await self._deliver_cancel(index, types_pb2.STEP_KIND_RUN, name)
        entry = self._entry(index, types_pb2.STEP_KIND_RUN, name)
        failed: TerminalError | None = None
        # Tell the control plane which step is running only when it takes a while: quick
        # steps would cost a message each for nothing an operator could see.
        announce = asyncio.get_running_loop().call_later(
            _ANNOUNCE_AFTER, self._announce, index, types_pb2.STEP_KIND_RUN, name
        )
        try:
            value = await self._execute(fn, args, kwargs, retry)
            entry.value.CopyFrom(
                encode_bounded(value, self._max_payload, f"the result of step {name!r}")
            )
        except TerminalError as err:
            failed = err
        except RetryAttempt as abort:
            # This step will never be journaled: nothing may wait for it any longer.
            async with self._ready_changed:
                self._aborted = abort
                self._ready_changed.notify_all()
            raise
        finally:
            announce.cancel()
        if failed is not None:
            entry.failure.CopyFrom(failure_of(failed))
        await self._complete(entry)
        if failed is not None:
            raise failed
        # Hand back what a replay would, so the first run and the replays agree.
        return _serde.decode(entry.value.data, entry.value.content_type, result_type)

    async def _execute(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        retry: RetryPolicy | None,
    ) -> Any:
        attempt = 0
        while True:
            attempt += 1
            try:
                if inspect.iscoroutinefunction(fn):
                    return await fn(*args, **kwargs)
                result = await asyncio.to_thread(fn, *args, **kwargs)
                if inspect.isawaitable(result):
                    return await result
                return result
            except TerminalError:
                raise
            except Exception as err:
                if retry is None:
                    raise RetryAttempt(err) from err
                if retry.gives_up_after(attempt):
                    raise TerminalError(
                        f"gave up after {attempt} attempts: {type(err).__name__}: {err}"
                    ) from err
                await asyncio.sleep(retry.delay(attempt))

    async def now(self) -> dt.datetime:
        index, entry = self._take(types_pb2.STEP_KIND_NOW, "now")
        if entry is not None:
            return dt.datetime.fromisoformat(self._replay(entry, str))
        if self._before_new_step(index, types_pb2.STEP_KIND_NOW, "now"):
            await self._deliver_cancel(index, types_pb2.STEP_KIND_NOW, "now")
        value = dt.datetime.now(dt.UTC)
        entry = self._entry(index, types_pb2.STEP_KIND_NOW, "now")
        data, ct = _serde.encode(value.isoformat())
        entry.value.CopyFrom(storage_pb2.StoredPayload(data=data, content_type=ct))
        await self._complete(entry)
        return value

    def random(self) -> float:
        return self._rng.random()

    def uuid(self) -> _uuid.UUID:
        return _uuid.UUID(int=self._rng.getrandbits(128), version=4)
