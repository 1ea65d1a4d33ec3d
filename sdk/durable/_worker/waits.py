"""The futures ``ctx.sleep``, ``ctx.awakeable`` and ``ctx.call`` return, and how a worker
finds out whether one has completed.

A future is created by a journaled step (SLEEP with its due time, AWAKEABLE, CALL with the
callee's id). The first time the handler awaits it, the worker looks for its completion:
the clock for a timer, the stored resolution for an awakeable, the callee's final journal
entry for a call. Found, the outcome is journaled as an AWAIT entry, so a replay reads it
from the journal and never asks again; not found, the invocation suspends (see
``durable._store.waking``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from durable._context import DurableFuture, Duration
from durable._store.ids import token
from durable._store.journal import Journal
from durable._store.waking import Waker
from durable.internal.v1 import storage_pb2
from durable.v1 import types_pb2

# A timer due this soon is waited out in the process instead of suspending for it.
IN_PROCESS_WAIT = 1.0

Outcome = storage_pb2.JournalRecord  # only its value or failure is used


def seconds(duration: Duration) -> float:
    value = duration.total_seconds() if isinstance(duration, dt.timedelta) else float(duration)
    if value < 0:
        raise ValueError(f"a duration cannot be negative (got {value} s)")
    return value


def timestamp_in(delay: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(time.time_ns() + int(delay * 1e9))
    return ts


class StepFuture(DurableFuture[Any]):
    """A timer, awakeable or call of one invocation attempt."""

    def __init__(
        self,
        await_fn: Callable[[StepFuture], Awaitable[Any]],
        target: types_pb2.WaitTarget,
        result_type: Any,
        started: asyncio.Future[Any] | None = None,
    ) -> None:
        self._await_fn = await_fn
        self.target = target
        self.result_type = result_type
        # A call starts its callee in the background; the entry is ready once it did.
        self.started = started
        # Set once the outcome is known: found by ctx.select, or journaled by an await.
        self.outcome: Outcome | None = None
        self.settled = False

    @property
    def index(self) -> int:
        return self.target.step_index

    def __await__(self) -> Generator[Any, None, Any]:
        return self._await_fn(self).__await__()

    def remaining(self) -> float:
        """Seconds until a timer is due (0 when due, inf for other kinds)."""
        if self.target.kind != types_pb2.WAIT_KIND_TIMER:
            return float("inf")
        return max(0.0, self.target.due_at.ToNanoseconds() / 1e9 - time.time())

    def describe(self) -> str:
        t = self.target
        if t.kind == types_pb2.WAIT_KIND_TIMER:
            return f"timer of step {t.step_index} due {t.due_at.ToJsonString()}"
        if t.kind == types_pb2.WAIT_KIND_AWAKEABLE:
            return f"awakeable {t.awakeable_id}"
        if t.kind == types_pb2.WAIT_KIND_PROMISE:
            return f"promise {t.promise!r}"
        return f"call {t.invocation_id} (step {t.step_index})"


async def probe(
    target: types_pb2.WaitTarget, invocation_id: str, journal: Journal, waker: Waker
) -> Outcome | None:
    """The outcome of one wait if it has completed, else None. No waiting."""
    if target.kind == types_pb2.WAIT_KIND_TIMER:
        if target.due_at.ToNanoseconds() <= time.time_ns():
            return Outcome()
        return None
    if target.kind == types_pb2.WAIT_KIND_AWAKEABLE:
        return await waker.awakeable_outcome(invocation_id, target.step_index)
    if target.kind == types_pb2.WAIT_KIND_PROMISE:
        # Only a workflow's run awaits promises, so they are stored beside its journal.
        return await waker.promise_outcome(invocation_id, token(target.promise))
    final = await journal.final_entry(target.invocation_id)
    if final is None:
        if await waker.exists(target.invocation_id):
            return None
        # Ended and purged (retention) before this caller took its result: it never will.
        return Outcome(
            failure=types_pb2.Failure(
                message=f"the called invocation {target.invocation_id} was purged before its "
                "result was taken",
                error_type="TerminalError",
            )
        )
    out = Outcome()
    if final.final.status == types_pb2.INVOCATION_STATUS_COMPLETED:
        out.value.CopyFrom(final.final.output)
    else:
        out.failure.CopyFrom(final.final.failure)
    return out


async def any_completed(
    invocation_id: str,
    waits: list[types_pb2.WaitTarget],
    journal: Journal,
    waker: Waker,
) -> bool:
    """Whether any of a suspended invocation's waits has completed."""
    for target in waits:
        if await probe(target, invocation_id, journal, waker) is not None:
            return True
    return False


def step_futures(futures: tuple[DurableFuture[Any], ...]) -> list[StepFuture]:
    if not futures:
        raise ValueError("select and gather need at least one future")
    for f in futures:
        if not isinstance(f, StepFuture):
            raise TypeError(
                f"{f!r} is not a durable future; pass what ctx.sleep, ctx.awakeable or "
                "ctx.call returned"
            )
    return list(futures)  # type: ignore[arg-type]
