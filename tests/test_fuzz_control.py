"""Property-based fuzzing of every DurableControl RPC through a real gRPC channel against a
real engine (nats-server from the wheel, control plane, worker).

Requests are generated from the protos (``tests.fuzz_messages``): hostile strings, malformed
and extreme payloads on every payload path, random durations, page sizes and tokens, and raw
bodies that are not protobuf at all. Whatever comes in:

* the status is never UNKNOWN or INTERNAL (a client's mistake has a precise status);
* no message is longer than ``MAX_MESSAGE`` or shows Python internals;
* afterwards the engine is healthy, a valid request works, and every invocation and object
  key that exists can still be read.

``make test`` runs the ``ci`` profile (a few hundred requests, seconds); ``make fuzz`` the
``fuzz`` profile (``FUZZ_EXAMPLES`` per RPC, default 2000).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from durable import Context, Service, VirtualObject, Workflow
from durable._retrying import status_details
from durable.testing import LocalEngine, start_engine
from durable.v1 import control_pb2, control_pb2_grpc, errors_pb2, types_pb2
from durable_server.natsd import EmbeddedNats
from tests import fuzz_messages
from tests.engine_support import wait_for_handlers, wait_status

C = control_pb2
S = types_pb2
Code = grpc.StatusCode

#: Longest status message a client may get (the engine cuts at 1 KiB).
MAX_MESSAGE = 1100
_INTERNALS = re.compile(
    r"Traceback|File \"|NoneType|object is not|object has no attribute|"
    r"\b\w+Error\(|\bKeyError\b|\bValueError\b|\bTypeError\b|durable_server\.|site-packages|0x[0-9a-f]{6,}"
)
_SERVICE = descriptor_pool.Default().FindServiceByName("durable.v1.DurableControl")
UNARY = [m for m in _SERVICE.methods if not m.server_streaming]

fz = Service("fz")


@fz.handler()
async def echo(ctx: Context, value: Any) -> Any:
    return value


@fz.handler()
async def hello(ctx: Context, who: types_pb2.Payload) -> str:
    """A handler whose input is a protobuf message."""
    return who.content_type


@fz.handler()
async def park(ctx: Context) -> str:
    _, answer = ctx.awakeable(str)
    return str(await answer)


fzbox = VirtualObject("fzbox")


@fzbox.handler()
async def put(ctx: Context, value: Any) -> None:
    ctx.set("v", value)


fzflow = Workflow("fzflow")


@fzflow.main()
async def run(ctx: Context) -> str:
    return str(await ctx.promise("p", str))


SERVICES = [fz, fzbox, fzflow]


@pytest.fixture(scope="module")
async def engine(nats_server: EmbeddedNats) -> AsyncIterator[LocalEngine]:
    async with start_engine(SERVICES, nats_url=nats_server.url, max_wait=1.0) as eng:
        await wait_for_handlers(eng, SERVICES)
        parked = await eng.client.start("fz/park", None)
        await wait_status(eng, parked.id, S.INVOCATION_STATUS_SUSPENDED)
        flow = await eng.client.start("fzflow/run", None, key="w1")
        await wait_status(eng, flow.id, S.INVOCATION_STATUS_SUSPENDED)
        await eng.client.set_state("fzbox", "k", {"v": 1})
        fuzz_messages.KNOWN[:] = [
            "fz/echo", "fz/hello", "fz/park", "fzbox/put", "fzflow/run", "fzbox", "fzflow",
            "k", "w1", "p", "v", parked.id, flow.id, f"awk_{parked.id}_0", f"awk_{parked.id}_5",
            "application/json",
        ]  # fmt: skip
        yield eng


@pytest.fixture(scope="module")
async def channel(engine: LocalEngine) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(engine.target) as ch:
        yield ch


#: Reasons the engine may send (``durable.v1.ErrorReason`` names without their prefix).
_REASONS = {name.removeprefix("ERROR_REASON_") for name in errors_pb2.ErrorReason.keys()}  # noqa: SIM118


def _check_status(err: grpc.aio.AioRpcError, what: str) -> None:
    code, details = err.code(), err.details() or ""
    assert code not in (Code.UNKNOWN, Code.INTERNAL), f"{what}: {code} {details}"
    assert len(details.encode()) <= MAX_MESSAGE, f"{what}: {len(details)} chars"
    assert not _INTERNALS.search(details), f"{what}: {code} {details!r}"
    if code == Code.RESOURCE_EXHAUSTED and "message larger than max" in details:
        return  # grpc's own refusal of an oversized message, before our code sees it
    # Every refusal of ours names its reason for programs (google.rpc.ErrorInfo).
    found = status_details(err)
    assert found.reason in _REASONS - {"UNSPECIFIED"}, f"{what}: {code} {details!r}: no reason"


async def _call(channel: grpc.aio.Channel, method: Any, request: bytes) -> None:
    """One call with a raw body; a streaming RPC is read until its first message."""
    path = f"/{_SERVICE.full_name}/{method.name}"
    ident = bytes
    try:
        if method.server_streaming:
            call = channel.unary_stream(
                path, request_serializer=ident, response_deserializer=ident
            )(request, timeout=2.0)
            async for _ in call:
                break
            call.cancel()
        else:
            await channel.unary_unary(path, request_serializer=ident, response_deserializer=ident)(
                request, timeout=2.0
            )
    except grpc.aio.AioRpcError as err:
        if err.code() == Code.DEADLINE_EXCEEDED:
            return  # a wait the request asked for; not an answer about its content
        _check_status(err, method.name)


async def _engine_still_sound(engine: LocalEngine, channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    done = await engine.client.invoke("fz/echo", {"ok": 1}, wait=True, wait_timeout=10)
    assert await done.result(timeout=10) == {"ok": 1}
    stub = control_pb2_grpc.DurableControlStub(channel)
    token = ""
    while True:
        page = await stub.ListWorkflows(
            C.ListWorkflowsRequest(page_size=1000, page_token=token), timeout=10
        )
        for s in page.invocations:
            await stub.GetWorkflow(C.GetWorkflowRequest(invocation_id=s.invocation_id), timeout=5)
            if s.key and s.handler.startswith("fzbox/"):
                await stub.GetObjectState(C.GetObjectStateRequest(object="fzbox", key=s.key))
        token = page.next_page_token
        if not token:
            break
    await stub.GetObjectState(C.GetObjectStateRequest(object="fzbox", key="k"), timeout=5)


_FUZZ_SETTINGS = settings(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@pytest.mark.parametrize("method", [m.name for m in _SERVICE.methods])
async def test_generated_requests_get_precise_answers(
    engine: LocalEngine, channel: grpc.aio.Channel, method: str
) -> None:
    desc = _SERVICE.methods_by_name[method]
    loop = asyncio.get_running_loop()
    bodies: list[bytes] = []

    @_FUZZ_SETTINGS
    @given(fuzz_messages.messages(desc.input_type))
    def collect(request: Message) -> None:
        bodies.append(request.SerializeToString())

    collect()  # hypothesis runs synchronously; the calls go out on the test's loop below
    for body in bodies:
        await _call(channel, desc, body)
    assert loop.is_running()
    await _engine_still_sound(engine, channel)


@pytest.mark.parametrize("method", [m.name for m in _SERVICE.methods])
async def test_raw_bodies_that_are_not_the_message_are_refused(
    engine: LocalEngine, channel: grpc.aio.Channel, method: str
) -> None:
    desc = _SERVICE.methods_by_name[method]
    bodies: list[bytes] = []

    @_FUZZ_SETTINGS
    @given(st.binary(max_size=200))
    def collect(body: bytes) -> None:
        bodies.append(body)

    collect()
    for body in bodies:
        await _call(channel, desc, body)
    await _engine_still_sound(engine, channel)


async def test_invoke_of_a_protobuf_handler_without_input_says_what_is_missing(
    channel: grpc.aio.Channel,
) -> None:
    stub = control_pb2_grpc.DurableControlStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Invoke(C.InvokeRequest(handler="fz/hello"), timeout=5)
    assert info.value.code() == Code.INVALID_ARGUMENT
    _check_status(info.value, "Invoke fz/hello without input")
