"""Replaying stored journals against code, without running anything: what ``durable
replay`` does before a deploy, as Temporal's Replayer does for workflow histories.

Each invocation's handler is run with a replay-only context over its stored journal: every
step the code asks for must match the journal's entry at that position (kind, name, and the
number of ``ctx.random()``/``ctx.uuid()`` draws before it). A step the journal does not hold
ends the replay (``ReplayDone``) before anything runs, so no side effect, call, timer or
state write ever happens; ended invocations must also end where their journal ends. What
the code does between steps runs for real, as it would on a worker: it must be free of side
effects there anyway.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from durable import _codec
from durable._handlers import Registry
from durable._store.journal import Journal
from durable._store.records import Record
from durable._store.waking import Waker
from durable._worker.context import InvocationContext
from durable._worker.signals import ControlFlags, ReplayDone, RetryAttempt
from durable.errors import NonDeterminismError, SuspendInvocation, TerminalError
from durable.internal.v1 import storage_pb2
from durable.v1 import types_pb2


class Verdict(enum.StrEnum):
    """What replaying one invocation found."""

    #: The code takes the journal's steps, in order, as far as the journal goes.
    MATCHES = "matches"
    #: The code asks for other steps than the journal holds: deploying it breaks this one.
    NON_DETERMINISTIC = "non-deterministic"
    #: The code raised while replaying (not a step's journaled failure): look at it.
    RAISED = "raised"
    #: Not replayed: no handler of that name in this code, or pinned to another version.
    SKIPPED = "skipped"


@dataclasses.dataclass(frozen=True)
class Replayed:
    """One invocation's replay."""

    invocation_id: str
    handler: str
    verdict: Verdict
    #: Journaled steps the replay went through.
    steps: int
    detail: str = ""


async def replay_one(
    registry: Registry,
    record: Record,
    entries: list[storage_pb2.JournalRecord],
    *,
    journal: Journal,
    waker: Waker,
    version: str = "",
) -> Replayed:
    """Replay one invocation's stored journal against the handlers in ``registry``.
    ``journal`` and ``waker`` are the store's, which a replay-only context never writes to."""
    hdef = registry.get(record.handler)

    def done(verdict: Verdict, steps: int, detail: str = "") -> Replayed:
        return Replayed(record.id, record.handler, verdict, steps, detail)

    if hdef is None:
        return done(Verdict.SKIPPED, 0, "no such handler in this code")
    if record.pinned and record.version and version and record.version != version:
        return done(
            Verdict.SKIPPED, 0, f"pinned to version {record.version}; this code never runs it"
        )
    # A final-only entry carries the outcome, not a step.
    steps = [e for e in entries if e.kind != types_pb2.STEP_KIND_UNSPECIFIED]
    ended = bool(entries) and entries[-1].HasField("final")
    ctx = InvocationContext(
        record=record,
        entries=steps,
        last_seq=0,
        journal=journal,
        worker_id="replay",
        flags=ControlFlags(),
        announce=lambda i, k, n: None,
        max_payload=1 << 62,
        waker=waker,
        kind=hdef.kind,
        replay_only=True,
    )
    args: list[Any] = [ctx]
    try:
        if hdef.takes_input:
            args.append(
                _codec.decode(record.input.data, record.input.content_type, hdef.input_type)
            )
        await hdef.fn(*args)
    except ReplayDone as sig:
        if ended:
            return done(
                Verdict.NON_DETERMINISTIC,
                sig.index,
                f"the code asks for step {sig.index}, but the invocation ended after "
                f"{len(steps)} steps",
            )
        return done(Verdict.MATCHES, sig.index)
    except NonDeterminismError as err:
        return done(Verdict.NON_DETERMINISTIC, ctx.steps_taken - 1, err.message)
    except (TerminalError, SuspendInvocation):
        pass  # as the journal says it went (a journaled failure raised again), or a pause
    except RetryAttempt as sig:
        return done(Verdict.RAISED, ctx.steps_taken, f"{type(sig.cause).__name__}: {sig.cause}")
    except _codec.DecodeFailure as err:
        return done(Verdict.RAISED, 0, f"the stored input does not decode: {err}")
    except Exception as err:
        return done(Verdict.RAISED, ctx.steps_taken, f"{type(err).__name__}: {err}")
    if ctx.unconsumed_entries():
        return done(
            Verdict.NON_DETERMINISTIC,
            ctx.steps_taken,
            f"the code returns after {ctx.steps_taken} steps, but the journal holds {len(steps)}",
        )
    return done(Verdict.MATCHES, ctx.steps_taken)
