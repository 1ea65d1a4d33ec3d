"""What may be completed from outside an invocation, and how much of that the engine stores.

Awakeables and workflow promises are completed by whoever holds their id or name: a client
through the control plane, or a handler. Each completion is stored once beside the journal
(``Waker.complete_awakeable``, ``Waker.complete_promise``), up to ``--max-payload-bytes``.
An awakeable id names a step index and a promise a free string, so without a bound a client
could store any number of completions against one invocation. The bounds:

- **Awakeables.** A step the journal holds may be resolved only if it is an awakeable. A
  step beyond the end of the journal may be resolved up to :data:`AWAKEABLES_AHEAD` steps
  ahead: awakeable ids are deterministic, so an external system may resolve one before the
  handler has journaled its creation, and that resolution must wait for it. A resolution at
  a step that turns out not to be an awakeable is never read, and goes with the invocation
  when it is purged.
- **Promises.** A workflow run holds at most :data:`PROMISES_PER_RUN` resolved promises.
  Names are free and a promise may be resolved long before the run awaits it, so nothing
  tells a name the run will await from one it never will: the bound counts them all.
"""

from __future__ import annotations

from collections.abc import Iterable

from nats.js import JetStreamContext

from durable._store.config import EngineConfig
from durable._store.journal import Journal
from durable.v1 import types_pb2

S = types_pb2

#: How many steps beyond the end of its journal an awakeable may be resolved: the bound on
#: the resolutions stored ahead of the handler, for each invocation.
AWAKEABLES_AHEAD = 100

#: How many resolved promises one workflow run may hold.
PROMISES_PER_RUN = 1000


class CompletionRefused(Exception):
    """A completion the engine will not store; the message says why."""


class NotAnAwakeable(CompletionRefused):
    """The step is journaled, and is not an awakeable."""


class TooFarAhead(CompletionRefused):
    """The step is further beyond the end of the journal than :data:`AWAKEABLES_AHEAD`."""


class TooManyPromises(CompletionRefused):
    """The workflow run holds :data:`PROMISES_PER_RUN` resolved promises already."""


async def check_awakeable_step(
    journal: Journal,
    invocation_id: str,
    index: int,
    awakeable_id: str,
    waiting_for: Iterable[types_pb2.WaitTarget] = (),
) -> None:
    """Refuse an awakeable the invocation did not create and will not create soon.

    Costs nothing when the invocation is suspended on that awakeable (its record's
    ``waiting_for``, as the caller read it), one read of the journal's newest message
    otherwise, and one read per entry up to the step when the step is neither the newest
    entry nor beyond it (resolved while the invocation runs on, or waits for something else).
    """
    if any(t.kind == S.WAIT_KIND_AWAKEABLE and t.step_index == index for t in waiting_for):
        return
    end = await journal.end(invocation_id)
    if index >= end.length:
        if index < end.length + AWAKEABLES_AHEAD:
            return  # created soon, we may hope: the resolution waits for it
        raise TooFarAhead(
            f"awakeable {awakeable_id} would be step {index} of invocation {invocation_id}, "
            f"which has journaled {end.length} steps so far; an awakeable can be resolved at "
            f"most {AWAKEABLES_AHEAD} steps before its handler creates it. Use the id "
            "ctx.awakeable() returned, once the handler has created it"
        )
    entry = end.entry
    if entry is None or entry.index != index:
        entry = await journal.entry_at(invocation_id, index)
    if entry is None:  # purged meanwhile
        raise NotAnAwakeable(
            f"no awakeable {awakeable_id}: invocation {invocation_id} has no step {index}"
        )
    if entry.kind != S.STEP_KIND_AWAKEABLE:
        raise NotAnAwakeable(
            f"no awakeable {awakeable_id}: step {index} of invocation {invocation_id} is "
            f"{_kind_name(entry.kind)} {entry.name!r}, not an awakeable"
        )


def _kind_name(kind: int) -> str:
    """``STEP_KIND_RESOLVE_AWAKEABLE`` as "resolve awakeable"."""
    name = S.StepKind.Name(kind)  # type: ignore[arg-type]
    return name.removeprefix("STEP_KIND_").lower().replace("_", " ")


async def check_promise_room(
    js: JetStreamContext, cfg: EngineConfig, run_id: str, name_token: str
) -> None:
    """Refuse a new promise of a workflow run that holds :data:`PROMISES_PER_RUN` resolved
    ones. One request: the stream's message counts per subject under the run's promises."""
    info = await js.stream_info(
        cfg.journal_stream, subjects_filter=cfg.promise_subject(run_id, "*")
    )
    stored = info.state.subjects or {}
    if cfg.promise_subject(run_id, name_token) in stored:
        return  # resolved already: storing it again is refused as such
    if len(stored) >= PROMISES_PER_RUN:
        raise TooManyPromises(
            f"workflow run {run_id} holds {len(stored)} resolved promises, the most one run "
            f"may hold ({PROMISES_PER_RUN}); resolve promises the run awaits, or start a new "
            "workflow"
        )
