"""``durable.v1.DurableControl`` over gRPC: request checks, then ``ControlPlane`` calls,
then responses. Refusals become gRPC statuses with their message; nothing here writes storage
directly.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration

from durable.contract import (
    DEFAULT_PAGE_SIZE,
    MAX_KEY_CHARS,
    MAX_NAME_CHARS,
    MAX_PAGE_SIZE,
    Record,
    patience,
    service_of,
)
from durable.internal.v1 import storage_pb2
from durable.v1 import control_pb2, control_pb2_grpc, types_pb2
from durable_server.control.errors import (
    INTERNAL_ERRORS,
    internal_status,
    refusal_status,
    unavailable_status,
)
from durable_server.control.index import Summary
from durable_server.control.plane import ControlPlane
from durable_server.control.validation import (
    E,
    RequestError,
    check_enum,
    check_invocation_id,
    check_reason,
    check_text,
    decode_page_token,
    duration_seconds,
    encode_page_token,
    filter_digest,
    invalid,
    payload_to_stored,
    timestamp_ns,
)
from durable_server.control.views import invocation_view, result_of
from durable_server.control.watch import watch
from durable_server.version import engine_version

ServicerContext = grpc.aio.ServicerContext[Any, Any]
S = types_pb2
C = control_pb2

#: Statuses in which an invocation needs a worker to go on: GetWorkflow says when none hosts it.
_WAITS_FOR_A_WORKER = (S.INVOCATION_STATUS_PENDING, S.INVOCATION_STATUS_BACKING_OFF)

Req = TypeVar("Req")
Resp = TypeVar("Resp")


async def _answer_error(err: Exception, context: ServicerContext, rpc: str) -> None:
    """Abort the call with the status ``err`` stands for (raises AbortError)."""
    # grpc-stubs lacks the aio context's abort_with_status.
    if isinstance(err, RequestError):
        status = refusal_status(err.reason, err.message, err.metadata)
        await context.abort_with_status(status)  # type: ignore[attr-defined]
    if isinstance(err, patience.UNAVAILABLE):
        # A leader election or a lost connection outlasted the call's deadline: the request
        # may be retried as is (Invoke with an idempotency key stays exactly-once).
        await context.abort_with_status(unavailable_status())  # type: ignore[attr-defined]
    error_id = INTERNAL_ERRORS.report(rpc, err)
    await context.abort_with_status(internal_status(error_id))  # type: ignore[attr-defined]


def _rpc(
    fn: Callable[[Any, Req, ServicerContext], Awaitable[Resp]],
) -> Callable[[Any, Req, ServicerContext], Awaitable[Resp]]:
    """Turn RequestError into the gRPC status it carries; anything unexpected into INTERNAL
    with an error id (logged, see ``errors.InternalErrors``)."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: ServicerContext) -> Resp:
        # Storage retries through an election until shortly before the caller gives up, so
        # that the caller hears UNAVAILABLE rather than DEADLINE_EXCEEDED.
        remaining = context.time_remaining()
        if remaining is not None:
            patience.deadline.set(time.monotonic() + max(0.0, remaining - 0.5))
        self.in_flight[fn.__name__] += 1
        try:
            return await fn(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as err:
            await _answer_error(err, context, fn.__name__)
        finally:
            self.in_flight[fn.__name__] -= 1
        raise AssertionError("unreachable")

    return wrapper


def _add_counts(out: Any, counts: Mapping[int, int]) -> None:
    """Counts by status into a repeated ``StatusCount``, in status order."""
    for code, count in sorted(counts.items()):
        out.add(status=S.InvocationStatus.ValueType(code), count=count)


def _failure_outcome(reason: str) -> storage_pb2.JournalRecord:
    """A rejection as the journal stores it; the handler sees a TerminalError(reason)."""
    if not reason:
        raise invalid(
            "reason is required: the handler receives it as its error message", field="reason"
        )
    check_reason(reason)
    outcome = storage_pb2.JournalRecord()
    outcome.failure.CopyFrom(S.Failure(message=reason, error_type="TerminalError"))
    return outcome


def _summary(r: Record) -> types_pb2.InvocationSummary:
    return Summary.of(r).to_proto()


class DurableControlServicer(control_pb2_grpc.DurableControlServicer):
    """Implements every DurableControl RPC."""

    def __init__(self, plane: ControlPlane) -> None:
        #: Unary calls being answered now, by RPC name (a call held through an election
        #: shows here).
        self.in_flight: collections.Counter[str] = collections.Counter()
        self._plane = plane
        self.waiting = 0
        """Requests held open right now (Invoke with wait, AwaitResult, WatchWorkflow)."""

    def _timeout(self, has: bool, duration: Duration, what: str, context: ServicerContext) -> float:
        """The effective wait: the request's timeout, capped by the call's own deadline and
        by ``max_wait`` (the client asks again after a "not done yet")."""
        wait = duration_seconds(duration, what) if has else None
        if wait is not None and wait < 0:
            raise invalid(f"{what} must not be negative", field=what)
        limit = context.time_remaining()
        candidates = [self._plane.cfg.max_wait, wait, limit - 0.05 if limit is not None else None]
        return max(0.0, min(t for t in candidates if t is not None))

    @contextlib.contextmanager
    def _held(self, timeout: float) -> Iterator[None]:
        """Count a request that waits; refuse it when ``max_waiters`` already do. A wait of
        0 holds nothing, so polling always works."""
        if timeout <= 0:
            yield
            return
        limit = self._plane.cfg.max_waiters
        if self.waiting >= limit:
            raise RequestError(
                f"{self.waiting} requests already wait on this control plane, its limit "
                f"(--max-waiters {limit}); retry later, or poll: AwaitResult with a timeout "
                "of 0, or GetWorkflow",
                E.ERROR_REASON_TOO_MANY_WAITERS,
                limit=str(limit),
            )
        self.waiting += 1
        try:
            yield
        finally:
            self.waiting -= 1

    @_rpc
    async def Invoke(self, request: C.InvokeRequest, context: ServicerContext) -> C.InvokeResponse:
        check_enum("id_conflict_policy", request.id_conflict_policy, C.IdConflictPolicy)
        timeout = None
        if request.wait:
            timeout = self._timeout(
                request.HasField("wait_timeout"), request.wait_timeout, "wait_timeout", context
            )
        with self._held(timeout or 0.0):
            record, existed, ended = await self._plane.invocations.invoke(
                request.handler,
                request.key,
                request.input,
                request.idempotency_key,
                wait=request.wait,
                timeout=timeout,
                id_conflict=request.id_conflict_policy,
            )
        response = C.InvokeResponse(
            invocation_id=record.id, already_existed=existed, status=record.status
        )
        if ended:
            response.result.CopyFrom(result_of(record))
        else:
            since = self._plane.catalog.unserved_since(record)
            if since is not None:
                response.no_worker_since.CopyFrom(since)
        return response

    @_rpc
    async def AwaitResult(
        self, request: C.AwaitResultRequest, context: ServicerContext
    ) -> C.AwaitResultResponse:
        invocation_id = check_invocation_id(request.invocation_id)
        timeout = self._timeout(request.HasField("timeout"), request.timeout, "timeout", context)
        with self._held(timeout):
            record, done = await self._plane.invocations.await_result(invocation_id, timeout)
        response = C.AwaitResultResponse(
            invocation_id=invocation_id, done=done, status=record.status
        )
        if done:
            response.result.CopyFrom(result_of(record))
        return response

    @_rpc
    async def GetWorkflow(
        self, request: C.GetWorkflowRequest, context: ServicerContext
    ) -> C.GetWorkflowResponse:
        invocation_id = check_invocation_id(request.invocation_id)
        record = await self._plane.invocations.view_record(invocation_id)
        journal = (
            None
            if request.skip_journal
            else await self._plane.invocations.load_journal(invocation_id)
        )
        invocation, entries = invocation_view(
            record, journal, self._plane.progress.get(invocation_id)
        )
        if invocation.status in _WAITS_FOR_A_WORKER:
            since = self._plane.catalog.unserved_since(record)
            if since is not None:
                invocation.no_worker_since.CopyFrom(since)
        return C.GetWorkflowResponse(invocation=invocation, journal=entries)

    @_rpc
    async def ListWorkflows(
        self, request: C.ListWorkflowsRequest, context: ServicerContext
    ) -> C.ListWorkflowsResponse:
        if request.page_size < 0 or request.page_size > MAX_PAGE_SIZE:
            raise invalid(
                f"page_size must be between 1 and {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})",
                field="page_size",
            )
        statuses: list[int] = list(request.statuses)
        for st in statuses:
            if st == S.INVOCATION_STATUS_UNSPECIFIED or st not in S.InvocationStatus.values():
                raise invalid(
                    f"statuses holds {st}, which is not a status; use e.g. "
                    "INVOCATION_STATUS_RUNNING",
                    field="statuses",
                )
        check_text("key", request.key, MAX_KEY_CHARS)
        check_text("service", request.service, MAX_NAME_CHARS)
        created_from = (
            timestamp_ns(request.created_after, "created_after")
            if request.HasField("created_after")
            else 0
        )
        created_before = (
            timestamp_ns(request.created_before, "created_before")
            if request.HasField("created_before")
            else 0
        )
        if created_from and created_before and created_before <= created_from:
            raise invalid(
                "created_before must be later than created_after (the range is "
                "[created_after, created_before))",
                field="created_before",
            )
        digest = filter_digest(
            statuses,
            request.handler,
            request.key,
            request.service,
            created_from,
            created_before,
        )
        after = decode_page_token(request.page_token, digest) if request.page_token else None
        page, nxt, total = self._plane.index.list(
            statuses=statuses,
            handler=request.handler,
            key=request.key,
            service=request.service,
            created_from_ns=created_from,
            created_before_ns=created_before,
            page_size=request.page_size or DEFAULT_PAGE_SIZE,
            after=after,
        )
        return C.ListWorkflowsResponse(
            invocations=[s.to_proto() for s in page],
            next_page_token=encode_page_token(nxt, digest) if nxt else "",
            total_size=total,
        )

    @_rpc
    async def Stats(self, request: C.StatsRequest, context: ServicerContext) -> C.StatsResponse:
        by_status, by_handler = self._plane.index.stats()
        response = C.StatsResponse(total=sum(by_status.values()))
        for st in S.InvocationStatus.values():
            if st != S.INVOCATION_STATUS_UNSPECIFIED:
                response.by_status.add(status=st, count=by_status.get(st, 0))
        by_service: dict[str, collections.Counter[int]] = {}
        for handler, counts in by_handler.items():
            hs = response.by_handler.add(handler=handler, total=sum(counts.values()))
            _add_counts(hs.by_status, counts)
            by_service.setdefault(service_of(handler), collections.Counter()).update(counts)
        serving = self._plane.catalog.services()
        for service in sorted(set(by_service) | set(serving)):
            counts = by_service.get(service, collections.Counter())
            ss = response.by_service.add(service=service, total=sum(counts.values()))
            _add_counts(ss.by_status, counts)
            live, last_seen = serving.get(service, (0, None))
            ss.live_workers = live
            if live == 0 and last_seen is not None:
                ss.no_worker_since.CopyFrom(last_seen)
        return response

    @_rpc
    async def Pause(self, request: C.PauseRequest, context: ServicerContext) -> C.PauseResponse:
        record = await self._plane.steering.pause(
            check_invocation_id(request.invocation_id), check_reason(request.reason)
        )
        return C.PauseResponse(invocation=_summary(record))

    @_rpc
    async def Resume(self, request: C.ResumeRequest, context: ServicerContext) -> C.ResumeResponse:
        record = await self._plane.steering.resume(check_invocation_id(request.invocation_id))
        return C.ResumeResponse(invocation=_summary(record))

    @_rpc
    async def Cancel(self, request: C.CancelRequest, context: ServicerContext) -> C.CancelResponse:
        record = await self._plane.steering.cancel(
            check_invocation_id(request.invocation_id), check_reason(request.reason)
        )
        return C.CancelResponse(invocation=_summary(record))

    @_rpc
    async def ResolveAwakeable(
        self, request: C.ResolveAwakeableRequest, context: ServicerContext
    ) -> C.ResolveAwakeableResponse:
        outcome = self._value_outcome(request.value)
        invocation_id = await self._plane.completions.complete_awakeable(
            request.awakeable_id, outcome
        )
        return C.ResolveAwakeableResponse(invocation_id=invocation_id)

    @_rpc
    async def RejectAwakeable(
        self, request: C.RejectAwakeableRequest, context: ServicerContext
    ) -> C.RejectAwakeableResponse:
        outcome = _failure_outcome(request.reason)
        invocation_id = await self._plane.completions.complete_awakeable(
            request.awakeable_id, outcome
        )
        return C.RejectAwakeableResponse(invocation_id=invocation_id)

    def _value_outcome(self, value: types_pb2.Payload) -> storage_pb2.JournalRecord:
        """A resolution's value as the journal stores it (size-checked)."""
        data, content_type = payload_to_stored(value, self._plane.cfg.max_payload_bytes, "value")
        outcome = storage_pb2.JournalRecord()
        outcome.value.CopyFrom(storage_pb2.StoredPayload(data=data, content_type=content_type))
        return outcome

    async def WatchWorkflow(
        self, request: C.WatchWorkflowRequest, context: ServicerContext
    ) -> AsyncIterator[C.WatchWorkflowResponse]:
        try:
            invocation_id = check_invocation_id(request.invocation_id)
            with self._held(1.0):  # a watch holds a consumer for as long as it lasts
                async for event in watch(self._plane, invocation_id):
                    yield event
        except grpc.aio.AbortError:
            raise
        except Exception as err:
            await _answer_error(err, context, "WatchWorkflow")

    @_rpc
    async def ResolvePromise(
        self, request: C.ResolvePromiseRequest, context: ServicerContext
    ) -> C.ResolvePromiseResponse:
        outcome = self._value_outcome(request.value)
        run_id = await self._plane.completions.complete_promise(
            request.handler, request.key, request.promise, outcome
        )
        return C.ResolvePromiseResponse(invocation_id=run_id)

    @_rpc
    async def RejectPromise(
        self, request: C.RejectPromiseRequest, context: ServicerContext
    ) -> C.RejectPromiseResponse:
        outcome = _failure_outcome(request.reason)
        run_id = await self._plane.completions.complete_promise(
            request.handler, request.key, request.promise, outcome
        )
        return C.RejectPromiseResponse(invocation_id=run_id)

    @_rpc
    async def GetObjectState(
        self, request: C.GetObjectStateRequest, context: ServicerContext
    ) -> C.GetObjectStateResponse:
        entries = await self._plane.keyed.get_state(request.object, request.key)
        return C.GetObjectStateResponse(entries=entries)

    @_rpc
    async def SetObjectState(
        self, request: C.SetObjectStateRequest, context: ServicerContext
    ) -> C.SetObjectStateResponse:
        return C.SetObjectStateResponse(entries=await self._plane.keyed.set_state(request))

    @_rpc
    async def Kill(self, request: C.KillRequest, context: ServicerContext) -> C.KillResponse:
        record = await self._plane.keyed.kill(
            check_invocation_id(request.invocation_id), check_reason(request.reason)
        )
        return C.KillResponse(invocation=_summary(record))

    @_rpc
    async def Purge(self, request: C.PurgeRequest, context: ServicerContext) -> C.PurgeResponse:
        invocation_id = check_invocation_id(request.invocation_id)
        await self._plane.keyed.purge(invocation_id)
        return C.PurgeResponse(invocation_id=invocation_id)

    @_rpc
    async def GetServerInfo(
        self, request: C.GetServerInfoRequest, context: ServicerContext
    ) -> C.GetServerInfoResponse:
        cfg = self._plane.cfg
        return C.GetServerInfoResponse(
            version=engine_version(),
            # What the server said of itself when we connected (its INFO).
            nats_server_version=str(getattr(self._plane.nc, "_server_info", {}).get("version", "")),
            started_at=self._plane.started_at,
            prefix=cfg.prefix,
            replicas=cfg.replicas,
            max_payload_bytes=cfg.max_payload_bytes,
            ack_wait_seconds=cfg.ack_wait,
        )

    @_rpc
    async def ListHandlers(
        self, request: C.ListHandlersRequest, context: ServicerContext
    ) -> C.ListHandlersResponse:
        handlers = self._plane.catalog.handlers()
        return C.ListHandlersResponse(handlers=[handlers[n] for n in sorted(handlers)])
