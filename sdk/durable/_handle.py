"""A handle on one invocation, and the status helpers the client and the CLI share."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Final, Protocol, TypeAlias, TypeVar, overload

from google.protobuf.message import Message

from durable._codec import from_payload
from durable._views import Invocation, InvocationStatus, InvocationSummary
from durable.errors import InvocationCancelledError, InvocationFailedError
from durable.v1 import control_pb2, types_pb2

# An ``InvocationStatus`` enum value (an ``int``), e.g. ``types_pb2.INVOCATION_STATUS_RUNNING``.
_Status: TypeAlias = types_pb2.InvocationStatus.ValueType

M = TypeVar("M", bound=Message)
T = TypeVar("T")

Timeout: TypeAlias = float | timedelta | None


class InvocationCalls(Protocol):
    """What a handle asks of the client that made it (``Client`` is one); a protocol, so
    this module does not import the client's."""

    async def await_result(
        self, invocation_id: str, timeout: float | None = None
    ) -> control_pb2.AwaitResultResponse: ...

    async def get(self, invocation_id: str, *, skip_journal: bool = False) -> Invocation: ...

    async def pause(self, invocation_id: str, reason: str = "") -> InvocationSummary: ...

    async def resume(self, invocation_id: str) -> InvocationSummary: ...

    async def cancel(self, invocation_id: str, reason: str = "") -> InvocationSummary: ...


_STATUS_PREFIX: Final = "INVOCATION_STATUS_"
_TERMINAL: Final = frozenset(
    {
        types_pb2.INVOCATION_STATUS_COMPLETED,
        types_pb2.INVOCATION_STATUS_FAILED,
        types_pb2.INVOCATION_STATUS_CANCELLED,
    }
)
_STATUS_BY_NAME: Final[dict[str, _Status]] = {
    name.removeprefix(_STATUS_PREFIX): value
    for name, value in types_pb2.InvocationStatus.items()
    if value != types_pb2.INVOCATION_STATUS_UNSPECIFIED
}
_NAME_BY_STATUS: Final[dict[int, str]] = {v: k for k, v in _STATUS_BY_NAME.items()}


def parse_status(status: str | int) -> _Status:
    """Return the ``InvocationStatus`` value named by ``status``.

    Accepts enum values and names in any case, with or without the ``INVOCATION_STATUS_``
    prefix, and ``-`` for ``_`` (``"running"``, ``"backing-off"``). Raises ``ValueError``
    listing the valid names otherwise; ``UNSPECIFIED`` is refused since it matches nothing.
    """
    if isinstance(status, int):
        name = _NAME_BY_STATUS.get(status, "")
    else:
        name = status.strip().upper().replace("-", "_").removeprefix(_STATUS_PREFIX)
    if name in _STATUS_BY_NAME:
        return _STATUS_BY_NAME[name]
    valid = ", ".join(_STATUS_BY_NAME).lower()
    raise ValueError(f"unknown invocation status {status!r}; expected one of: {valid}")


def status_name(status: int) -> str:
    """Return the short name of a status value, e.g. ``"RUNNING"`` (``"UNKNOWN(9)"`` if new)."""
    if status == types_pb2.INVOCATION_STATUS_UNSPECIFIED:
        return "UNSPECIFIED"
    return _NAME_BY_STATUS.get(status, f"UNKNOWN({status})")


def is_terminal(status: int) -> bool:
    """Return whether an invocation in ``status`` has ended (completed, failed or cancelled)."""
    return status in _TERMINAL


def _seconds(timeout: Timeout) -> float | None:
    if isinstance(timeout, timedelta):
        return timeout.total_seconds()
    return None if timeout is None else float(timeout)


def _unwrap(
    invocation_id: str,
    status: _Status,
    result: types_pb2.Result,
    result_type: Any,
) -> Any:
    """Turn a finished invocation's ``Result`` into its value, or raise its failure."""
    outcome = result.WhichOneof("outcome")
    if outcome == "value":
        return from_payload(result.value, result_type)
    failure = result.failure
    if status == types_pb2.INVOCATION_STATUS_CANCELLED or failure.error_type == "CancelledError":
        raise InvocationCancelledError(
            failure.message, failure.error_type, failure.code, invocation_id
        )
    if outcome == "failure" or status == types_pb2.INVOCATION_STATUS_FAILED:
        raise InvocationFailedError(
            failure.message or "no failure recorded",
            failure.error_type,
            failure.code,
            invocation_id,
        )
    return from_payload(types_pb2.Payload(), result_type)


class InvocationHandle:
    """A reference to one invocation: its id, plus shortcuts to await and steer it.

    Returned by :meth:`Client.start` and :meth:`Client.invoke`, or made from a known id with
    :meth:`Client.handle`. It remembers the last status it saw and, once the invocation has
    ended, its outcome, so awaiting the result twice costs one round trip at most.

    Attributes: ``id`` (the invocation id), ``handler`` (``"<service>/<handler>"``) and
    ``key`` (object key or workflow id), both empty when made from an id only, and
    ``already_existed`` (an idempotency key matched an invocation started before).
    """

    def __init__(
        self,
        client: InvocationCalls,
        invocation_id: str,
        *,
        handler: str = "",
        key: str = "",
        already_existed: bool = False,
        status: _Status = types_pb2.INVOCATION_STATUS_UNSPECIFIED,
        outcome: types_pb2.Result | None = None,
        no_worker_since: datetime | None = None,
    ) -> None:
        self._client = client
        #: Set by Invoke when no live worker hosted the handler then: the invocation waits
        #: in the queue for one (since that time); None when one did.
        self.no_worker_since = no_worker_since
        self.id = invocation_id
        self.handler = handler
        self.key = key
        self.already_existed = already_existed
        self._status = status
        self._outcome = outcome

    def __repr__(self) -> str:
        return f"InvocationHandle({self.id!r}, status={status_name(self._status)})"

    @property
    def status(self) -> InvocationStatus:
        """The last status this handle saw (``UNSPECIFIED`` before any)."""
        return InvocationStatus(self._status)

    @property
    def done(self) -> bool:
        """True once this handle has seen the invocation end and holds its outcome."""
        return self._outcome is not None and is_terminal(self._status)

    @property
    def outcome(self) -> types_pb2.Result | None:
        """The raw ``Result`` once the invocation has ended (see :attr:`done`), else ``None``."""
        return self._outcome if self.done else None

    @overload
    async def result(self, timeout: Timeout = None) -> Any: ...

    @overload
    async def result(self, timeout: Timeout = None, *, result_type: type[T]) -> T: ...

    async def result(self, timeout: Timeout = None, *, result_type: Any = None) -> Any:
        """Wait for the invocation to end and return its decoded value.

        ``timeout`` (seconds or a timedelta; ``None`` waits as long as it takes) bounds the
        wait: :class:`~durable.errors.ResultTimeoutError` is raised when it passes first,
        and the invocation keeps running. A terminal failure raises
        :class:`~durable.errors.InvocationFailedError`, a cancellation
        :class:`~durable.errors.InvocationCancelledError`. ``result_type`` decodes the
        result as that type: a protobuf message class, a dataclass, ``list[Order]``, ...
        """
        if not self.done:
            response = await self._client.await_result(self.id, _seconds(timeout))
            self._status = response.status
            self._outcome = response.result
        assert self._outcome is not None
        return _unwrap(self.id, self._status, self._outcome, result_type)

    async def get(self, *, skip_journal: bool = False) -> Invocation:
        """Fetch the invocation with its journal (see :meth:`Client.get`)."""
        invocation = await self._client.get(self.id, skip_journal=skip_journal)
        self._status = invocation.raw.status
        return invocation

    async def pause(self, reason: str = "") -> InvocationSummary:
        """Pause the invocation at its next step (see :meth:`Client.pause`)."""
        return self._seen(await self._client.pause(self.id, reason))

    async def resume(self) -> InvocationSummary:
        """Resume the paused invocation (see :meth:`Client.resume`)."""
        return self._seen(await self._client.resume(self.id))

    async def cancel(self, reason: str = "") -> InvocationSummary:
        """Cancel the invocation (see :meth:`Client.cancel`)."""
        return self._seen(await self._client.cancel(self.id, reason))

    def _seen(self, summary: InvocationSummary) -> InvocationSummary:
        self._status = summary.raw.status
        return summary
