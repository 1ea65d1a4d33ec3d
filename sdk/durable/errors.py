"""The one exception hierarchy of the durable SDK.

Every error the SDK raises, on the handler side and on the client side, is one of these::

    Exception
    └── DurableError                     root of everything the SDK raises
        ├── TerminalError                a handler fails its invocation, no retry (message, code)
        │   └── CancelledError           a handler sees Cancel at its next step
        ├── ClientError                  the client could not do what was asked
        │   ├── RPCError                 a DurableControl call failed (status, details,
        │   │   │                            reason, metadata)
        │   │   ├── NotFoundError            NOT_FOUND
        │   │   ├── InvalidArgumentError     INVALID_ARGUMENT
        │   │   ├── AlreadyExistsError       ALREADY_EXISTS
        │   │   ├── FailedPreconditionError  FAILED_PRECONDITION
        │   │   ├── ResourceExhaustedError   RESOURCE_EXHAUSTED
        │   │   ├── UnauthenticatedError     UNAUTHENTICATED: no or unknown credentials
        │   │   ├── PermissionDeniedError    PERMISSION_DENIED: the credentials lack the role
        │   │   └── UnavailableError         UNAVAILABLE: try again (retry_delay)
        │   └── ResultTimeoutError       the awaited invocation had not ended in time
        │                                (also a builtin TimeoutError)
        ├── InvocationFailedError        the awaited invocation ended in a failure
        │   └── InvocationCancelledError the awaited invocation ended cancelled
        └── RpcStatusError               a gRPC service called over NATS (or gRPC) answered
                                         with a non-OK status (status, message, reason,
                                         metadata as RPCError; code, details bytes)

    BaseException
    └── _RuntimeSignal                   private: runtime control flow, not errors
        ├── SuspendInvocation            the handler waits; unwind it, keep the journal
        └── NonDeterminismError          the code asked for a step the journal does not hold

Handlers raise :class:`TerminalError` to fail for good; any other ``Exception`` is retried.
:class:`CancelledError` is deliberately a :class:`TerminalError`: a handler that compensates in
``except TerminalError`` also compensates on cancellation. It is not :class:`asyncio.CancelledError`
(which cancels a Python task); refer to it as ``durable.CancelledError``.

The runtime signals derive from :class:`BaseException` so that a handler's ``except Exception``
cannot swallow them: they must unwind the handler's stack back to the engine.

All exceptions here survive ``pickle`` (handlers may run ``ctx.run`` functions in other
processes), keeping their attributes.
"""

from __future__ import annotations

from typing import Any

import grpc

from durable._status_details import read_details

__all__ = [
    "AlreadyExistsError",
    "CancelledError",
    "ClientError",
    "DurableError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "InvocationCancelledError",
    "InvocationFailedError",
    "NonDeterminismError",
    "NotFoundError",
    "PermissionDeniedError",
    "RPCError",
    "ResourceExhaustedError",
    "ResultTimeoutError",
    "RpcStatusError",
    "SuspendInvocation",
    "TerminalError",
    "UnauthenticatedError",
    "UnavailableError",
]


class DurableError(Exception):
    """Root of every exception the durable SDK raises, so callers can catch them all at once."""


# --------------------------------------------------------------------------------------------
# Raised by handlers
# --------------------------------------------------------------------------------------------


class TerminalError(DurableError):
    """Raised by a handler to fail its invocation without retry.

    Any other exception is retried with backoff; this one ends the invocation FAILED, with
    ``message`` and the application ``code`` stored in its ``Failure``. Catch it around calls
    and ``ctx.run`` steps to write compensations (sagas).
    """

    def __init__(self, message: str = "", code: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return f"{self.message} (code {self.code})" if self.code else self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.code))


class CancelledError(TerminalError):
    """What a handler sees at its next step after its invocation was cancelled.

    It is a :class:`TerminalError`, so compensation blocks written for failures also run on
    cancellation; re-raising it (or letting it propagate) ends the invocation CANCELLED.
    Not to be confused with :class:`asyncio.CancelledError`.
    """

    def __init__(self, message: str = "invocation cancelled", code: int = 0) -> None:
        super().__init__(message, code)


# --------------------------------------------------------------------------------------------
# Raised by the client
# --------------------------------------------------------------------------------------------


class ClientError(DurableError):
    """Base of the errors the client raises when it cannot do what was asked."""


class RPCError(ClientError):
    """A ``DurableControl`` call failed with a gRPC status.

    ``status`` names the status code (``"NOT_FOUND"``; ``code`` is the same as a
    :class:`grpc.StatusCode`), ``details`` is the server's message, meant for a person, and
    ``reason`` says for programs which rule was broken: a ``durable.v1.ErrorReason`` name
    without its prefix, such as ``"HANDLER_NOT_FOUND"`` or ``"IDEMPOTENCY_KEY_CONFLICT"``,
    with the values it names in ``metadata`` (e.g. ``metadata["invocation_id"]``);
    ``proto/durable/v1/errors.proto`` lists them. ``reason`` is ``""`` when the status
    carried none (one from gRPC itself, such as DEADLINE_EXCEEDED). Build one from a status
    with :meth:`from_status` to get the specific subclass.
    """

    #: Status code of instances created without an explicit ``code``.
    status_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        details: str = "",
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        retry_delay: float | None = None,
    ) -> None:
        self.code: grpc.StatusCode = code if code is not None else self.status_code
        self.details = details
        self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})
        #: Seconds the server asked to wait before sending the call again, if it said.
        self.retry_delay = retry_delay
        super().__init__(f"{self.code.name}: {details}" if details else self.code.name)

    @property
    def status(self) -> str:
        """The status code's name, e.g. ``"NOT_FOUND"`` (no grpc import needed to compare)."""
        return str(self.code.name)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_rpc_error,
            (
                type(self),
                self.details,
                self.code.name,
                self.reason,
                self.metadata,
                self.retry_delay,
            ),
        )

    @staticmethod
    def from_status(
        code: grpc.StatusCode,
        details: str,
        *,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        retry_delay: float | None = None,
    ) -> RPCError:
        """Return the most specific :class:`RPCError` subclass for a gRPC status."""
        cls = _BY_CODE.get(code, RPCError)
        return cls(details, code=code, reason=reason, metadata=metadata, retry_delay=retry_delay)


class NotFoundError(RPCError):
    """The invocation, handler or awakeable named in the request does not exist."""

    status_code = grpc.StatusCode.NOT_FOUND


class InvalidArgumentError(RPCError):
    """The request is malformed (e.g. an unknown handler name or an input of the wrong type)."""

    status_code = grpc.StatusCode.INVALID_ARGUMENT


class AlreadyExistsError(RPCError):
    """Something with the same identity exists (e.g. a workflow id that already ran)."""

    status_code = grpc.StatusCode.ALREADY_EXISTS


class FailedPreconditionError(RPCError):
    """The invocation is not in a state that allows the request (e.g. resuming a finished one)."""

    status_code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhaustedError(RPCError):
    """A limit was hit (payload size, page size, rate); retrying the same request will not help."""

    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnauthenticatedError(RPCError):
    """The control plane requires credentials: none were sent, or it does not accept them
    (``Client(token=...)``, ``DURABLE_TOKEN``, or a client certificate it lists)."""

    status_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(RPCError):
    """The credentials are valid but lack the role this call needs, or may not touch this
    service; ``metadata["role"]`` names the role."""

    status_code = grpc.StatusCode.PERMISSION_DENIED


class UnavailableError(RPCError):
    """The engine could not answer now (a JetStream leader election, a control plane
    restarting): the call may be sent again as it is, after ``retry_delay`` seconds. The
    client already does so by itself for calls that are safe to repeat."""

    status_code = grpc.StatusCode.UNAVAILABLE


_BY_CODE: dict[grpc.StatusCode, type[RPCError]] = {
    cls.status_code: cls
    for cls in (
        NotFoundError,
        InvalidArgumentError,
        AlreadyExistsError,
        FailedPreconditionError,
        ResourceExhaustedError,
        UnauthenticatedError,
        PermissionDeniedError,
        UnavailableError,
    )
}


def _rebuild_rpc_error(
    cls: type[RPCError],
    details: str,
    code_name: str,
    reason: str = "",
    metadata: dict[str, str] | None = None,
    retry_delay: float | None = None,
) -> RPCError:
    # grpc.StatusCode members pickle by value (a tuple), which is fragile; go by name instead.
    return cls(
        details,
        code=grpc.StatusCode[code_name],
        reason=reason,
        metadata=metadata,
        retry_delay=retry_delay,
    )


class ResultTimeoutError(ClientError, TimeoutError):
    """The awaited invocation had not ended when the timeout passed; it keeps running.

    Also a builtin :class:`TimeoutError`, so ``except TimeoutError`` catches it.
    """

    def __init__(self, invocation_id: str, timeout: float | None) -> None:
        self.invocation_id = invocation_id
        self.timeout = timeout
        super().__init__(f"invocation {invocation_id} had not ended after {timeout}s")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.invocation_id, self.timeout))


class InvocationFailedError(DurableError):
    """The invocation whose result was asked for ended in a terminal failure.

    Carries the stored ``Failure``: ``failure_message`` (as raised by the handler),
    ``error_type`` (the Python exception type name, e.g. ``"TerminalError"``) and the
    application ``code`` of a :class:`TerminalError`.
    """

    def __init__(
        self,
        failure_message: str,
        error_type: str = "",
        code: int = 0,
        invocation_id: str = "",
    ) -> None:
        self.failure_message = failure_message
        self.error_type = error_type
        self.code = code
        self.invocation_id = invocation_id
        super().__init__(self._describe())

    def _describe(self) -> str:
        what = f"invocation {self.invocation_id}" if self.invocation_id else "invocation"
        kind = f"{self.error_type}: " if self.error_type else ""
        code = f" (code {self.code})" if self.code else ""
        return f"{what} failed: {kind}{self.failure_message}{code}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (self.failure_message, self.error_type, self.code, self.invocation_id),
        )


class InvocationCancelledError(InvocationFailedError):
    """The invocation whose result was asked for ended CANCELLED (after compensating)."""

    def _describe(self) -> str:
        what = f"invocation {self.invocation_id}" if self.invocation_id else "invocation"
        reason = f": {self.failure_message}" if self.failure_message else ""
        return f"{what} was cancelled{reason}"


# --------------------------------------------------------------------------------------------
# Runtime control flow (BaseException: user `except Exception` must not swallow these)
# --------------------------------------------------------------------------------------------


class _RuntimeSignal(BaseException):
    """Private base of the runtime's control-flow signals.

    They unwind a handler's stack back to the engine. Deriving from :class:`BaseException`
    keeps a handler's ``except Exception`` from swallowing them; handler code must not catch
    them either.
    """


class SuspendInvocation(_RuntimeSignal):
    """Raised by the runtime inside a handler when it must wait (timer, awakeable, promise,
    call) and the invocation should release its worker until the completion arrives.

    The journal so far is kept; the handler is replayed from it when the invocation resumes.
    ``reason`` says what it waits for (shown in logs and GetWorkflow).
    """

    def __init__(self, reason: str = "", waits: tuple[Any, ...] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        # What it waits for (durable.v1.WaitTarget messages); empty for a pause.
        self.waits = tuple(waits)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason, self.waits))


class NonDeterminismError(_RuntimeSignal):
    """Raised by the runtime when, on replay, the handler asks for a different step than the
    journal holds at that position (other kind, name or target).

    Continuing would corrupt the invocation, so it stops; the engine keeps it (paused or
    failed) with this message as the status reason. ``index`` is the journal position,
    ``expected`` describes the journaled step and ``actual`` the step the code asked for.
    """

    def __init__(
        self,
        message: str,
        *,
        index: int = -1,
        expected: str = "",
        actual: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.index = index
        self.expected = expected
        self.actual = actual

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_non_determinism,
            (type(self), self.message, self.index, self.expected, self.actual),
        )


def _rebuild_non_determinism(
    cls: type[NonDeterminismError], message: str, index: int, expected: str, actual: str
) -> NonDeterminismError:
    return cls(message, index=index, expected=expected, actual=actual)


class RpcStatusError(DurableError):
    """A gRPC service called through ``NatsChannel`` (or a handler's ``ctx.stub`` on a code
    that is retried) answered with a non-OK status: ``code`` (a ``grpc.StatusCode``),
    ``message`` and the ``details`` bytes (``grpc-status-details-bin``)."""

    def __init__(self, code: grpc.StatusCode, message: str, details: bytes = b"") -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.details = details

    @property
    def status(self) -> str:
        """The status code's name, e.g. ``"UNAVAILABLE"`` (as ``RPCError.status``)."""
        return self.code.name

    @property
    def reason(self) -> str:
        """The ``google.rpc.ErrorInfo`` reason in ``details``, if the service sent one."""
        return read_details(self.details).reason

    @property
    def metadata(self) -> dict[str, str]:
        """The ``google.rpc.ErrorInfo`` metadata in ``details`` (empty when none)."""
        return read_details(self.details).metadata

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.message, self.details))
