"""The invocation record: one KV entry per invocation, changed only by compare-and-swap.

Every writer (control plane and workers) goes through :meth:`RecordStore.mutate`, which reads
the entry, applies a pure change function and writes it back conditioned on the revision it
read, retrying on conflict. So a Pause never undoes a completion, and a completion never
undoes a Cancel: each sees the other's write and decides again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.client import Client as NATS
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

# One definition of these for the client and the engine; re-exported for the engine.
from durable._client import is_terminal as is_terminal
from durable._client import status_name as status_name
from durable._store.patience import until_answered
from durable.internal.v1 import storage_pb2
from durable.v1 import types_pb2

Record = storage_pb2.InvocationRecord
Status = types_pb2.InvocationStatus


class RecordNotFound(Exception):
    """No record with that id."""


class RecordPurged(RecordNotFound):
    """The record was purged: its key holds the purge marker, which stays as a tombstone."""


class MutationRefused(Exception):
    """The change function decided the record's current state does not allow the change."""

    def __init__(self, message: str, record: Record) -> None:
        super().__init__(message)
        self.record = record


@dataclass(frozen=True)
class Versioned:
    """A record with the KV revision it was read at."""

    record: Record
    revision: int


def now_ts() -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(time.time_ns())
    return ts


class RecordStore:
    """Typed access to the invocations bucket."""

    def __init__(self, kv: KeyValue, nc: NATS, bucket: str, *, direct_reads: bool) -> None:
        self._kv = kv
        self._nc = nc
        self._stream = f"KV_{bucket}"
        self._subject_prefix = f"$KV.{bucket}."
        self._direct_reads = direct_reads
        # Reads skip the KV wrapper: the direct-get request is on every invocation's path.
        self._get_prefix = f"$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}."

    async def create(self, record: Record, *, reuse_purged_id: bool = False) -> int | None:
        """Store a new record; None when one with that id exists already, or was purged.

        The purge marker a Purge leaves is a tombstone: every delayed or background writer
        (the PENDING-record timer, a worker's fast path, a callee started again by a
        replay) creates with this, so a purged invocation cannot come back. Only a new
        invocation asked for by a client, under an id it may use again (an idempotency
        key, a workflow id), passes ``reuse_purged_id`` and replaces the marker (a CAS on
        the marker's revision).
        """
        data = record.SerializeToString()
        try:
            if reuse_purged_id:
                rev: int = await self._kv.create(record.id, data)
            else:  # expects no message at all on the key, not even a purge marker
                rev = await self._kv.update(record.id, data, last=0)
            return rev
        except KeyWrongLastSequenceError:
            return None

    async def get(self, invocation_id: str) -> Versioned:
        """The newest record; tried again (short tries) while the bucket's stream elects a
        leader, until the caller's deadline (``patience``): a read sent to a dead leader is
        never answered, and one long try would make every timer and wake-up wait for it."""
        if not self._direct_reads:
            return await until_answered(
                lambda timeout: self._get_from_leader(invocation_id, timeout),
                f"reading record {invocation_id}",
            )
        return await until_answered(
            lambda timeout: self._get_direct(invocation_id, timeout),
            f"reading record {invocation_id}",
        )

    async def _get_direct(self, invocation_id: str, timeout: float) -> Versioned:
        msg = await self._nc.request(self._get_prefix + invocation_id, b"", timeout=timeout)
        headers = msg.headers or {}
        status = headers.get("Status")
        if headers.get("KV-Operation") in ("DEL", "PURGE"):
            raise RecordPurged(invocation_id)
        if status == "404" or not msg.data:
            raise RecordNotFound(invocation_id)
        if status is not None:
            raise RuntimeError(
                f"reading record {invocation_id}: {status} {headers.get('Description', '')}"
            )
        record = Record()
        record.ParseFromString(msg.data)
        return Versioned(record, int(headers["Nats-Sequence"]))

    async def _get_from_leader(self, invocation_id: str, timeout: float) -> Versioned:
        try:
            msg = await self._nc.jetstream(timeout=timeout).get_msg(
                self._stream, subject=self._subject_prefix + invocation_id, direct=False
            )
        except NotFoundError:
            raise RecordNotFound(invocation_id) from None
        if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
            raise RecordPurged(invocation_id)
        if not msg.data:
            raise RecordNotFound(invocation_id)
        record = Record()
        record.ParseFromString(msg.data)
        return Versioned(record, int(msg.seq or 0))

    async def write(self, current: Versioned, record: Record) -> Versioned | None:
        """CAS-write ``record`` over ``current``; None when someone else wrote in between."""
        record.updated_at.CopyFrom(now_ts())
        try:
            rev = await self._kv.update(
                record.id, record.SerializeToString(), last=current.revision
            )
        except KeyWrongLastSequenceError:
            return None
        return Versioned(record, rev)

    async def purge(self, invocation_id: str) -> None:
        """Delete the record and its history (Purge)."""
        await self._kv.purge(invocation_id)

    async def mutate(
        self,
        invocation_id: str,
        change: Callable[[Record], None],
        *,
        current: Versioned | None = None,
        attempts: int = 50,
    ) -> Versioned:
        """Apply ``change`` to a copy of the latest record and CAS it in, retrying on conflict.

        ``change`` edits the copy in place, or raises :class:`MutationRefused` to leave the
        record as it is. Starting from ``current`` saves a read when the caller has one.
        """
        for _ in range(attempts):
            if current is None:
                current = await self.get(invocation_id)
            updated = Record()
            updated.CopyFrom(current.record)
            change(updated)
            written = await self.write(current, updated)
            if written is not None:
                return written
            current = None
        raise RuntimeError(f"record {invocation_id}: too much write contention")
