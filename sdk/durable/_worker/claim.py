"""A worker's hold on an invocation's record for one attempt.

Fresh invocations take a fast path: the record does not exist yet (the work item carries it),
so the worker runs the handler without writing it, and writes it once at the end, already
finished. Only an attempt still running after ``running_record_after`` seconds writes a
RUNNING record on the way, so that operators see it. Fencing never depends on the record:
the journal's per-entry expected-sequence check decides who may append. The record check
here only keeps a worker that lost the invocation from overwriting another one's outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from durable._store.ids import service_of
from durable._store.records import (
    MutationRefused,
    Record,
    RecordNotFound,
    RecordStore,
    Versioned,
    is_terminal,
    now_ts,
)
from durable._worker.signals import ControlFlags
from durable.v1 import types_pb2

S = types_pb2


@dataclass(frozen=True)
class Version:
    """The code version a worker runs, and the services it pins to it."""

    name: str = ""
    pinned_services: frozenset[str] = frozenset()

    def stamp(self, r: Record) -> None:
        """Mark ``r`` as claimed by this version: the attempt's version, and, on its first
        attempt, the version that started it (which a pinned invocation stays on)."""
        r.attempt_version = self.name
        if not r.version:
            r.version = self.name
            r.pinned = service_of(r.handler) in self.pinned_services

    def foreign(self, r: Record) -> bool:
        """Whether ``r`` is pinned to another version, which alone may run it."""
        return r.pinned and bool(r.version) and r.version != self.name


class Claim:
    """The record of the invocation one attempt drives, written or not yet."""

    def __init__(
        self,
        records: RecordStore,
        record: Record,
        worker_id: str,
        *,
        written: Versioned | None = None,
    ) -> None:
        self.record = record
        self._records = records
        self._worker_id = worker_id
        self._written = written
        self._lock = asyncio.Lock()

    @classmethod
    def fresh(
        cls,
        records: RecordStore,
        initial: Record,
        attempt: int,
        worker_id: str,
        version: Version,
    ) -> Claim:
        """Claim of a fresh invocation whose record does not exist yet."""
        record = Record()
        record.CopyFrom(initial)
        record.status = S.INVOCATION_STATUS_RUNNING
        record.attempt = attempt
        record.worker_id = worker_id
        record.started_at.CopyFrom(now_ts())
        version.stamp(record)
        return cls(records, record, worker_id)

    @property
    def attempt(self) -> int:
        return self.record.attempt

    @property
    def written(self) -> bool:
        return self._written is not None

    def still_ours(self, r: Record) -> bool:
        """Whether the stored record still leaves the invocation to this attempt."""
        return self._ours(r)

    def _ours(self, r: Record) -> bool:
        """Is the stored record still ours to change?

        It is when we claimed it (our worker id and attempt), or when nobody has claimed it
        since it was written by the control plane (PENDING, or PAUSED by an operator before
        we wrote anything) with an attempt count below ours. Never when it is a new
        invocation under the same id (ours was purged, and the id used again).
        """
        if not self._same_invocation(r):
            return False
        if r.worker_id == self._worker_id and r.attempt == self.attempt:
            return True
        return not r.worker_id and r.attempt < self.attempt and not is_terminal(r.status)

    def _same_invocation(self, r: Record) -> bool:
        return r.created_at == self.record.created_at

    async def mark_running(self, flags: ControlFlags) -> None:
        """Write the RUNNING record of a fast-path attempt that takes a while."""
        async with self._lock:
            if self._written is not None:
                return
            rev = await self._records.create(self.record)
            if rev is not None:
                self._written = Versioned(self.record, rev)
                return

            def change(r: Record) -> None:
                if not self._ours(r):
                    raise MutationRefused("claimed by another worker", r)
                # An operator acted before we wrote anything: honour it at the next step.
                if r.status == S.INVOCATION_STATUS_PAUSED:
                    # Running until that step, it is pausing: the record says so, so that
                    # a Resume withdraws the pause (and a Cancel supersedes it) as for any
                    # running invocation.
                    r.pause_requested = not r.cancel_requested
                flags.pause = flags.pause or r.pause_requested
                flags.cancel = flags.cancel or r.cancel_requested
                flags.cancel_reason = flags.cancel_reason or r.cancel_reason
                r.status = S.INVOCATION_STATUS_RUNNING
                r.attempt = self.attempt
                r.worker_id = self._worker_id
                r.attempt_version = self.record.attempt_version
                if not r.version:
                    r.version = self.record.version
                    r.pinned = self.record.pinned
                if not r.HasField("started_at"):
                    r.started_at.CopyFrom(self.record.started_at)

            # When refused (or purged), the journal fence stops us at our next append.
            with contextlib.suppress(MutationRefused, RecordNotFound):
                self._written = await self._records.mutate(self.record.id, change)

    async def finish(self, change: Callable[[Record], None], *, journaled: bool = False) -> bool:
        """Apply the attempt's outcome; False when the invocation is no longer ours.

        ``journaled``: the outcome is the final entry of the journal. The journal's fence
        admits one final entry only, so whoever holds it may end the record, whoever
        claimed it last (that claimer is fenced at its next append).
        """
        async with self._lock:
            if self._written is None:
                final = Record()
                final.CopyFrom(self.record)
                change(final)
                final.updated_at.CopyFrom(now_ts())
                if await self._records.create(final) is not None:
                    return True

            def guarded(r: Record) -> None:
                if not self._same_invocation(r):
                    raise MutationRefused("purged, and its id used again", r)
                if journaled and is_terminal(r.status):
                    raise MutationRefused("already ended", r)
                if not journaled and not self._ours(r):
                    raise MutationRefused(
                        f"attempt {self.attempt} lost the invocation to "
                        f"{r.worker_id or 'the control plane'} (attempt {r.attempt})",
                        r,
                    )
                change(r)

            try:
                await self._records.mutate(self.record.id, guarded, current=self._written)
            except MutationRefused as err:
                # A journaled outcome already written counts as done.
                return journaled and self._same_invocation(err.record)
            except RecordNotFound:
                return False  # purged meanwhile: nothing is left to write to
            return True
