"""Every refusal names its reason for programs: a ``google.rpc.ErrorInfo`` (domain
``durable.v1``, a ``durable.v1.ErrorReason`` name, that reason's metadata) on the status,
which the Python client turns into ``RPCError.reason`` and ``.metadata`` on the subclass of
its status code. Read here through the SDK and through grpcio-status, as any client would;
the fuzz suite checks that no refusal goes without a reason."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from durable import (
    AlreadyExistsError,
    Context,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    RPCError,
    Service,
    VirtualObject,
)
from durable.v1 import control_pb2, control_pb2_grpc, errors_pb2
from durable_server.control.errors import ERROR_DOMAIN, reason_name
from tests.engine_support import EngineFactory, start_ready

reasons = Service("reasons")
tally = VirtualObject("tally")


@reasons.handler()
async def echo(ctx: Context, text: str) -> str:
    return text


@reasons.handler()
async def nap(ctx: Context, seconds: float) -> None:
    await ctx.sleep(seconds)


@tally.handler()
async def add(ctx: Context, n: int) -> int:
    return n


async def test_refusals_carry_their_reason_and_metadata(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, [reasons, tally])
    client = engine.client

    with pytest.raises(NotFoundError) as nf:
        await client.invoke("reasons/ecoh", "x")
    assert (nf.value.status, nf.value.reason) == ("NOT_FOUND", "HANDLER_NOT_FOUND")
    assert nf.value.metadata == {"handler": "reasons/ecoh", "did_you_mean": "reasons/echo"}

    first = await client.invoke("reasons/echo", "a", idempotency_key="k", wait=True)
    with pytest.raises(AlreadyExistsError) as conflict:
        await client.invoke("reasons/echo", "b", idempotency_key="k")
    assert conflict.value.reason == "IDEMPOTENCY_KEY_CONFLICT"
    assert conflict.value.metadata["invocation_id"] == first.id

    with pytest.raises(FailedPreconditionError) as ended:
        await client.resume(first.id)
    assert ended.value.reason == "INVOCATION_ENDED"
    assert ended.value.metadata == {"invocation_id": first.id, "status": "COMPLETED"}

    napping = await client.invoke("reasons/nap", 3600.0, wait=False)
    with pytest.raises(FailedPreconditionError) as not_paused:
        await client.resume(napping.id)
    assert not_paused.value.reason == "INVOCATION_NOT_PAUSED"
    await client.cancel(napping.id)

    with pytest.raises(InvalidArgumentError) as keyless:
        await client.invoke("tally/add", 1)
    assert (keyless.value.reason, keyless.value.metadata) == (
        "KEY_REQUIRED",
        {"handler": "tally/add"},
    )
    with pytest.raises(InvalidArgumentError) as bad_input:
        await client.invoke("reasons/echo", 12)
    assert bad_input.value.reason == "INPUT_INVALID"

    missing = "inv_" + "a" * 26
    with pytest.raises(NotFoundError) as gone:
        await client.get(missing)
    assert (gone.value.reason, gone.value.metadata) == (
        "INVOCATION_NOT_FOUND",
        {"invocation_id": missing},
    )


async def test_the_details_are_plain_google_rpc_status(engine_factory: EngineFactory) -> None:
    """What a client in another language reads: grpc-status-details-bin holding a
    google.rpc.Status whose details hold the ErrorInfo."""
    engine = await start_ready(engine_factory, [reasons])
    async with grpc.aio.insecure_channel(engine.target) as channel:
        stub = control_pb2_grpc.DurableControlStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetWorkflow(control_pb2.GetWorkflowRequest(invocation_id="inv_bogus"))
    status = rpc_status.from_call(info.value)  # type: ignore[arg-type]
    assert status is not None and status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    error_info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(error_info)
    assert error_info.domain == ERROR_DOMAIN == "durable.v1"
    assert error_info.reason == "INVOCATION_ID_MALFORMED"
    assert error_info.metadata["invocation_id"] == "inv_bogus"


def test_reason_names_are_the_enum_names_without_prefix() -> None:
    names = [reason_name(v) for v in errors_pb2.ErrorReason.values()]
    assert "HANDLER_NOT_FOUND" in names and "UNSPECIFIED" in names
    assert all(n.isupper() and not n.startswith("ERROR_REASON_") for n in names)


def test_rpc_errors_keep_their_reason_through_pickle() -> None:
    import pickle

    err = RPCError.from_status(
        grpc.StatusCode.NOT_FOUND, "gone", reason="INVOCATION_NOT_FOUND", metadata={"a": "b"}
    )
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, NotFoundError)
    assert (again.status, again.reason, again.metadata) == (
        "NOT_FOUND",
        "INVOCATION_NOT_FOUND",
        {"a": "b"},
    )


def test_each_reason_is_answered_with_the_code_its_proto_comment_names() -> None:
    """errors.proto says, first thing in each reason's comment, its status code; the
    servicer's one table (STATUS_OF) must agree, and cover every reason."""
    import re
    from pathlib import Path

    from durable_server.control.errors import STATUS_OF

    proto = (Path(__file__).parent.parent / "proto/durable/v1/errors.proto").read_text()
    documented = {
        name: code
        for code, name in re.findall(
            r"// ([A-Z_]+): [^\n]*(?:\n  // [^\n]*)*\n  (ERROR_REASON_[A-Z_]+) =", proto
        )
    }
    names = errors_pb2.ErrorReason.keys()
    reasons = [n for n in names if n != "ERROR_REASON_UNSPECIFIED"]
    assert sorted(documented) == sorted(reasons)
    for name in reasons:
        assert STATUS_OF[errors_pb2.ErrorReason.Value(name)].name == documented[name], name


def test_a_called_services_error_details_read_as_the_clients_do() -> None:
    """RpcStatusError (a gRPC service over NATS) reads the same google.rpc details as
    RPCError: ErrorInfo's reason and metadata, by the bytes any gRPC server sends."""
    import grpc
    from google.protobuf import any_pb2
    from google.rpc import error_details_pb2, status_pb2

    from durable import RpcStatusError

    info = error_details_pb2.ErrorInfo(reason="CARD_DECLINED", domain="shop", metadata={"k": "v"})
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=9, message="declined", details=[detail])
    err = RpcStatusError(
        grpc.StatusCode.FAILED_PRECONDITION, "declined", status.SerializeToString()
    )
    assert (err.status, err.reason, err.metadata) == (
        "FAILED_PRECONDITION",
        "CARD_DECLINED",
        {"k": "v"},
    )
    assert RpcStatusError(grpc.StatusCode.INTERNAL, "x", b"\xff").reason == ""
