"""The gRPC edge under hostile input: every field a client controls is refused precisely
(INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED) with a short message, never INTERNAL or
UNKNOWN, and nothing stored changes. Raw bodies go through a real channel unserialized, so
what is asserted is what a client of any language sees on the wire."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st

from durable import Context, Service, TerminalError, VirtualObject, Workflow
from durable._codec import to_payload
from durable.errors import InvocationFailedError
from durable.testing import LocalEngine, start_engine
from durable.v1 import control_pb2, control_pb2_grpc, types_pb2
from durable_server.natsd import EmbeddedNats
from tests.engine_support import (
    EngineFactory,
    settled,
    start_ready,
    wait_for_handlers,
    wait_status,
)

S = types_pb2
C = control_pb2
Code = grpc.StatusCode
Stub = control_pb2_grpc.DurableControlStub

edge = Service("edge")


@edge.handler()
async def echo(ctx: Context, value: Any) -> Any:
    return value


@edge.handler()
async def park(ctx: Context) -> str:
    """Waits for its awakeable (step 0), so tests have something that does not end."""
    _, answer = ctx.awakeable(str)
    return str(await answer)


@dataclasses.dataclass
class Order:
    sku: str
    qty: int


@edge.handler()
async def order(ctx: Context, order: Order) -> int:
    return order.qty


@edge.handler()
async def call_box(ctx: Context, key: str) -> str:
    try:
        await ctx.call("box/put", 1, key=key)
    except TerminalError as err:
        return err.message
    return "called"


box = VirtualObject("box")


@box.handler()
async def put(ctx: Context, value: Any) -> None:
    ctx.set("v", value)


@box.handler()
async def name_state(ctx: Context, name: str) -> None:
    ctx.set(name, 1)


flow = Workflow("flow")


@flow.main()
async def run(ctx: Context) -> str:
    return str(await ctx.promise("p", str))


@flow.handler()
async def peek_named(ctx: Context, name: str) -> Any:
    return await ctx.promise(name).peek()


SERVICES = [edge, box, flow]
UNKNOWN_ID = "inv_" + "a" * 26


@pytest.fixture(scope="module")
async def engine(nats_server: EmbeddedNats) -> AsyncIterator[LocalEngine]:
    async with start_engine(SERVICES, nats_url=nats_server.url) as eng:
        await wait_for_handlers(eng, SERVICES)
        yield eng


@pytest.fixture(scope="module")
async def channel(engine: LocalEngine) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(engine.target) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.aio.Channel) -> Stub:
    return control_pb2_grpc.DurableControlStub(channel)


@pytest.fixture(scope="module")
async def parked(engine: LocalEngine) -> str:
    """A suspended invocation (waiting for its awakeable) and the workflow 'w1' waiting for
    its promise; refused requests must leave both as they are."""
    handle = await engine.client.start("edge/park", None)
    await wait_status(engine, handle.id, S.INVOCATION_STATUS_SUSPENDED)
    run = await engine.client.start("flow/run", None, key="w1")
    await wait_status(engine, run.id, S.INVOCATION_STATUS_SUSPENDED)
    await engine.client.set_state("box", "k", {"v": 1})
    return handle.id


async def _stored(stub: Stub, parked: str) -> Any:
    listed = await stub.ListWorkflows(C.ListWorkflowsRequest(page_size=1000), timeout=5)
    view = await stub.GetWorkflow(C.GetWorkflowRequest(invocation_id=parked), timeout=5)
    state = await stub.GetObjectState(C.GetObjectStateRequest(object="box", key="k"), timeout=5)
    return [s.SerializeToString() for s in listed.invocations], view, state


async def refused(
    stub: Stub, parked: str, code: grpc.StatusCode, call: Callable[[], Awaitable[Any]]
) -> str:
    """``call`` fails with ``code`` and a short message, and nothing stored changed."""
    await settled(stub, [parked])
    before = await _stored(stub, parked)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call()
    assert info.value.code() == code, f"{info.value.code()}: {info.value.details()}"
    assert await _stored(stub, parked) == before, "a refused request changed stored state"
    details = info.value.details() or ""
    assert details and len(details) < 1100, details
    return details


# -- 2. characters of keys and names; idempotent ids ------------------------------------


def _invoke(**fields: Any) -> C.InvokeRequest:
    return C.InvokeRequest(input=to_payload(1), **fields)


CONTROL_CHARACTERS: dict[str, Callable[[Stub, str], Awaitable[Any]]] = {
    "Invoke key": lambda s, t: s.Invoke(_invoke(handler="box/put", key=t), timeout=5),
    "Invoke idempotency_key": lambda s, t: s.Invoke(
        _invoke(handler="edge/echo", idempotency_key=t), timeout=5
    ),
    "Invoke workflow id": lambda s, t: s.Invoke(_invoke(handler="flow/run", key=t), timeout=5),
    "ResolvePromise promise": lambda s, t: s.ResolvePromise(
        C.ResolvePromiseRequest(handler="flow/run", key="w1", promise=t), timeout=5
    ),
    "RejectPromise key": lambda s, t: s.RejectPromise(
        C.RejectPromiseRequest(handler="flow/run", key=t, promise="p", reason="no"), timeout=5
    ),
    "SetObjectState entry name": lambda s, t: s.SetObjectState(
        C.SetObjectStateRequest(
            object="box", key="k", set=[S.StateEntry(name=t, value=to_payload(2))]
        ),
        timeout=5,
    ),
    "SetObjectState name to clear": lambda s, t: s.SetObjectState(
        C.SetObjectStateRequest(object="box", key="k", clear=[t]), timeout=5
    ),
    "SetObjectState key": lambda s, t: s.SetObjectState(
        C.SetObjectStateRequest(object="box", key=t, clear_all=True), timeout=5
    ),
    "GetObjectState key": lambda s, t: s.GetObjectState(
        C.GetObjectStateRequest(object="box", key=t), timeout=5
    ),
    "ListWorkflows key": lambda s, t: s.ListWorkflows(C.ListWorkflowsRequest(key=t), timeout=5),
}


@pytest.mark.parametrize("text", ["u\x00v", "line\n", "tab\there", "\x7f", "\x85"])
@pytest.mark.parametrize("field", list(CONTROL_CHARACTERS))
async def test_control_characters_in_keys_and_names_are_invalid(
    stub: Stub, parked: str, field: str, text: str
) -> None:
    details = await refused(
        stub, parked, Code.INVALID_ARGUMENT, lambda: CONTROL_CHARACTERS[field](stub, text)
    )
    assert "control character" in details, details


async def test_the_colliding_idempotency_pair_is_invalid(stub: Stub, parked: str) -> None:
    """sha256 of NUL-joined fields: (key 'u\\0v', idempotency key 'w') and (key 'u',
    idempotency key 'v\\0w') used to be one id, so the second caller got the first's
    invocation and its own work never ran. Both are refused now."""
    for key, idem in (("u\x00v", "w"), ("u", "v\x00w")):
        request = _invoke(handler="box/put", key=key, idempotency_key=idem)
        details = await refused(
            stub, parked, Code.INVALID_ARGUMENT, lambda r=request: stub.Invoke(r, timeout=5)
        )
        assert "U+0000" in details


_VALID_TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=12)


@given(
    a=st.tuples(_VALID_TEXT, _VALID_TEXT, _VALID_TEXT),
    b=st.tuples(_VALID_TEXT, _VALID_TEXT, _VALID_TEXT),
)
def test_distinct_valid_triples_encode_distinctly(
    a: tuple[str, str, str], b: tuple[str, str, str]
) -> None:
    from durable._store.ids import _encode_fields

    if a != b:
        assert _encode_fields(*a) != _encode_fields(*b)
    else:
        assert _encode_fields(*a) == _encode_fields(*b)


@given(st.tuples(_VALID_TEXT, _VALID_TEXT, _VALID_TEXT))
def test_near_collisions_of_valid_triples_encode_distinctly(triple: tuple[str, str, str]) -> None:
    """Shifting text across a separator (the collision's shape) gives another encoding."""
    from durable._store.ids import _encode_fields

    handler, key, idem = triple
    shifted = (handler, key + "x", idem[1:]) if idem else (handler, key, "x")
    assert _encode_fields(*triple) != _encode_fields(*shifted)


def test_id_fields_holding_nul_are_refused_as_a_last_guard() -> None:
    from durable._store import ids

    with pytest.raises(ValueError, match="NUL"):
        ids._encode_fields("h", "u\x00v", "w")
    # Ids stored by earlier versions keep resolving: these are what they computed.
    assert ids._encode_fields("orders/checkout", "k", "i") == b"orders/checkout\x00k\x00i"
    assert ids.idempotent_invocation_id("a/b", "k", "i") == "inv_e4wjbndqynn7sq7rajenghhbim"
    assert ids.workflow_run_id("signup", "a@b.c") == "inv_42p7jwhdpsvw75xv2w7l6pqcsu"
    assert ids.child_invocation_id("inv_" + "a" * 26, 3) == "inv_mcuvnhdhkt723ws2mtonehphjd"


async def test_handlers_cannot_use_control_characters_either(engine: LocalEngine) -> None:
    """What the API refuses, a handler cannot create: a key it calls with, a state entry
    name, a promise name (ResolvePromise could never name it)."""
    message = await engine.client.execute("edge/call_box", "a\x00b", timeout=10)
    assert "the key of a call to box/put holds the control character U+0000" in message
    with pytest.raises(InvocationFailedError, match=re.escape(r"state entry name 'x\ny' holds")):
        await engine.client.execute("box/name_state", "x\ny", key="k3", timeout=10)
    with pytest.raises(InvocationFailedError, match=re.escape(r"promise name 'p\x00' holds")):
        await engine.client.execute("flow/peek_named", "p\x00", key="w9", timeout=10)


@pytest.mark.parametrize("name", ["svc\n", "a\x00b", "x\ny"])
def test_service_and_handler_names_must_be_whole_names(name: str) -> None:
    """A registered name cannot hold NUL or a newline ('$' used to accept a final one)."""
    with pytest.raises(ValueError, match="must start with a letter"):
        Service(name)
    svc = Service("fine")

    async def h(ctx: Context) -> None:
        return None

    with pytest.raises(ValueError, match="must start with a letter"):
        svc.handler(name=name)(h)


# -- 6. inputs that used to reach INTERNAL ------------------------------------------------


async def test_json_nested_a_thousand_deep_is_invalid(stub: Stub, parked: str) -> None:
    deep = b"[" * 1000 + b"]" * 1000
    payload = S.Payload(data=deep, content_type="application/json")
    details = await refused(
        stub,
        parked,
        Code.INVALID_ARGUMENT,
        lambda: stub.Invoke(C.InvokeRequest(handler="edge/echo", input=payload), timeout=5),
    )
    assert "32 levels" in details


BAD_DURATIONS = [
    Duration(seconds=2**62),
    Duration(seconds=-(2**62)),
    Duration(seconds=1, nanos=-1),
    Duration(seconds=-1, nanos=1),
    Duration(nanos=2_000_000_000),
]


@pytest.mark.parametrize("duration", BAD_DURATIONS, ids=lambda d: f"{d.seconds}s{d.nanos}n")
async def test_durations_protobuf_calls_invalid_are_invalid(
    stub: Stub, parked: str, duration: Duration
) -> None:
    invoke = C.InvokeRequest(
        handler="edge/echo", input=to_payload(1), wait=True, wait_timeout=duration
    )
    details = await refused(
        stub, parked, Code.INVALID_ARGUMENT, lambda: stub.Invoke(invoke, timeout=5)
    )
    assert "wait_timeout" in details and "not a valid duration" in details
    wait = C.AwaitResultRequest(invocation_id=parked, timeout=duration)
    details = await refused(
        stub, parked, Code.INVALID_ARGUMENT, lambda: stub.AwaitResult(wait, timeout=5)
    )
    assert "timeout" in details and "not a valid duration" in details


def _id_rpcs(stub: Stub, value: str) -> dict[str, Callable[[], Awaitable[Any]]]:
    async def watch() -> None:
        async for _ in stub.WatchWorkflow(C.WatchWorkflowRequest(invocation_id=value), timeout=5):
            pass

    return {
        "GetWorkflow": lambda: stub.GetWorkflow(C.GetWorkflowRequest(invocation_id=value)),
        "AwaitResult": lambda: stub.AwaitResult(C.AwaitResultRequest(invocation_id=value)),
        "Pause": lambda: stub.Pause(C.PauseRequest(invocation_id=value)),
        "Resume": lambda: stub.Resume(C.ResumeRequest(invocation_id=value)),
        "Cancel": lambda: stub.Cancel(C.CancelRequest(invocation_id=value)),
        "Kill": lambda: stub.Kill(C.KillRequest(invocation_id=value)),
        "Purge": lambda: stub.Purge(C.PurgeRequest(invocation_id=value)),
        "WatchWorkflow": watch,
    }


async def test_ids_ending_in_a_newline_are_invalid(stub: Stub, parked: str) -> None:
    """Regexes with '$' matched before a final newline; the id then reached NATS."""
    for rpc, call in _id_rpcs(stub, parked + "\n").items():
        details = await refused(stub, parked, Code.INVALID_ARGUMENT, call)
        assert "malformed" in details, (rpc, details)
    awakeable = "awk_" + parked[4:] + "_0\n"
    for call in (
        lambda: stub.ResolveAwakeable(C.ResolveAwakeableRequest(awakeable_id=awakeable)),
        lambda: stub.RejectAwakeable(C.RejectAwakeableRequest(awakeable_id=awakeable, reason="no")),
    ):
        details = await refused(stub, parked, Code.INVALID_ARGUMENT, call)
        assert "not an awakeable id" in details


def _reason_rpcs(stub: Stub, parked: str, reason: str) -> dict[str, Callable[[], Any]]:
    awakeable = "awk_" + parked[4:] + "_0"
    return {
        "Pause": lambda: stub.Pause(C.PauseRequest(invocation_id=parked, reason=reason)),
        "Cancel": lambda: stub.Cancel(C.CancelRequest(invocation_id=parked, reason=reason)),
        "Kill": lambda: stub.Kill(C.KillRequest(invocation_id=parked, reason=reason)),
        "RejectAwakeable": lambda: stub.RejectAwakeable(
            C.RejectAwakeableRequest(awakeable_id=awakeable, reason=reason)
        ),
        "RejectPromise": lambda: stub.RejectPromise(
            C.RejectPromiseRequest(handler="flow/run", key="w1", promise="p", reason=reason)
        ),
    }


@pytest.mark.parametrize("size", [4097, 2_500_000])
async def test_reasons_over_the_limit_are_invalid(stub: Stub, parked: str, size: int) -> None:
    """A 1.5 MiB rejection reason used to make its handler fail with "output too large",
    and one over the stream's message size answered INTERNAL."""
    for rpc, call in _reason_rpcs(stub, parked, "r" * size).items():
        details = await refused(stub, parked, Code.INVALID_ARGUMENT, call)
        assert f"{size} bytes" in details and "4096" in details, (rpc, details)


async def test_a_reason_at_the_limit_is_accepted(engine: LocalEngine, stub: Stub) -> None:
    handle = await engine.client.start("edge/park", None)
    await wait_status(engine, handle.id, S.INVOCATION_STATUS_SUSPENDED)
    reason = "é" * 2048  # 4096 bytes
    await stub.RejectAwakeable(
        C.RejectAwakeableRequest(awakeable_id="awk_" + handle.id[4:] + "_0", reason=reason)
    )
    view = await wait_status(engine, handle.id, S.INVOCATION_STATUS_FAILED)
    assert view.failure.message == reason


@pytest.mark.parametrize(
    "token",
    [
        base64.urlsafe_b64encode(b"[" * 5000 + b"]" * 5000).decode(),
        "A" * 20_000,
        base64.urlsafe_b64encode(b'{"c": 1e999, "i": "x", "f": "y"}').decode(),
    ],
    ids=["deeply-nested", "huge", "infinite-cursor"],
)
async def test_hostile_page_tokens_are_invalid(stub: Stub, parked: str, token: str) -> None:
    details = await refused(
        stub,
        parked,
        Code.INVALID_ARGUMENT,
        lambda: stub.ListWorkflows(C.ListWorkflowsRequest(page_token=token), timeout=5),
    )
    assert "page_token" in details


async def test_an_unknown_id_conflict_policy_is_invalid(stub: Stub, parked: str) -> None:
    request = C.InvokeRequest(handler="flow/run", key="w2", id_conflict_policy=99)  # type: ignore[arg-type]
    details = await refused(stub, parked, Code.INVALID_ARGUMENT, lambda: stub.Invoke(request))
    assert "id_conflict_policy" in details and "ID_CONFLICT_POLICY_FAIL" in details


async def test_a_huge_content_type_is_invalid(stub: Stub, parked: str) -> None:
    payload = S.Payload(data=b"x", content_type="application/" + "x" * 20_000)
    request = C.InvokeRequest(handler="edge/echo", input=payload)
    details = await refused(stub, parked, Code.INVALID_ARGUMENT, lambda: stub.Invoke(request))
    assert "content_type" in details and "256" in details


async def test_an_empty_object_name_is_invalid(stub: Stub, parked: str) -> None:
    request = C.GetObjectStateRequest(object="", key="k")
    details = await refused(
        stub, parked, Code.INVALID_ARGUMENT, lambda: stub.GetObjectState(request)
    )
    assert "object is required" in details


# -- 7. bodies that do not parse; the server's own failures --------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, body: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(body)) + body


def _nested_list_value(depth: int) -> bytes:
    """A google.protobuf.Value holding ``depth`` nested lists, encoded by hand (protobuf's
    own encoder would refuse to parse it back)."""
    value = b"\x11" + b"\x00" * 7 + b"\x40"  # number_value 2.0
    for _ in range(depth):
        value = _field(6, _field(1, value))  # Value.list_value { values: [value] }
    return value


def _invoke_body(value: bytes) -> bytes:
    return _field(1, b"edge/echo") + _field(3, _field(1, value))


async def _raw(channel: grpc.aio.Channel, method: str, body: bytes, stream: bool) -> None:
    if stream:
        async for _ in channel.unary_stream(method)(body, timeout=5):
            pass
    else:
        await channel.unary_unary(method)(body, timeout=5)


MALFORMED = {
    "Invoke garbage": ("/durable.v1.DurableControl/Invoke", b"\xff\xff\xff", False),
    "Invoke truncated": ("/durable.v1.DurableControl/Invoke", _invoke_body(b"")[:-1], False),
    "Invoke Value 60 deep": (
        "/durable.v1.DurableControl/Invoke",
        _invoke_body(_nested_list_value(60)),
        False,
    ),
    "WatchWorkflow garbage": ("/durable.v1.DurableControl/WatchWorkflow", b"\x0a\xff", True),
    "Health Check garbage": ("/grpc.health.v1.Health/Check", b"\xff\xff", False),
    "Health Watch garbage": ("/grpc.health.v1.Health/Watch", b"\xff\xff", True),
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_bodies_that_do_not_parse_are_invalid(
    channel: grpc.aio.Channel, stub: Stub, parked: str, case: str
) -> None:
    method, body, stream = MALFORMED[case]
    details = await refused(
        stub, parked, Code.INVALID_ARGUMENT, lambda: _raw(channel, method, body, stream)
    )
    assert "the request body is not a valid" in details
    assert "class" not in details and "DecodeError" not in details


async def test_a_reflection_request_that_does_not_parse_is_invalid(
    channel: grpc.aio.Channel,
) -> None:
    """Request streams served by an async generator (reflection) are covered too."""
    method = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"

    async def requests() -> AsyncIterator[bytes]:
        yield b"\xff\xff\xff"

    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in channel.stream_stream(method)(requests(), timeout=5):
            pass
    assert info.value.code() == Code.INVALID_ARGUMENT
    assert info.value.details() == (
        "the request body is not a valid grpc.reflection.v1alpha.ServerReflectionRequest"
    )


async def test_a_value_nested_deeper_than_32_but_parseable_is_invalid(
    channel: grpc.aio.Channel, stub: Stub, parked: str
) -> None:
    body = _invoke_body(_nested_list_value(40))
    details = await refused(
        stub,
        parked,
        Code.INVALID_ARGUMENT,
        lambda: _raw(channel, "/durable.v1.DurableControl/Invoke", body, False),
    )
    assert "input[0]" in details and "32 levels" in details


async def test_server_bugs_are_internal_with_an_error_id_and_no_internals(
    engine: LocalEngine,
    stub: Stub,
    parked: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failure of the server itself (simulated: the journal read raises) is INTERNAL
    "internal error <id>", for unary and streaming RPCs alike, and the log names the id."""
    plane = engine.control.plane
    assert plane is not None

    async def broken(invocation_id: str) -> Any:
        raise RuntimeError("secret internals of <object at 0x7f>")

    monkeypatch.setattr(plane.invocations, "load_journal", broken)

    async def watch() -> None:
        async for _ in stub.WatchWorkflow(C.WatchWorkflowRequest(invocation_id=parked)):
            pass

    for call in (lambda: stub.GetWorkflow(C.GetWorkflowRequest(invocation_id=parked)), watch):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call()
        assert info.value.code() == Code.INTERNAL, info.value.details()
        details = info.value.details() or ""
        assert details.startswith("internal error ") and details.endswith("see the server log")
        for internal in ("RuntimeError", "secret", "0x7f", "Traceback", "<class"):
            assert internal not in details
        error_id = details.split()[2].rstrip(";")
        assert error_id in caplog.text


# -- 8. messages quote client input short --------------------------------------------------


LONG = "x" * 20_000


async def test_a_20kb_handler_name_gets_not_found_with_a_short_message(
    stub: Stub, parked: str
) -> None:
    """The whole name used to come back in grpc-message, and grpc-core clients then saw
    "received metadata size exceeds hard limit" instead of NOT_FOUND."""
    request = C.InvokeRequest(handler=LONG, input=to_payload(1))
    details = await refused(stub, parked, Code.NOT_FOUND, lambda: stub.Invoke(request))
    assert "(20000 characters)" in details and "edge/echo" in details


LONG_INPUTS: dict[str, tuple[grpc.StatusCode, Callable[[Stub], Awaitable[Any]]]] = {
    "invocation_id": (
        Code.INVALID_ARGUMENT,
        lambda s: s.GetWorkflow(C.GetWorkflowRequest(invocation_id=LONG)),
    ),
    "awakeable_id": (
        Code.INVALID_ARGUMENT,
        lambda s: s.ResolveAwakeable(C.ResolveAwakeableRequest(awakeable_id=LONG)),
    ),
    "key of a service handler": (
        Code.INVALID_ARGUMENT,
        lambda s: s.Invoke(C.InvokeRequest(handler="edge/echo", key=LONG)),
    ),
    "object": (
        Code.NOT_FOUND,
        lambda s: s.GetObjectState(C.GetObjectStateRequest(object=LONG, key="k")),
    ),
    "promise handler": (
        Code.NOT_FOUND,
        lambda s: s.ResolvePromise(C.ResolvePromiseRequest(handler=LONG, key="k", promise="p")),
    ),
    "unknown field of an input": (
        Code.INVALID_ARGUMENT,
        lambda s: s.Invoke(
            C.InvokeRequest(handler="edge/order", input=to_payload({"sku": "a", "qty": 1, LONG: 1}))
        ),
    ),
}


@pytest.mark.parametrize("field", list(LONG_INPUTS))
async def test_long_inputs_are_quoted_short(stub: Stub, parked: str, field: str) -> None:
    code, call = LONG_INPUTS[field]
    details = await refused(stub, parked, code, lambda: call(stub))
    assert LONG not in details


# -- 9. logs ------------------------------------------------------------------------------


async def test_client_mistakes_log_no_tracebacks(
    channel: grpc.aio.Channel, stub: Stub, parked: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for _ in range(20):
        for method, body, stream in MALFORMED.values():
            with pytest.raises(grpc.aio.AioRpcError):
                await _raw(channel, method, body, stream)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.GetWorkflow(C.GetWorkflowRequest(invocation_id=UNKNOWN_ID))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Invoke(C.InvokeRequest(handler="nope/nope"))
    assert not [r for r in caplog.records if r.exc_info], "a client's mistake logged a traceback"
    assert "Traceback" not in caplog.text


def test_internal_errors_log_each_id_once_and_rate_limit_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from durable_server.control.errors import InternalErrors

    now = [1000.0]
    errors = InternalErrors(tracebacks_per_minute=3, clock=lambda: now[0])
    caplog.set_level(logging.ERROR, logger="durable.control")

    def fail(n: int) -> str:
        try:
            raise RuntimeError(f"bug {n}")
        except RuntimeError as err:
            return errors.report("GetWorkflow", err)

    ids = [fail(n) for n in range(10)]
    assert len(set(ids)) == 10
    for error_id in ids:
        assert sum(error_id in r.getMessage() for r in caplog.records) == 1
    assert sum(1 for r in caplog.records if r.exc_info) == 3
    caplog.clear()
    now[0] += 61
    fail(10)
    assert "7 internal errors in the last minute were logged without a traceback" in caplog.text
    assert sum(1 for r in caplog.records if r.exc_info) == 1


# -- 10. waiters and the longest wait -----------------------------------------------------


async def _until(condition: Callable[[], bool]) -> None:
    """Wait for an event the server shows only in memory (no RPC reports it)."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the server never got there")


async def test_waiters_beyond_max_waiters_are_resource_exhausted(
    engine_factory: EngineFactory,
) -> None:
    engine = await start_ready(engine_factory, SERVICES, max_waiters=2)
    handle = await engine.client.start("edge/park", None)
    await wait_status(engine, handle.id, S.INVOCATION_STATUS_SUSPENDED)
    async with grpc.aio.insecure_channel(engine.target) as channel:
        stub = control_pb2_grpc.DurableControlStub(channel)
        wait = C.AwaitResultRequest(invocation_id=handle.id, timeout=Duration(seconds=60))
        held = [asyncio.ensure_future(stub.AwaitResult(wait)) for _ in range(2)]
        servicer = engine.control.servicer
        assert servicer is not None
        await _until(lambda: servicer.waiting == 2)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.AwaitResult(wait)
        assert info.value.code() == Code.RESOURCE_EXHAUSTED
        assert "--max-waiters 2" in (info.value.details() or "")
        listed = await stub.ListWorkflows(C.ListWorkflowsRequest())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Invoke(C.InvokeRequest(handler="edge/echo", input=to_payload(1), wait=True))
        assert info.value.code() == Code.RESOURCE_EXHAUSTED
        assert await stub.ListWorkflows(C.ListWorkflowsRequest()) == listed, "it was stored"
        # Polling holds nothing, so it always works.
        poll = C.AwaitResultRequest(invocation_id=handle.id, timeout=Duration())
        assert not (await stub.AwaitResult(poll)).done
        await engine.client.resolve_awakeable("awk_" + handle.id[4:] + "_0", "go")
        assert [(await r).done for r in held] == [True, True]
        assert (await stub.AwaitResult(wait)).done


async def test_no_single_wait_outlasts_max_wait(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, SERVICES, max_wait=0.3)
    handle = await engine.client.start("edge/park", None)
    await wait_status(engine, handle.id, S.INVOCATION_STATUS_SUSPENDED)
    async with grpc.aio.insecure_channel(engine.target) as channel:
        stub = control_pb2_grpc.DurableControlStub(channel)
        # No timeout and a long deadline: the server answers "not done yet" after max_wait.
        response = await stub.AwaitResult(C.AwaitResultRequest(invocation_id=handle.id), timeout=60)
        assert not response.done and response.status == S.INVOCATION_STATUS_SUSPENDED
        invoke = C.InvokeRequest(
            handler="edge/park", wait=True, wait_timeout=Duration(seconds=3600)
        )
        response = await stub.Invoke(invoke, timeout=60)
        assert response.invocation_id and not response.HasField("result")
    # The SDK asks again until the result is there.
    waiting = asyncio.ensure_future(engine.client.result(handle.id))
    await engine.client.resolve_awakeable("awk_" + handle.id[4:] + "_0", "done")
    assert await waiting == "done"


# -- 11. health ---------------------------------------------------------------------------


async def test_health_list_answers_what_reflection_advertises(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    listed = await health.List(health_pb2.HealthListRequest(), timeout=5)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert listed.statuses[""].status == serving
    assert listed.statuses["durable.v1.DurableControl"].status == serving
    check = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert check.status == serving


# -- 12. NATS URLs with credentials -------------------------------------------------------


@pytest.mark.slow
async def test_a_failed_connect_does_not_print_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import socket

    from durable._store.config import EngineConfig
    from durable._worker.runtime import connect_nats

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = EngineConfig(nats_url=f"nats://user:S3cretPW@127.0.0.1:{port}")
    with pytest.raises(ConnectionError) as info:
        await connect_nats(cfg, "pytest", wait=1.0)
    assert "S3cretPW" not in str(info.value)
    assert f"nats://user:***@127.0.0.1:{port}" in str(info.value)
    assert "S3cretPW" not in caplog.text
    assert "S3cretPW" not in repr(cfg)


def test_redact_url_hides_passwords_and_tokens() -> None:
    from durable._store.config import redact_url

    assert redact_url("nats://a:pw@h:1,nats://tok@h:2,nats://h:3") == (
        "nats://a:***@h:1,nats://***@h:2,nats://h:3"
    )
