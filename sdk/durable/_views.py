"""What the client's read methods return: Python types, not generated messages.

Each is a frozen dataclass with typed fields (enums, ``datetime`` in UTC, decoded values,
``None`` for what is unset) and, as ``raw``, the message it was read from, for a field this
layer does not lift or for protobuf JSON (the ``durable`` CLI's ``--json``). The enums are
``IntEnum``s whose values are the wire's, so they compare equal to the generated constants
(``InvocationStatus.RUNNING == types_pb2.INVOCATION_STATUS_RUNNING``). (A little over our
~400 lines: one dataclass per read result, kept together so the read API is in one place.)
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from durable._codec import from_payload
from durable.v1 import control_pb2, types_pb2


class InvocationStatus(enum.IntEnum):
    """Where an invocation is (``durable.v1.InvocationStatus``)."""

    UNSPECIFIED = 0
    PENDING = 1
    RUNNING = 2
    SUSPENDED = 3
    BACKING_OFF = 4
    PAUSED = 5
    COMPLETED = 6
    FAILED = 7
    CANCELLED = 8
    SCHEDULED = 9

    @property
    def ended(self) -> bool:
        """COMPLETED, FAILED or CANCELLED: nothing will change it any more."""
        return self in (
            InvocationStatus.COMPLETED,
            InvocationStatus.FAILED,
            InvocationStatus.CANCELLED,
        )


_ENDED = frozenset(
    {InvocationStatus.COMPLETED, InvocationStatus.FAILED, InvocationStatus.CANCELLED}
)


class StepKind(enum.IntEnum):
    """What a journal step did (``durable.v1.StepKind``)."""

    UNSPECIFIED = 0
    RUN = 1
    NOW = 2
    SLEEP = 3
    CALL = 4
    SEND = 5
    AWAKEABLE = 6
    STATE = 7
    PROMISE = 8
    AWAIT = 9
    SELECT = 10
    RESOLVE_AWAKEABLE = 11


class WaitKind(enum.IntEnum):
    """What a suspended invocation waits for (``durable.v1.WaitKind``)."""

    UNSPECIFIED = 0
    TIMER = 1
    AWAKEABLE = 2
    CALL = 3
    PROMISE = 4


class HandlerKind(enum.IntEnum):
    """A handler's kind (``durable.v1.HandlerKind``)."""

    UNSPECIFIED = 0
    SERVICE = 1
    OBJECT_EXCLUSIVE = 2
    OBJECT_SHARED = 3
    WORKFLOW_RUN = 4
    WORKFLOW_SHARED = 5


class WatchEventKind(enum.IntEnum):
    """What a ``watch`` event reports (``durable.v1.WatchEventKind``)."""

    UNSPECIFIED = 0
    SNAPSHOT = 1
    STEP = 2
    STATUS = 3
    ENDED = 4


def utc(ts: Timestamp) -> dt.datetime | None:
    """A wire timestamp as a UTC datetime; None when unset."""
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts.ToDatetime(tzinfo=dt.UTC)


@dataclass(frozen=True)
class Failure:
    """How an invocation or a step failed."""

    message: str
    #: The Python exception type that raised it, e.g. "TerminalError".
    error_type: str
    #: The application code a TerminalError carried (0 when none).
    code: int = 0


def _counts(counts: Any) -> dict[InvocationStatus, int]:
    return {InvocationStatus(c.status): c.count for c in counts}


def _failure(f: types_pb2.Failure) -> Failure:
    return Failure(message=f.message, error_type=f.error_type, code=f.code)


def _outcome(result: types_pb2.Result) -> tuple[Any, Failure | None]:
    kind = result.WhichOneof("outcome")
    if kind == "failure":
        return None, _failure(result.failure)
    if kind == "value":
        return from_payload(result.value), None
    return None, None


@dataclass(frozen=True)
class StepRef:
    """One step of a journal, by position."""

    index: int
    kind: StepKind
    name: str


def _step_ref(s: types_pb2.StepRef) -> StepRef:
    return StepRef(index=s.index, kind=StepKind(s.kind), name=s.name)


@dataclass(frozen=True)
class WaitTarget:
    """One thing a suspended invocation waits for; the fields its kind uses are set."""

    kind: WaitKind
    step_index: int
    due_at: dt.datetime | None
    awakeable_id: str
    invocation_id: str
    promise: str


@dataclass(frozen=True)
class JournalEntry:
    """One journaled step: ``output`` (decoded as plain values) or ``failure``."""

    index: int
    kind: StepKind
    name: str
    summary: str
    output: Any
    failure: Failure | None
    attempt: int
    recorded_at: dt.datetime | None
    stored_at: dt.datetime | None
    started_at: dt.datetime | None
    awaited: StepRef | None
    #: Code version of the worker that journaled it.
    version: str
    raw: types_pb2.JournalEntry = field(repr=False, compare=False)

    @classmethod
    def of(cls, e: types_pb2.JournalEntry) -> JournalEntry:
        output, failure = _outcome(e.result)
        return cls(
            index=e.index,
            kind=StepKind(e.kind),
            name=e.name,
            summary=e.summary,
            output=output,
            failure=failure,
            attempt=e.attempt,
            recorded_at=utc(e.recorded_at),
            stored_at=utc(e.stored_at),
            started_at=utc(e.started_at),
            awaited=_step_ref(e.awaited) if e.HasField("awaited") else None,
            version=e.version,
            raw=e,
        )


@dataclass(frozen=True)
class Invocation:
    """One invocation as ``Client.get`` and ``Client.watch`` see it, with its journal."""

    id: str
    handler: str
    key: str
    status: InvocationStatus
    input: Any
    #: The handler's result, decoded as plain values (``Client.result`` decodes by type).
    output: Any
    failure: Failure | None
    idempotency_key: str
    attempt: int
    last_failure: Failure | None
    status_reason: str
    current_step: StepRef | None
    journal_length: int
    pause_requested: bool
    cancel_requested: bool
    waiting_for: list[WaitTarget]
    caller_id: str
    created_at: dt.datetime | None
    updated_at: dt.datetime | None
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    next_attempt_at: dt.datetime | None
    scheduled_at: dt.datetime | None
    #: Since when no live worker serves its handler, while it waits for one.
    no_worker_since: dt.datetime | None
    #: Code version of the worker that started it (for a pinned one, the version it stays on).
    version: str
    #: Whether it stays on workers of ``version``.
    pinned: bool
    #: Code version of the worker that claimed the current (or last) attempt.
    attempt_version: str
    journal: list[JournalEntry]
    raw: types_pb2.Invocation = field(repr=False, compare=False)

    @classmethod
    def of(cls, inv: types_pb2.Invocation, journal: Any = ()) -> Invocation:
        output, failure = _outcome(inv.result)
        return cls(
            id=inv.invocation_id,
            handler=inv.handler,
            key=inv.key,
            status=InvocationStatus(inv.status),
            input=from_payload(inv.input),
            output=output,
            failure=failure,
            idempotency_key=inv.idempotency_key,
            attempt=inv.attempt,
            last_failure=_failure(inv.last_failure) if inv.HasField("last_failure") else None,
            status_reason=inv.status_reason,
            current_step=_step_ref(inv.current_step) if inv.HasField("current_step") else None,
            journal_length=inv.journal_length,
            pause_requested=inv.pause_requested,
            cancel_requested=inv.cancel_requested,
            waiting_for=[
                WaitTarget(
                    kind=WaitKind(w.kind),
                    step_index=w.step_index,
                    due_at=utc(w.due_at),
                    awakeable_id=w.awakeable_id,
                    invocation_id=w.invocation_id,
                    promise=w.promise,
                )
                for w in inv.waiting_for
            ],
            caller_id=inv.caller_id,
            created_at=utc(inv.created_at),
            updated_at=utc(inv.updated_at),
            started_at=utc(inv.started_at),
            ended_at=utc(inv.ended_at),
            next_attempt_at=utc(inv.next_attempt_at),
            scheduled_at=utc(inv.scheduled_at),
            no_worker_since=utc(inv.no_worker_since),
            version=inv.version,
            pinned=inv.pinned,
            attempt_version=inv.attempt_version,
            journal=[JournalEntry.of(e) for e in journal],
            raw=inv,
        )


@dataclass(frozen=True)
class InvocationSummary:
    """One invocation as lists show it (``Client.list``, and the steering calls' answers)."""

    id: str
    handler: str
    key: str
    status: InvocationStatus
    attempt: int
    created_at: dt.datetime | None
    updated_at: dt.datetime | None
    ended_at: dt.datetime | None
    raw: types_pb2.InvocationSummary = field(repr=False, compare=False)

    @classmethod
    def of(cls, s: types_pb2.InvocationSummary) -> InvocationSummary:
        return cls(
            id=s.invocation_id,
            handler=s.handler,
            key=s.key,
            status=InvocationStatus(s.status),
            attempt=s.attempt,
            created_at=utc(s.created_at),
            updated_at=utc(s.updated_at),
            ended_at=utc(s.ended_at),
            raw=s,
        )


@dataclass(frozen=True)
class InvocationPage:
    """One page of ``Client.list``; pass ``next_page_token`` on for the next ("" at the end)."""

    invocations: list[InvocationSummary]
    next_page_token: str
    #: How many invocations match the filters, over all pages.
    total_size: int
    raw: control_pb2.ListWorkflowsResponse = field(repr=False, compare=False)


@dataclass(frozen=True)
class HandlerStats:
    """Counts of one handler's invocations."""

    total: int
    by_status: dict[InvocationStatus, int]


@dataclass(frozen=True)
class ServiceStats:
    """Counts of one service's invocations, and the workers serving it now."""

    total: int
    by_status: dict[InvocationStatus, int]
    #: Live workers hosting any of its handlers (0: its queue waits for one).
    live_workers: int
    #: Since when no live worker hosts it, while none does.
    no_worker_since: dt.datetime | None


@dataclass(frozen=True)
class Stats:
    """Counts of invocations, by status, handler and service (``Client.stats``)."""

    total: int
    by_status: dict[InvocationStatus, int]
    by_handler: dict[str, HandlerStats]
    by_service: dict[str, ServiceStats]
    raw: control_pb2.StatsResponse = field(repr=False, compare=False)

    @classmethod
    def of(cls, r: control_pb2.StatsResponse) -> Stats:
        return cls(
            total=r.total,
            by_status=_counts(r.by_status),
            by_handler={
                h.handler: HandlerStats(
                    total=h.total,
                    by_status=_counts(h.by_status),
                )
                for h in r.by_handler
            },
            by_service={
                s.service: ServiceStats(
                    total=s.total,
                    by_status=_counts(s.by_status),
                    live_workers=s.live_workers,
                    no_worker_since=utc(s.no_worker_since),
                )
                for s in r.by_service
            },
            raw=r,
        )


@dataclass(frozen=True)
class HandlerInfo:
    """A handler running workers registered (``Client.handlers``)."""

    name: str
    service: str
    handler: str
    kind: HandlerKind
    description: str
    input_type: str
    output_type: str
    #: The JSON schema the control plane checks inputs against ("" when none).
    input_schema: str
    #: Full protobuf message name when the handler takes one.
    input_message: str
    #: Workers that registered it and are alive now.
    live_workers: int
    last_seen: dt.datetime | None
    #: Whether its service keeps each invocation on the version that started it.
    pinned: bool
    #: Code versions of the registered workers hosting it, newest first.
    versions: list[str]
    raw: types_pb2.HandlerInfo = field(repr=False, compare=False)

    @classmethod
    def of(cls, h: types_pb2.HandlerInfo) -> HandlerInfo:
        return cls(
            name=h.name,
            service=h.service,
            handler=h.handler,
            kind=HandlerKind(h.kind),
            description=h.description,
            input_type=h.input_type,
            output_type=h.output_type,
            input_schema=h.input_schema,
            input_message=h.input_message,
            live_workers=h.live_workers,
            last_seen=utc(h.last_seen),
            pinned=h.pinned,
            versions=list(h.versions),
            raw=h,
        )


@dataclass(frozen=True)
class ServerInfo:
    """Which engine answers (``Client.server_info``)."""

    version: str
    nats_server_version: str
    started_at: dt.datetime | None
    prefix: str
    replicas: int
    max_payload_bytes: int
    ack_wait_seconds: float
    raw: control_pb2.GetServerInfoResponse = field(repr=False, compare=False)

    @classmethod
    def of(cls, r: control_pb2.GetServerInfoResponse) -> ServerInfo:
        return cls(
            version=r.version,
            nats_server_version=r.nats_server_version,
            started_at=utc(r.started_at),
            prefix=r.prefix,
            replicas=r.replicas,
            max_payload_bytes=r.max_payload_bytes,
            ack_wait_seconds=r.ack_wait_seconds,
            raw=r,
        )


@dataclass(frozen=True)
class WatchEvent:
    """One event of ``Client.watch``: the invocation as it is now, and new steps."""

    kind: WatchEventKind
    invocation: Invocation
    steps: list[JournalEntry]
    raw: control_pb2.WatchWorkflowResponse = field(repr=False, compare=False)
