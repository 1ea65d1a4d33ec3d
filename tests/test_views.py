"""What GetWorkflow shows of an invocation whose outcome is journaled but whose record is not
written yet (the fast path writes the record once, after the final journal entry)."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from durable._store.journal import LoadedJournal
from durable.internal.v1 import storage_pb2
from durable.v1 import types_pb2 as S
from durable_server.control.views import invocation_view


def _ts(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


def test_an_outcome_journaled_before_its_record_shows_when_it_started() -> None:
    # The record as the control plane accepted it: never started as far as it knows.
    pending = storage_pb2.InvocationRecord(
        id="inv-1", handler="svc/h", status=S.INVOCATION_STATUS_PENDING, created_at=_ts(100)
    )
    final = storage_pb2.JournalRecord(
        index=0,
        attempt=1,
        recorded_at=_ts(105),
        final=storage_pb2.FinalOutcome(
            status=S.INVOCATION_STATUS_COMPLETED,
            output=storage_pb2.StoredPayload(content_type="application/json", data=b"1"),
            started_at=_ts(101),
        ),
    )
    inv, entries = invocation_view(pending, LoadedJournal([final], 1), None)
    assert inv.status == S.INVOCATION_STATUS_COMPLETED
    assert inv.started_at == _ts(101)
    assert inv.ended_at == _ts(105)
    assert entries == []
