"""Typed async client for the ``durable.v1.DurableControl`` gRPC service.

A thin layer over the generated ``grpc.aio`` stub: Python arguments in, Python values or the
generated response messages out, and gRPC failures turned into :mod:`durable.errors`
exceptions that keep the status code and details. Waiting for a result uses ``AwaitResult``,
which the server completes when the outcome is pushed to it; the client never polls.

The ``timeout`` parameters here are sent to the server as the wait bound of ``AwaitResult``
and ``Invoke``; wrapping the calls in ``asyncio.timeout`` instead (what ASYNC109 suggests)
would abandon the call without telling the server.

Longer than our ~400-line norm because it is the client's whole public surface, one method
per RPC with its docstring; the handle (``_handle``), codec (``_codec``) and
error details and retries (``_retrying``) already live apart.
"""

from __future__ import annotations

import asyncio
import builtins
import datetime
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, Final, Self, TypeVar, overload

import grpc
import grpc.aio
from google.protobuf.message import Message

from durable import _tracing as tracing
from durable._codec import from_payload, to_payload
from durable._handle import (
    InvocationHandle,
    M,
    Timeout,
    _seconds,
    is_terminal,
    parse_status,
    status_name,
)
from durable._handlers import declared_result_type, handler_name
from durable._retrying import next_pause, rpc_error
from durable._views import (
    HandlerInfo,
    Invocation,
    InvocationPage,
    InvocationSummary,
    JournalEntry,
    ServerInfo,
    Stats,
    WatchEvent,
    WatchEventKind,
    utc,
)
from durable.errors import ResultTimeoutError, RPCError, UnavailableError
from durable.v1 import control_pb2, control_pb2_grpc, types_pb2

__all__ = [
    "DEFAULT_TARGET",
    "Client",
    "InvocationHandle",
    "is_terminal",
    "parse_status",
    "status_name",
]

#: Address the client and the ``durable`` CLI use when none is given.
DEFAULT_TARGET: Final = "localhost:50051"

_Req = TypeVar("_Req", bound=Message)
I = TypeVar("I")  # noqa: E741 (a handler's input type)
O = TypeVar("O")  # noqa: E741 (a handler's output type)
T = TypeVar("T")
_Resp = TypeVar("_Resp", bound=Message)

# Extra time given to a waiting RPC beyond its server-side timeout, so the server answers
# "not done yet" before the client's own deadline cuts the call.
_DEADLINE_GRACE: Final = 5.0
_DEFAULT_OPTIONS: Final[tuple[tuple[str, Any], ...]] = (
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
)


log = logging.getLogger("durable.client")


def _outgoing(details: Any, token: str | None) -> Any:
    """The call's metadata plus the bearer token and the current trace context (a trace
    started by the caller goes on in the engine)."""
    metadata = tracing.metadata_with_context(list(details.metadata or ()))
    if token:
        metadata.append(("authorization", f"Bearer {token}"))
    return details._replace(metadata=metadata)


class _Outgoing(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Adds the bearer token and trace context to every unary call."""

    def __init__(self, token: str | None) -> None:
        self._token = token

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_outgoing(details, self._token), request)


class _OutgoingStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    """Adds them to every server-streaming call (WatchWorkflow)."""

    def __init__(self, token: str | None) -> None:
        self._token = token

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_outgoing(details, self._token), request)


class Client:
    """Async client of the durable engine's control plane (``durable.v1.DurableControl``).

    Create it with ``Client(target)`` and use it as an async context manager, or with
    ``await Client.connect(target)`` to fail fast when the server is unreachable. The
    channel opens lazily on the first call, inside the running event loop. Every failed call
    raises a :class:`~durable.errors.RPCError` subclass carrying the gRPC status.

    ``rpc_timeout`` bounds every call that does not wait for an invocation; ``options`` are
    extra gRPC channel options; ``credentials`` switch to a TLS channel
    (``grpc.ssl_channel_credentials(ca, key, cert)``, with a client key and certificate for
    mutual TLS); ``token`` is sent as ``authorization: Bearer <token>`` with every call.

    ``unavailable_retry``: for how many seconds a call that is safe to repeat (reads,
    Pause, Resume, Cancel, Kill, and Invoke with an idempotency key) is sent again after an
    UNAVAILABLE answer (a JetStream election, a control plane restarting), within its own
    timeout; ``None`` hands every UNAVAILABLE to the caller at once.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        rpc_timeout: float | None = 30.0,
        unavailable_retry: float | None = 30.0,
        token: str | None = None,
    ) -> None:
        self._target = target
        self._token = token
        self._unavailable_retry = unavailable_retry
        self._credentials = credentials
        self._options = [*_DEFAULT_OPTIONS, *options]
        self._rpc_timeout = rpc_timeout
        self._channel: grpc.aio.Channel | None = None
        self._stub_: control_pb2_grpc.DurableControlAsyncStub | None = None

    @classmethod
    async def connect(
        cls,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = 10.0,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
        rpc_timeout: float | None = 30.0,
        unavailable_retry: float | None = 30.0,
        token: str | None = None,
    ) -> Self:
        """Create a client and wait until its channel is connected.

        Raises an :class:`~durable.errors.RPCError` with code ``UNAVAILABLE`` when the
        server cannot be reached within ``timeout`` seconds.
        """
        client = cls(
            target,
            credentials=credentials,
            options=options,
            rpc_timeout=rpc_timeout,
            unavailable_retry=unavailable_retry,
            token=token,
        )
        client._stub()
        assert client._channel is not None
        try:
            await asyncio.wait_for(client._channel.channel_ready(), timeout)
        except TimeoutError:
            await client.close()
            raise UnavailableError(f"could not connect to {target} within {timeout}s") from None
        return client

    @property
    def target(self) -> str:
        """The server address this client talks to."""
        return self._target

    def __repr__(self) -> str:
        return f"Client(target={self._target!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled. Safe to call twice."""
        channel, self._channel, self._stub_ = self._channel, None, None
        if channel is not None:
            await channel.close(None)

    def _stub(self) -> control_pb2_grpc.DurableControlAsyncStub:
        if self._stub_ is None:
            # Interceptors cost a little on every call: only when there is something to add
            # (a token, or spans to continue: tracing configured by the time of the first call).
            self._interceptors: list[Any] = (
                [_Outgoing(self._token), _OutgoingStream(self._token)]
                if self._token or tracing.enabled()
                else []
            )
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(
                    self._target, options=self._options, interceptors=self._interceptors
                )
            else:
                channel = grpc.aio.secure_channel(
                    self._target,
                    self._credentials,
                    options=self._options,
                    interceptors=self._interceptors,
                )
            self._channel = channel
            self._stub_ = control_pb2_grpc.DurableControlStub(channel)
        return self._stub_

    async def _call(
        self,
        rpc: grpc.aio.UnaryUnaryMultiCallable[_Req, _Resp],
        request: _Req,
        timeout: float | None,
        *,
        repeatable: bool = False,
    ) -> _Resp:
        """One call; sent again on UNAVAILABLE while ``repeatable`` (see ``_retrying``)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        budget = self._unavailable_retry if repeatable else None
        pause = 0.0
        while True:
            left = None if timeout is None else timeout - (loop.time() - start)
            try:
                return await rpc(request, timeout=left)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE and budget is not None:
                    pause = next_pause(exc, pause)
                    spent = loop.time() - start + pause
                    if spent < budget and (timeout is None or spent < timeout):
                        log.debug(
                            "%s: UNAVAILABLE (%s); sending again in %.2fs",
                            type(request).__name__,
                            exc.details(),
                            pause,
                        )
                        await asyncio.sleep(pause)
                        continue
                raise rpc_error(exc) from exc

    # ---------------------------------------------------------------------------- invoking

    async def invoke(
        self,
        handler: str | Callable[..., Awaitable[Any]],
        input: Any = None,
        *,
        key: str = "",
        idempotency_key: str = "",
        wait: bool = False,
        wait_timeout: Timeout = None,
        fail_if_exists: bool = False,
    ) -> InvocationHandle:
        """Start an invocation of ``handler`` and return its handle.

        ``handler`` is ``"<service>/<handler>"`` or the handler function itself (as
        registered with ``@service.handler()``). ``input`` is any JSON-able value, a
        dataclass, ``bytes`` or a protobuf message. ``key`` addresses
        an object key or workflow id. With ``idempotency_key`` the same handler, key and
        idempotency key always return the same invocation (``handle.already_existed``).
        With ``wait`` the server also waits up to ``wait_timeout`` for the invocation to
        end, so ``handle.done`` may already be true and ``handle.result()`` free. A
        workflow's run runs once per id (``key``): invoking it again returns the existing
        invocation, or with ``fail_if_exists`` raises ``AlreadyExistsError``.
        """
        if not isinstance(handler, str):
            handler = handler_name(handler)  # the function registered under that name
        request = control_pb2.InvokeRequest(
            handler=handler,
            key=key,
            input=to_payload(input),
            idempotency_key=idempotency_key,
            wait=wait,
            id_conflict_policy=(
                control_pb2.ID_CONFLICT_POLICY_FAIL
                if fail_if_exists
                else control_pb2.ID_CONFLICT_POLICY_USE_EXISTING
            ),
        )
        deadline = self._rpc_timeout
        if wait:
            seconds = _seconds(wait_timeout)
            deadline = None
            if seconds is not None:
                request.wait_timeout.FromTimedelta(timedelta(seconds=max(seconds, 0.0)))
                deadline = max(seconds, 0.0) + _DEADLINE_GRACE
        response = await self._call(
            self._stub().Invoke, request, deadline, repeatable=bool(idempotency_key)
        )
        return InvocationHandle(
            self,
            response.invocation_id,
            handler=handler,
            key=key,
            already_existed=response.already_existed,
            status=response.status,
            outcome=response.result if response.HasField("result") else None,
            no_worker_since=utc(response.no_worker_since),
        )

    async def start(
        self,
        handler: str | Callable[..., Awaitable[Any]],
        input: Any = None,
        *,
        key: str = "",
        idempotency_key: str = "",
    ) -> InvocationHandle:
        """Start an invocation without waiting for it; see :meth:`invoke` for the arguments."""
        return await self.invoke(handler, input, key=key, idempotency_key=idempotency_key)

    @overload
    async def execute(
        self,
        handler: Callable[[Any, I], Awaitable[O]],
        input: I,
        *,
        key: str = "",
        idempotency_key: str = "",
        timeout: Timeout = None,
    ) -> O: ...

    @overload
    async def execute(
        self,
        handler: Callable[[Any], Awaitable[O]],
        *,
        key: str = "",
        idempotency_key: str = "",
        timeout: Timeout = None,
    ) -> O: ...

    @overload
    async def execute(
        self,
        handler: str,
        input: Any = None,
        *,
        key: str = "",
        idempotency_key: str = "",
        timeout: Timeout = None,
    ) -> Any: ...

    @overload
    async def execute(
        self,
        handler: str,
        input: Any = None,
        *,
        key: str = "",
        idempotency_key: str = "",
        timeout: Timeout = None,
        result_type: type[T],
    ) -> T: ...

    async def execute(
        self,
        handler: str | Callable[..., Awaitable[Any]],
        input: Any = None,
        *,
        key: str = "",
        idempotency_key: str = "",
        timeout: Timeout = None,
        result_type: Any = None,
    ) -> Any:
        """Invoke ``handler`` and return its result: :meth:`invoke` then ``handle.result()``.

        Given the handler function, the call is typed by it (a wrong input type is a type
        checker's error) and the result comes back as its declared return type (a dataclass
        as that dataclass). Given a name, the result is plain JSON values, or
        ``result_type``. Raises like :meth:`InvocationHandle.result` when it fails, is
        cancelled or has not ended within ``timeout``.
        """
        if result_type is None and not isinstance(handler, str):
            result_type = declared_result_type(handler)
        seconds = _seconds(timeout)
        started = time.monotonic()
        handle = await self.invoke(
            handler,
            input,
            key=key,
            idempotency_key=idempotency_key,
            wait=True,
            wait_timeout=seconds,
        )
        if seconds is not None:
            seconds = max(seconds - (time.monotonic() - started), 0.0)
        if result_type is None:
            return await handle.result(seconds)
        return await handle.result(seconds, result_type=result_type)

    def handle(self, invocation_id: str) -> InvocationHandle:
        """Return a handle for an existing invocation id (no call is made)."""
        return InvocationHandle(self, invocation_id)

    @overload
    async def result(self, invocation_id: str, timeout: Timeout = None) -> Any: ...

    @overload
    async def result(
        self, invocation_id: str, timeout: Timeout = None, *, result_type: type[M]
    ) -> M: ...

    async def result(
        self, invocation_id: str, timeout: Timeout = None, *, result_type: type[M] | None = None
    ) -> Any:
        """Wait for an invocation to end and return its value (see
        :meth:`InvocationHandle.result`)."""
        handle = self.handle(invocation_id)
        if result_type is None:
            return await handle.result(timeout)
        return await handle.result(timeout, result_type=result_type)

    async def await_result(
        self, invocation_id: str, timeout: float | None = None
    ) -> control_pb2.AwaitResultResponse:
        """Block on ``AwaitResult`` until the invocation ends, and return the raw answer
        (``result`` decodes it); re-arm if the server answers "not done" early (e.g. its
        own wait limit), up to ``timeout`` seconds, then ``ResultTimeoutError``."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + max(timeout, 0.0)
        pause = 0.05
        while True:
            request = control_pb2.AwaitResultRequest(invocation_id=invocation_id)
            remaining = None if deadline is None else max(deadline - loop.time(), 0.0)
            if remaining is not None:
                request.timeout.FromTimedelta(timedelta(seconds=remaining))
            asked = loop.time()
            try:
                response = await self._call(
                    self._stub().AwaitResult,
                    request,
                    None if remaining is None else remaining + _DEADLINE_GRACE,
                    repeatable=True,
                )
            except RPCError as exc:
                if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise ResultTimeoutError(invocation_id, timeout) from exc
                raise
            if response.done:
                return response
            if deadline is not None and loop.time() >= deadline:
                raise ResultTimeoutError(invocation_id, timeout)
            if loop.time() - asked < pause:  # the server did not wait: do not spin
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)

    # -------------------------------------------------------------------------- inspecting

    async def get(self, invocation_id: str, *, skip_journal: bool = False) -> Invocation:
        """Return one invocation with its journal and current step (``GetWorkflow``)."""
        request = control_pb2.GetWorkflowRequest(
            invocation_id=invocation_id, skip_journal=skip_journal
        )
        response = await self._call(
            self._stub().GetWorkflow, request, self._rpc_timeout, repeatable=True
        )
        return Invocation.of(response.invocation, response.journal)

    async def list(
        self,
        *,
        statuses: Iterable[str | int] | str | int = (),
        handler: str = "",
        key: str = "",
        page_size: int = 0,
        page_token: str = "",
        service: str = "",
        created_after: datetime.datetime | None = None,
        created_before: datetime.datetime | None = None,
    ) -> InvocationPage:
        """Return one page of invocations, newest first (``ListWorkflows``).

        ``statuses`` are names (``"running"``) or values; empty means any. ``service``:
        any handler of it. ``created_after`` (inclusive) and ``created_before`` (exclusive)
        bound the creation time. ``page_size`` is 1 to 1000 (0: the server default, 50).
        Pass the response's ``next_page_token`` as ``page_token`` with the same filters for
        the next page, or use :meth:`list_all`.
        """
        if isinstance(statuses, str | int):
            statuses = [statuses]
        request = control_pb2.ListWorkflowsRequest(
            statuses=[parse_status(s) for s in statuses],
            handler=handler,
            key=key,
            page_size=page_size,
            page_token=page_token,
            service=service,
        )
        if created_after is not None:
            request.created_after.FromDatetime(created_after)
        if created_before is not None:
            request.created_before.FromDatetime(created_before)
        response = await self._call(
            self._stub().ListWorkflows, request, self._rpc_timeout, repeatable=True
        )
        return InvocationPage(
            invocations=[InvocationSummary.of(s) for s in response.invocations],
            next_page_token=response.next_page_token,
            total_size=response.total_size,
            raw=response,
        )

    async def list_all(
        self,
        *,
        statuses: Iterable[str | int] | str | int = (),
        handler: str = "",
        key: str = "",
        page_size: int = 0,
        service: str = "",
        created_after: datetime.datetime | None = None,
        created_before: datetime.datetime | None = None,
    ) -> AsyncIterator[InvocationSummary]:
        """Iterate over every matching invocation, newest first, fetching pages as needed."""
        if isinstance(statuses, str | int):
            statuses = [statuses]
        wanted = builtins.list(statuses)
        token = ""
        while True:
            page = await self.list(
                statuses=wanted,
                handler=handler,
                key=key,
                page_size=page_size,
                page_token=token,
                service=service,
                created_after=created_after,
                created_before=created_before,
            )
            for summary in page.invocations:
                yield summary
            token = page.next_page_token
            if not token:
                return

    async def server_info(self) -> ServerInfo:
        """Which engine answers: its version, its nats-server's, its settings."""
        r = await self._call(
            self._stub().GetServerInfo,
            control_pb2.GetServerInfoRequest(),
            self._rpc_timeout,
            repeatable=True,
        )
        return ServerInfo.of(r)

    async def stats(self) -> Stats:
        """Return invocation counts by status, handler and service (``Stats``)."""
        response = await self._call(
            self._stub().Stats, control_pb2.StatsRequest(), self._rpc_timeout, repeatable=True
        )
        return Stats.of(response)

    async def handlers(self) -> builtins.list[HandlerInfo]:
        """Return the handlers the running workers registered, sorted by name."""
        response = await self._call(
            self._stub().ListHandlers,
            control_pb2.ListHandlersRequest(),
            self._rpc_timeout,
            repeatable=True,
        )
        return [HandlerInfo.of(h) for h in response.handlers]

    # ---------------------------------------------------------------------------- steering

    async def pause(self, invocation_id: str, reason: str = "") -> InvocationSummary:
        """Pause an invocation at its next step boundary; it then holds no worker slot.

        Returns the invocation: PAUSED, or still RUNNING until it reaches that boundary.
        """
        request = control_pb2.PauseRequest(invocation_id=invocation_id, reason=reason)
        response = await self._call(self._stub().Pause, request, self._rpc_timeout, repeatable=True)
        return InvocationSummary.of(response.invocation)

    async def resume(self, invocation_id: str) -> InvocationSummary:
        """Resume a paused invocation from the same journal position; returns it."""
        request = control_pb2.ResumeRequest(invocation_id=invocation_id)
        response = await self._call(
            self._stub().Resume, request, self._rpc_timeout, repeatable=True
        )
        return InvocationSummary.of(response.invocation)

    async def cancel(self, invocation_id: str, reason: str = "") -> InvocationSummary:
        """Cancel an invocation: its handler sees a cancellation at its next step and can
        compensate. Returns it: CANCELLED, or still running until the handler sees it."""
        request = control_pb2.CancelRequest(invocation_id=invocation_id, reason=reason)
        response = await self._call(
            self._stub().Cancel, request, self._rpc_timeout, repeatable=True
        )
        return InvocationSummary.of(response.invocation)

    # ----------------------------------------------------------------- waits from outside

    async def resolve_awakeable(self, awakeable_id: str, value: Any = None) -> str:
        """Complete an awakeable with ``value``; the handler waiting for it continues.
        Returns the id of its invocation. ALREADY_EXISTS when it was completed before."""
        request = control_pb2.ResolveAwakeableRequest(
            awakeable_id=awakeable_id, value=to_payload(value)
        )
        response = await self._call(self._stub().ResolveAwakeable, request, self._rpc_timeout)
        return response.invocation_id

    async def reject_awakeable(self, awakeable_id: str, reason: str) -> str:
        """Complete an awakeable with a failure: the handler sees a ``TerminalError`` with
        ``reason``. Returns the id of its invocation."""
        request = control_pb2.RejectAwakeableRequest(awakeable_id=awakeable_id, reason=reason)
        response = await self._call(self._stub().RejectAwakeable, request, self._rpc_timeout)
        return response.invocation_id

    async def watch(self, invocation_id: str) -> AsyncIterator[WatchEvent]:
        """Follow one invocation: a snapshot, then each journaled step and status change as
        they happen (pushed by the server), ending with its outcome."""
        call = self._stub().WatchWorkflow(
            control_pb2.WatchWorkflowRequest(invocation_id=invocation_id)
        )
        try:
            async for event in call:
                yield WatchEvent(
                    kind=WatchEventKind(event.kind),
                    invocation=Invocation.of(event.invocation),
                    steps=[JournalEntry.of(e) for e in event.steps],
                    raw=event,
                )
        except grpc.aio.AioRpcError as exc:
            raise rpc_error(exc) from exc
        finally:
            call.cancel()

    # ------------------------------------------------------------ objects and workflows

    async def resolve_promise(self, handler: str, key: str, promise: str, value: Any = None) -> str:
        """Resolve promise ``promise`` of the workflow ``key`` whose run is ``handler``;
        returns the run's invocation id."""
        request = control_pb2.ResolvePromiseRequest(
            handler=handler, key=key, promise=promise, value=to_payload(value)
        )
        response = await self._call(self._stub().ResolvePromise, request, self._rpc_timeout)
        return response.invocation_id

    async def reject_promise(self, handler: str, key: str, promise: str, reason: str) -> str:
        """Reject a workflow promise: its awaiter sees a ``TerminalError`` with ``reason``."""
        request = control_pb2.RejectPromiseRequest(
            handler=handler, key=key, promise=promise, reason=reason
        )
        response = await self._call(self._stub().RejectPromise, request, self._rpc_timeout)
        return response.invocation_id

    async def get_state(self, obj: str, key: str) -> dict[str, Any]:
        """The state of one virtual object key or workflow id, decoded."""
        request = control_pb2.GetObjectStateRequest(object=obj, key=key)
        response = await self._call(
            self._stub().GetObjectState, request, self._rpc_timeout, repeatable=True
        )
        return {e.name: from_payload(e.value) for e in response.entries}

    async def set_state(
        self,
        obj: str,
        key: str,
        values: dict[str, Any] | None = None,
        *,
        clear: Iterable[str] = (),
        clear_all: bool = False,
    ) -> dict[str, Any]:
        """Edit one key's state at once (an operator fixing a stuck key); returns it."""
        request = control_pb2.SetObjectStateRequest(
            object=obj,
            key=key,
            set=[
                types_pb2.StateEntry(name=n, value=to_payload(v)) for n, v in (values or {}).items()
            ],
            clear=list(clear),
            clear_all=clear_all,
        )
        response = await self._call(self._stub().SetObjectState, request, self._rpc_timeout)
        return {e.name: from_payload(e.value) for e in response.entries}

    async def kill(self, invocation_id: str, reason: str = "") -> InvocationSummary:
        """End an invocation CANCELLED at once, without running its compensations."""
        request = control_pb2.KillRequest(invocation_id=invocation_id, reason=reason)
        response = await self._call(self._stub().Kill, request, self._rpc_timeout, repeatable=True)
        return InvocationSummary.of(response.invocation)

    async def purge(self, invocation_id: str) -> None:
        """Delete an ended invocation (and a workflow run's state, freeing its id)."""
        request = control_pb2.PurgeRequest(invocation_id=invocation_id)
        await self._call(self._stub().Purge, request, self._rpc_timeout)
