"""How the control plane answers: every non-OK status as a ``google.rpc.Status``.

* Every refusal carries a ``google.rpc.ErrorInfo`` (domain ``durable.v1``, a reason from
  ``durable.v1.ErrorReason`` without its prefix, and that reason's metadata), so programs
  act on the reason and people read the message (``refusal_status``).

* A request body that does not parse as its method's request message (corrupt bytes, or a
  ``google.protobuf.Value`` nested past protobuf's recursion limit) is the client's mistake:
  ``RequestBodyCheck`` answers INVALID_ARGUMENT "the request body is not a valid <Message>",
  and logs nothing but a DEBUG line.
* A bug of the server answers INTERNAL "internal error <id>; see the server log", with no
  Python internals (class names, reprs, tracebacks) in the status. ``InternalErrors`` logs
  each error id once, with its traceback while fewer than ``tracebacks_per_minute`` were
  logged in the last minute, so a flood of one failure cannot fill the disk.
* JetStream not answering (an election, a reconnect) until shortly before the call's
  deadline is UNAVAILABLE with a ``google.rpc.RetryInfo`` detail (``unavailable_status``):
  the request may be sent again as it is, after the delay the detail gives.
* Every status message is cut to ``MAX_STATUS_BYTES`` (``status_message``): it travels in a
  header, which clients cap, and a longer one would replace the status with a transport
  error.
"""

from __future__ import annotations

import inspect
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from durable.v1 import errors_pb2

log = logging.getLogger("durable.control")

if TYPE_CHECKING:  # generic only in the type stubs
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
else:
    Handler = grpc.RpcMethodHandler

#: Longest status message, in UTF-8 bytes (grpc-message percent-encodes it, up to 3x).
MAX_STATUS_BYTES = 1024


#: The delay an UNAVAILABLE answer suggests: about how long a JetStream election takes.
RETRY_DELAY_SECONDS = 1


def unavailable_status() -> grpc.Status:
    """UNAVAILABLE, with a ``google.rpc.RetryInfo`` detail saying when to try again."""
    status = status_pb2.Status(
        code=code_pb2.UNAVAILABLE,
        message="JetStream did not answer in time (a leader election or a reconnect); "
        "retry the call",
    )
    status.details.add().Pack(_error_info(errors_pb2.ERROR_REASON_JETSTREAM_UNAVAILABLE, {}))
    status.details.add().Pack(
        error_details_pb2.RetryInfo(retry_delay=Duration(seconds=RETRY_DELAY_SECONDS))
    )
    return rpc_status.to_status(status)


#: ``ErrorInfo.domain`` of every status the control plane answers.
ERROR_DOMAIN = "durable.v1"
_REASON_PREFIX = "ERROR_REASON_"


def reason_name(reason: errors_pb2.ErrorReason.ValueType) -> str:
    """The ``ErrorInfo.reason`` string of an ``ErrorReason``: its name without the prefix."""
    return errors_pb2.ErrorReason.Name(reason).removeprefix(_REASON_PREFIX)


def _error_info(
    reason: errors_pb2.ErrorReason.ValueType, metadata: dict[str, str]
) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(
        reason=reason_name(reason), domain=ERROR_DOMAIN, metadata=metadata
    )


_C = grpc.StatusCode
_R = errors_pb2

#: The status code each reason is answered with, as errors.proto documents it: the one
#: place where the engine's refusals become gRPC statuses.
STATUS_OF: dict[int, grpc.StatusCode] = {
    _R.ERROR_REASON_FIELD_INVALID: _C.INVALID_ARGUMENT,
    _R.ERROR_REASON_INVOCATION_ID_MALFORMED: _C.INVALID_ARGUMENT,
    _R.ERROR_REASON_INPUT_INVALID: _C.INVALID_ARGUMENT,
    _R.ERROR_REASON_PAYLOAD_INVALID: _C.INVALID_ARGUMENT,
    _R.ERROR_REASON_KEY_REQUIRED: _C.INVALID_ARGUMENT,
    _R.ERROR_REASON_KEY_NOT_ALLOWED: _C.INVALID_ARGUMENT,
    _R.ERROR_REASON_PAGE_TOKEN_INVALID: _C.INVALID_ARGUMENT,
    _R.ERROR_REASON_REQUEST_BODY_INVALID: _C.INVALID_ARGUMENT,
    _R.ERROR_REASON_AWAKEABLE_ID_MALFORMED: _C.INVALID_ARGUMENT,
    _R.ERROR_REASON_HANDLER_KIND_MISMATCH: _C.INVALID_ARGUMENT,
    _R.ERROR_REASON_HANDLER_NOT_FOUND: _C.NOT_FOUND,
    _R.ERROR_REASON_INVOCATION_NOT_FOUND: _C.NOT_FOUND,
    _R.ERROR_REASON_OBJECT_NOT_FOUND: _C.NOT_FOUND,
    _R.ERROR_REASON_AWAKEABLE_NOT_FOUND: _C.NOT_FOUND,
    _R.ERROR_REASON_INVOCATION_ENDED: _C.FAILED_PRECONDITION,
    _R.ERROR_REASON_INVOCATION_NOT_PAUSED: _C.FAILED_PRECONDITION,
    _R.ERROR_REASON_INVOCATION_ALREADY_PAUSED: _C.FAILED_PRECONDITION,
    _R.ERROR_REASON_INVOCATION_CANCELLING: _C.FAILED_PRECONDITION,
    _R.ERROR_REASON_INVOCATION_NOT_ENDED: _C.FAILED_PRECONDITION,
    _R.ERROR_REASON_AWAKEABLE_OUT_OF_RANGE: _C.FAILED_PRECONDITION,
    _R.ERROR_REASON_IDEMPOTENCY_KEY_CONFLICT: _C.ALREADY_EXISTS,
    _R.ERROR_REASON_WORKFLOW_ID_TAKEN: _C.ALREADY_EXISTS,
    _R.ERROR_REASON_ALREADY_COMPLETED: _C.ALREADY_EXISTS,
    _R.ERROR_REASON_PAYLOAD_TOO_LARGE: _C.RESOURCE_EXHAUSTED,
    _R.ERROR_REASON_STATE_TOO_LARGE: _C.RESOURCE_EXHAUSTED,
    _R.ERROR_REASON_TOO_MANY_WAITERS: _C.RESOURCE_EXHAUSTED,
    _R.ERROR_REASON_TOO_MANY_PROMISES: _C.RESOURCE_EXHAUSTED,
    _R.ERROR_REASON_JETSTREAM_UNAVAILABLE: _C.UNAVAILABLE,
    _R.ERROR_REASON_INTERNAL_ERROR: _C.INTERNAL,
    _R.ERROR_REASON_UNAUTHENTICATED: _C.UNAUTHENTICATED,
    _R.ERROR_REASON_PERMISSION_DENIED: _C.PERMISSION_DENIED,
}


def refusal_status(
    reason: errors_pb2.ErrorReason.ValueType, message: str, metadata: dict[str, str]
) -> grpc.Status:
    """A refused request's status: the reason's code (``STATUS_OF``), ``message`` (cut to
    ``MAX_STATUS_BYTES``) and an ErrorInfo naming ``reason`` with ``metadata``."""
    code = STATUS_OF[reason]
    status = status_pb2.Status(code=code.value[0], message=status_message(message))
    status.details.add().Pack(_error_info(reason, metadata))
    return rpc_status.to_status(status)


def internal_status(error_id: str) -> grpc.Status:
    """INTERNAL for a bug of the server, naming the error id the log holds."""
    return refusal_status(
        errors_pb2.ERROR_REASON_INTERNAL_ERROR,
        f"internal error {error_id}; see the server log",
        {"error_id": error_id},
    )


def status_message(message: str) -> str:
    """``message`` cut to ``MAX_STATUS_BYTES``."""
    raw = message.encode()
    if len(raw) <= MAX_STATUS_BYTES:
        return message
    return raw[: MAX_STATUS_BYTES - 40].decode("utf-8", "ignore") + "... (message shortened)"


class InternalErrors:
    """Logs the server's own failures: once per error id, tracebacks rate-limited."""

    def __init__(
        self, tracebacks_per_minute: int = 10, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = tracebacks_per_minute
        self._clock = clock
        self._window = clock()
        self._logged = 0
        self._suppressed = 0

    def report(self, where: str, err: BaseException) -> str:
        """Log ``err`` under a new error id, and return the id."""
        error_id = secrets.token_hex(6)
        now = self._clock()
        if now - self._window >= 60.0:
            if self._suppressed:
                log.error(
                    "%d internal errors in the last minute were logged without a traceback",
                    self._suppressed,
                )
            self._window, self._logged, self._suppressed = now, 0, 0
        if self._logged < self._limit:
            self._logged += 1
            log.error("internal error %s in %s", error_id, where, exc_info=err)
        else:
            self._suppressed += 1
            log.error(
                "internal error %s in %s: %s: %s (traceback not logged: more than %d a minute)",
                error_id,
                where,
                type(err).__name__,
                str(err)[:200],
                self._limit,
            )
        return error_id


#: The one instance the control plane reports through.
INTERNAL_ERRORS = InternalErrors()


class _Undecodable:
    """Stands for a request body that did not parse, until the handler can refuse it."""

    __slots__ = ("message", "name")

    def __init__(self, message: str, name: str) -> None:
        self.message = message
        self.name = name

    def status(self) -> grpc.Status:
        return refusal_status(
            errors_pb2.ERROR_REASON_REQUEST_BODY_INVALID, self.message, {"message": self.name}
        )


def _message_name(deserialize: Callable[[bytes], Any], method: str) -> str:
    message_class = getattr(deserialize, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    name = getattr(descriptor, "full_name", None)
    return name if isinstance(name, str) else f"request of {method}"


class RequestBodyCheck(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Answers INVALID_ARGUMENT for a request body that does not parse.

    grpc would answer UNKNOWN ``Unexpected <class 'DecodeError'>`` and log a traceback per
    request. Each method handler's ``request_deserializer`` is swapped for one that returns
    a marker instead of raising, and its behaviour for one that aborts on the marker. Done
    for unary requests (every DurableControl and Health method, unary or server-streaming
    responses) and for request streams served by an async generator (reflection).
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        return _checked(handler, handler_call_details.method)


def _checked(handler: Handler, method: str) -> Handler:
    deserialize = handler.request_deserializer
    assert deserialize is not None  # the caller checked
    name = _message_name(deserialize, method)
    bad_body = f"the request body is not a valid {name}"

    def tolerant(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except (DecodeError, RecursionError, ValueError):
            log.debug("%s: %s", method, bad_body)
            return _Undecodable(bad_body, name)

    changes: dict[str, Any] = {}
    if handler.unary_unary is not None and inspect.iscoroutinefunction(handler.unary_unary):
        changes["unary_unary"] = _unary(handler.unary_unary)
    elif handler.unary_stream is not None and inspect.iscoroutinefunction(handler.unary_stream):
        changes["unary_stream"] = _unary(handler.unary_stream)
    elif handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
        changes["unary_stream"] = _unary_generator(handler.unary_stream)
    elif handler.stream_stream is not None and inspect.isasyncgenfunction(handler.stream_stream):
        changes["stream_stream"] = _stream_generator(handler.stream_stream)
    if not changes:
        return handler  # a kind this server does not use: left as grpc handles it
    # grpc's handlers are namedtuples (grpc._utilities.RpcMethodHandler).
    replaced: Handler = handler._replace(request_deserializer=tolerant, **changes)  # type: ignore[attr-defined]
    return replaced


def _unary(behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, _Undecodable):
            await context.abort_with_status(request.status())  # type: ignore[attr-defined]
        return await behaviour(request, context)

    return checked


def _unary_generator(
    behaviour: Callable[..., AsyncIterator[Any]],
) -> Callable[..., AsyncIterator[Any]]:
    async def checked(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, _Undecodable):
            await context.abort_with_status(request.status())  # type: ignore[attr-defined]
        async for response in behaviour(request, context):
            yield response

    return checked


def _stream_generator(
    behaviour: Callable[..., AsyncIterator[Any]],
) -> Callable[..., AsyncIterator[Any]]:
    async def checked(requests: AsyncIterator[Any], context: Any) -> Any:
        async def parsed() -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, _Undecodable):
                    await context.abort_with_status(request.status())
                yield request

        async for response in behaviour(parsed(), context):
            yield response

    return checked
