"""Durable execution on NATS JetStream: write handlers as ``async def`` functions taking a
``ctx``; every step through ``ctx`` is journaled, so a crash or restart resumes where it
stopped without running a completed step again.

The public surface is exactly ``__all__``; everything else lives in ``_private`` modules.
Importing this package loads no NATS code: ``NatsChannel`` and ``NatsServer`` (gRPC over
NATS, which need the ``durable-nats[worker]`` extra) are imported on first use, so a program
that only invokes handlers installs grpcio and protobuf and nothing else.
"""

from typing import TYPE_CHECKING, Any

from durable._client import Client, InvocationHandle
from durable._context import (
    Context,
    DurableFuture,
    DurablePromise,
    ObjectContext,
    ObjectSharedContext,
    WorkflowContext,
    WorkflowSharedContext,
)
from durable._handlers import Service, VirtualObject, Workflow
from durable._retry import RetryPolicy
from durable._views import (
    Failure,
    HandlerInfo,
    HandlerKind,
    HandlerStats,
    Invocation,
    InvocationPage,
    InvocationStatus,
    InvocationSummary,
    JournalEntry,
    ServerInfo,
    ServiceStats,
    Stats,
    StepKind,
    StepRef,
    WaitKind,
    WaitTarget,
    WatchEvent,
    WatchEventKind,
)
from durable.errors import (
    AlreadyExistsError,
    CancelledError,
    ClientError,
    DurableError,
    FailedPreconditionError,
    InvalidArgumentError,
    InvocationCancelledError,
    InvocationFailedError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    ResultTimeoutError,
    RPCError,
    RpcStatusError,
    TerminalError,
    UnauthenticatedError,
    UnavailableError,
)

__all__ = [
    "AlreadyExistsError",
    "CancelledError",
    "Client",
    "ClientError",
    "Context",
    "DurableError",
    "DurableFuture",
    "DurablePromise",
    "FailedPreconditionError",
    "Failure",
    "HandlerInfo",
    "HandlerKind",
    "HandlerStats",
    "InvalidArgumentError",
    "Invocation",
    "InvocationCancelledError",
    "InvocationFailedError",
    "InvocationHandle",
    "InvocationPage",
    "InvocationStatus",
    "InvocationSummary",
    "JournalEntry",
    "NatsChannel",
    "NatsServer",
    "NotFoundError",
    "ObjectContext",
    "ObjectSharedContext",
    "PermissionDeniedError",
    "RPCError",
    "ResourceExhaustedError",
    "ResultTimeoutError",
    "RetryPolicy",
    "RpcStatusError",
    "ServerInfo",
    "Service",
    "ServiceStats",
    "Stats",
    "StepKind",
    "StepRef",
    "TerminalError",
    "UnauthenticatedError",
    "UnavailableError",
    "VirtualObject",
    "WaitKind",
    "WaitTarget",
    "WatchEvent",
    "WatchEventKind",
    "Workflow",
    "WorkflowContext",
    "WorkflowSharedContext",
]

if TYPE_CHECKING:
    from durable._rpc import NatsChannel, NatsServer

_ON_FIRST_USE = {"NatsChannel", "NatsServer"}


def __getattr__(name: str) -> Any:
    if name in _ON_FIRST_USE:
        from durable import _rpc

        return getattr(_rpc, name)
    raise AttributeError(f"module 'durable' has no attribute {name!r}")
