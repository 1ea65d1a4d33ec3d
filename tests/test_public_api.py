"""The SDK's public surface is pinned: adding or dropping a name is a deliberate change."""

from __future__ import annotations

import asyncio
import pickle
from pathlib import Path

import durable
import durable.errors
import durable.testing
import durable_server
from durable.errors import (
    CancelledError,
    NonDeterminismError,
    SuspendInvocation,
    TerminalError,
)

EXPECTED_ALL = [
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

EXPECTED_ERRORS_ALL = [
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


def test_durable_all_is_pinned() -> None:
    assert durable.__all__ == EXPECTED_ALL
    assert sorted(durable.__all__) == durable.__all__
    for name in durable.__all__:
        assert getattr(durable, name) is not None, name


def test_errors_all_is_pinned() -> None:
    assert durable.errors.__all__ == EXPECTED_ERRORS_ALL
    for name in durable.errors.__all__:
        assert hasattr(durable.errors, name), name
    # What durable re-exports from errors is the very same class.
    for name in set(EXPECTED_ALL) & set(EXPECTED_ERRORS_ALL):
        assert getattr(durable, name) is getattr(durable.errors, name)


def test_testing_exports_engine_helpers() -> None:
    assert sorted(durable.testing.__all__) == ["LocalEngine", "start_engine"]
    assert callable(durable.testing.start_engine)
    assert isinstance(durable.testing.LocalEngine, type)


def test_runtime_signals_are_not_exceptions() -> None:
    for cls in (SuspendInvocation, NonDeterminismError):
        assert issubclass(cls, BaseException)
        assert not issubclass(cls, Exception), f"{cls.__name__} must escape `except Exception`"


def test_handler_errors_are_exceptions() -> None:
    assert issubclass(TerminalError, Exception)
    assert issubclass(CancelledError, Exception)
    assert issubclass(CancelledError, TerminalError)
    assert issubclass(TerminalError, durable.DurableError)
    assert not issubclass(CancelledError, asyncio.CancelledError)


def test_errors_pickle_with_their_attributes() -> None:
    err = pickle.loads(pickle.dumps(TerminalError("no stock", code=409)))
    assert (type(err), err.message, err.code) == (TerminalError, "no stock", 409)
    nd = pickle.loads(
        pickle.dumps(NonDeterminismError("changed", index=2, expected="a", actual="b"))
    )
    assert (nd.message, nd.index, nd.expected, nd.actual) == ("changed", 2, "a", "b")


def test_py_typed_markers_exist() -> None:
    for package in (durable, durable_server):
        assert package.__file__ is not None
        marker = Path(package.__file__).parent / "py.typed"
        assert marker.is_file(), f"{marker} is missing"


def test_the_sdk_enums_are_the_wire_enums() -> None:
    """Each IntEnum of the read types names exactly the proto enum's values."""
    from durable import HandlerKind, InvocationStatus, StepKind, WaitKind, WatchEventKind
    from durable.v1 import control_pb2, types_pb2

    for ours, theirs, prefix in (
        (InvocationStatus, types_pb2.InvocationStatus, "INVOCATION_STATUS_"),
        (StepKind, types_pb2.StepKind, "STEP_KIND_"),
        (WaitKind, types_pb2.WaitKind, "WAIT_KIND_"),
        (HandlerKind, types_pb2.HandlerKind, "HANDLER_KIND_"),
        (WatchEventKind, control_pb2.WatchEventKind, "WATCH_EVENT_KIND_"),
    ):
        wire = {name.removeprefix(prefix): value for name, value in theirs.items()}
        assert {m.name: m.value for m in ours} == wire, ours
