"""When the client sends a call again by itself: UNAVAILABLE on a call that is safe to repeat.

UNAVAILABLE means the engine could not answer now (a JetStream leader election, a control
plane restarting, a connection being made), not that the request was wrong. A call that is
safe to send twice (a read, a steering call whose effect does not add up, an Invoke with an
idempotency key) is sent again after the delay the server's ``google.rpc.RetryInfo`` asks
for, or a backoff from 0.1 s to 2 s, until the client's retry budget or the call's own
timeout runs out. Calls whose repetition a caller would notice (an Invoke without an
idempotency key: a second invocation; a resolve: ALREADY_EXISTS) are never repeated.
"""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio

from durable._status_details import DETAILS_KEY, StatusDetails, read_details
from durable.errors import RPCError

#: Longest pause between two sends, whatever the server suggests.
MAX_PAUSE = 2.0
FIRST_PAUSE = 0.1


def status_details(err: grpc.aio.AioRpcError) -> StatusDetails:
    """The ``google.rpc.ErrorInfo`` and ``RetryInfo`` details of ``err``, if it has any."""
    pairs: Any = err.trailing_metadata() or ()  # grpc-stubs types the pairs as opaque
    for key, value in pairs:
        if key == DETAILS_KEY and isinstance(value, bytes):
            return read_details(value)
    return StatusDetails()


def rpc_error(err: grpc.aio.AioRpcError) -> RPCError:
    """The SDK's exception for a failed call: its status code's subclass, with the reason,
    metadata and retry delay the server sent."""
    found = status_details(err)
    return RPCError.from_status(
        err.code(),
        err.details() or "",
        reason=found.reason,
        metadata=found.metadata,
        retry_delay=found.retry_delay,
    )


def retry_delay(err: grpc.aio.AioRpcError) -> float | None:
    """The delay a ``google.rpc.RetryInfo`` detail of ``err`` asks for, if any."""
    return status_details(err).retry_delay


def next_pause(err: grpc.aio.AioRpcError, previous: float) -> float:
    """How long to wait before sending again: the server's suggestion, else a backoff."""
    asked = retry_delay(err)
    if asked is not None:
        return min(MAX_PAUSE, max(0.0, asked))
    return min(MAX_PAUSE, previous * 2 if previous else FIRST_PAUSE)
