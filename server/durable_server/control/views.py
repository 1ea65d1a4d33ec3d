"""Stored records and journal entries as the API's messages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from durable.contract import LoadedJournal, is_terminal
from durable.internal.v1 import storage_pb2
from durable.v1 import types_pb2
from durable_server.control.validation import stored_to_payload

S = types_pb2


@dataclass
class Progress:
    """The step a worker announced it started (not persisted)."""

    index: int
    kind: int
    name: str
    at: float


_SUMMARY_LIMIT = 120


def result_of(r: storage_pb2.InvocationRecord) -> types_pb2.Result:
    if r.HasField("failure"):
        return types_pb2.Result(failure=r.failure)
    return types_pb2.Result(value=stored_to_payload(r.output.data, r.output.content_type))


def _summary(entry: storage_pb2.JournalRecord) -> str:
    if entry.HasField("failure"):
        text = f"{entry.failure.error_type}: {entry.failure.message}"
    elif not entry.HasField("value"):
        return ""  # e.g. a promise step: its value is in the AWAIT that follows
    elif entry.value.content_type == "application/json":
        text = entry.value.data.decode("utf-8", "replace")
    else:
        text = f"<{len(entry.value.data)} bytes {entry.value.content_type}>"
    return text if len(text) <= _SUMMARY_LIMIT else text[: _SUMMARY_LIMIT - 1] + "…"


def journal_entry(
    entry: storage_pb2.JournalRecord,
    earlier: Mapping[int, storage_pb2.JournalRecord] | None = None,
) -> types_pb2.JournalEntry:
    """The API's view of one journal entry; ``earlier`` (the entries before it, by index)
    lets an AWAIT name the step it waited for and since when."""
    out = types_pb2.JournalEntry(
        index=entry.index,
        kind=entry.kind,
        name=entry.name,
        summary=_summary(entry),
        recorded_at=entry.recorded_at,
        attempt=entry.attempt,
        version=entry.version,
    )
    if entry.HasField("started_at"):
        out.started_at.CopyFrom(entry.started_at)
    awaited = _awaited(entry, earlier or {})
    if awaited is not None:
        out.awaited.CopyFrom(
            types_pb2.StepRef(index=awaited.index, kind=awaited.kind, name=awaited.name)
        )
        # The wait began when the handler first waited: in this attempt (started_at), or
        # in an earlier one that suspended right after journaling the awaited step.
        made = awaited.recorded_at
        if not out.HasField("started_at") or made.ToNanoseconds() < out.started_at.ToNanoseconds():
            out.started_at.CopyFrom(made)
    if entry.HasField("failure"):
        out.result.failure.CopyFrom(entry.failure)
    elif entry.HasField("value"):
        out.result.value.CopyFrom(stored_to_payload(entry.value.data, entry.value.content_type))
    return out


def _awaited(
    entry: storage_pb2.JournalRecord, earlier: Mapping[int, storage_pb2.JournalRecord]
) -> storage_pb2.JournalRecord | None:
    """The step an AWAIT entry waited for: its name is ``#<index>`` of that step."""
    if entry.kind != S.STEP_KIND_AWAIT or not entry.name.startswith("#"):
        return None
    try:
        return earlier.get(int(entry.name[1:]))
    except ValueError:
        return None


def with_final(
    r: storage_pb2.InvocationRecord, last: storage_pb2.JournalRecord
) -> storage_pb2.InvocationRecord:
    """The record as it is about to be written: the journal already holds the outcome in
    ``last``, its final entry."""
    if is_terminal(r.status):
        return r
    ended = storage_pb2.InvocationRecord()
    ended.CopyFrom(r)
    ended.status = last.final.status
    ended.ended_at.CopyFrom(last.recorded_at)
    if not ended.HasField("started_at") and last.final.HasField("started_at"):
        ended.started_at.CopyFrom(last.final.started_at)
    if last.attempt >= ended.attempt and last.version:
        ended.attempt_version = last.version
        ended.version = ended.version or last.version
    ended.attempt = max(ended.attempt, last.attempt)
    ended.status_reason = ""
    ended.pause_requested = False
    ended.cancel_requested = False
    if last.final.HasField("output"):
        ended.output.CopyFrom(last.final.output)
    if last.final.HasField("failure"):
        ended.failure.CopyFrom(last.final.failure)
    return ended


def invocation_view(
    r: storage_pb2.InvocationRecord,
    journal: LoadedJournal | None,
    progress: Progress | None,
) -> tuple[types_pb2.Invocation, list[types_pb2.JournalEntry]]:
    """The Invocation message and its journal entries."""
    if journal and journal.entries and journal.entries[-1].HasField("final"):
        r = with_final(r, journal.entries[-1])
    inv = types_pb2.Invocation(
        invocation_id=r.id,
        handler=r.handler,
        key=r.key,
        status=r.status,
        input=stored_to_payload(r.input.data, r.input.content_type),
        idempotency_key=r.idempotency_key,
        attempt=r.attempt,
        status_reason=r.status_reason,
        pause_requested=r.pause_requested,
        cancel_requested=r.cancel_requested,
        version=r.version,
        pinned=r.pinned,
        attempt_version=r.attempt_version,
    )
    for name in (
        "created_at",
        "updated_at",
        "started_at",
        "ended_at",
        "next_attempt_at",
        "scheduled_at",
    ):
        if r.HasField(name):
            getattr(inv, name).CopyFrom(getattr(r, name))
    inv.caller_id = r.caller_id
    if r.status in (S.INVOCATION_STATUS_SUSPENDED, S.INVOCATION_STATUS_PAUSED):
        inv.waiting_for.extend(r.waiting_for)
    if r.HasField("last_failure") and r.status == S.INVOCATION_STATUS_BACKING_OFF:
        inv.last_failure.CopyFrom(r.last_failure)
    if r.HasField("failure") or r.HasField("output"):
        inv.result.CopyFrom(result_of(r))
    # A final-only entry (kind unspecified) carries the outcome, not a step.
    entries: list[types_pb2.JournalEntry] = []
    steps = 0
    if journal:
        stored = journal.stored_ns + [0] * (len(journal.entries) - len(journal.stored_ns))
        by_index = {e.index: e for e in journal.entries}
        for e, stored_ns in zip(journal.entries, stored, strict=True):
            if e.kind == S.STEP_KIND_UNSPECIFIED:
                continue
            steps += 1
            view = journal_entry(e, by_index)
            if stored_ns:
                view.stored_at.FromNanoseconds(stored_ns)
            entries.append(view)
    length = steps if journal else r.journal_length
    inv.journal_length = length
    inv.current_step.index = length
    if progress is not None and progress.index == length:
        inv.current_step.kind = progress.kind  # type: ignore[assignment]
        inv.current_step.name = progress.name
    return inv, entries
