"""Durable execution on NATS JetStream: write handlers as ``async def`` functions taking a
``ctx``; every step through ``ctx`` is journaled, so a crash or restart resumes where it
stopped without running a completed step again.

The public surface is exactly ``__all__``; everything else lives in ``_private`` modules.
"""

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
from durable._rpc import NatsChannel, NatsServer
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
    ResourceExhaustedError,
    ResultTimeoutError,
    RPCError,
    RpcStatusError,
    TerminalError,
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
    "InvalidArgumentError",
    "InvocationCancelledError",
    "InvocationFailedError",
    "InvocationHandle",
    "NatsChannel",
    "NatsServer",
    "NotFoundError",
    "ObjectContext",
    "ObjectSharedContext",
    "RPCError",
    "ResourceExhaustedError",
    "ResultTimeoutError",
    "RetryPolicy",
    "RpcStatusError",
    "Service",
    "TerminalError",
    "UnavailableError",
    "VirtualObject",
    "Workflow",
    "WorkflowContext",
    "WorkflowSharedContext",
]
