"""What a gRPC status's ``google.rpc.Status`` details say, beyond its code and message: the
``ErrorInfo`` reason and metadata and the ``RetryInfo`` delay. Read by type URL into
wire-compatible copies of google.rpc's messages (proto/durable/internal/v1/rpc_status.proto),
so nothing here needs the googleapis package. Shared by the DurableControl client's errors
and the errors of gRPC services called over NATS.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from durable.internal.v1.rpc_status_pb2 import RpcErrorInfo, RpcRetryInfo, RpcStatus

#: The trailer that carries a serialized ``google.rpc.Status``.
DETAILS_KEY = "grpc-status-details-bin"
_ERROR_INFO = "google.rpc.ErrorInfo"
_RETRY_INFO = "google.rpc.RetryInfo"


@dataclass(frozen=True)
class StatusDetails:
    """The reason, metadata and retry delay a status's details carry (empty when none)."""

    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    retry_delay: float | None = None


def read_details(value: bytes) -> StatusDetails:
    """The details in a serialized ``google.rpc.Status``; empty when it does not parse."""
    reason, metadata, delay = "", {}, None
    try:
        status = RpcStatus.FromString(value)
        for detail in status.details:
            kind = detail.type_url.rpartition("/")[2]
            if kind == _ERROR_INFO:
                info = RpcErrorInfo.FromString(detail.value)
                reason, metadata = info.reason, dict(info.metadata)
            elif kind == _RETRY_INFO:
                retry = RpcRetryInfo.FromString(detail.value)
                delay = float(retry.retry_delay.ToTimedelta().total_seconds())
    except DecodeError:
        return StatusDetails()
    return StatusDetails(reason, metadata, delay)
