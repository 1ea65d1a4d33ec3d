"""One set of JSON rules for every way a JSON value enters (Invoke input as ``json`` or as
``data`` with ``application/json``, awakeable and promise resolutions, SetObjectState, and a
handler's outputs, step results and state values), and a way out that never alters a value
nor fails on one. A value that breaks a rule is refused before anything is stored, with the
path of the bad value in the message."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest

from durable import Context, Service, TerminalError, VirtualObject, Workflow
from durable._codec import from_payload, to_payload
from durable.testing import LocalEngine, start_engine
from durable.v1 import control_pb2, control_pb2_grpc, types_pb2
from durable_server.natsd import EmbeddedNats
from tests.engine_support import settled, wait_for_handlers, wait_status

S = types_pb2
C = control_pb2
Code = grpc.StatusCode
Stub = control_pb2_grpc.DurableControlStub
JSON = "application/json"

jsonedge = Service("jsonedge")


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


BAD_VALUES: dict[str, Callable[[], Any]] = {
    "huge-int": lambda: {"n": 2**70},
    "nan": lambda: [1.0, math.nan],
    "infinity": lambda: math.inf,
    "too-deep": lambda: _nested(33),
    "self-containing": lambda: (lambda x: (x.append(x), x)[1])([]),
}


@jsonedge.handler()
async def echo(ctx: Context, value: Any) -> Any:
    return value


@jsonedge.handler()
async def emit(ctx: Context, what: str) -> Any:
    return BAD_VALUES[what]()


@jsonedge.handler()
async def step(ctx: Context, what: str) -> str:
    try:
        await ctx.run("bad", BAD_VALUES[what])
    except TerminalError as err:
        return f"step refused: {err.message}"
    return "stored"


@jsonedge.handler()
async def park(ctx: Context) -> Any:
    _, answer = ctx.awakeable()
    return await answer


jbox = VirtualObject("jbox")


@jbox.handler()
async def put(ctx: Context, what: str) -> None:
    ctx.set("v", BAD_VALUES[what]())


jflow = Workflow("jflow")


@jflow.main()
async def run(ctx: Context) -> Any:
    return await ctx.promise("p")


SERVICES = [jsonedge, jbox, jflow]


@pytest.fixture(scope="module")
async def engine(nats_server: EmbeddedNats) -> AsyncIterator[LocalEngine]:
    async with start_engine(SERVICES, nats_url=nats_server.url) as eng:
        await wait_for_handlers(eng, SERVICES)
        yield eng


@pytest.fixture(scope="module")
async def stub(engine: LocalEngine) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(engine.target) as channel:
        yield control_pb2_grpc.DurableControlStub(channel)


@pytest.fixture(scope="module")
async def waiting(engine: LocalEngine) -> str:
    """A suspended invocation with an awakeable, a workflow 'w1' awaiting its promise, and
    the state of jbox/k: what refused resolutions and edits must leave alone."""
    handle = await engine.client.start("jsonedge/park", None)
    await wait_status(engine, handle.id, S.INVOCATION_STATUS_SUSPENDED)
    run = await engine.client.start("jflow/run", None, key="w1")
    await wait_status(engine, run.id, S.INVOCATION_STATUS_SUSPENDED)
    await engine.client.set_state("jbox", "k", {"v": "before"})
    return handle.id


async def _stored(stub: Stub, waiting: str) -> Any:
    listed = await stub.ListWorkflows(C.ListWorkflowsRequest(page_size=1000), timeout=5)
    view = await stub.GetWorkflow(C.GetWorkflowRequest(invocation_id=waiting), timeout=5)
    state = await stub.GetObjectState(C.GetObjectStateRequest(object="jbox", key="k"))
    return [s.SerializeToString() for s in listed.invocations], view, state


async def refused(stub: Stub, waiting: str, call: Callable[[], Awaitable[Any]]) -> str:
    await settled(stub, [waiting])
    before = await _stored(stub, waiting)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call()
    assert info.value.code() == Code.INVALID_ARGUMENT, (info.value.code(), info.value.details())
    assert await _stored(stub, waiting) == before, "a refused request changed stored state"
    return info.value.details() or ""


BAD_JSON_TEXT = {
    "1000-digit integer": (b'{"n": ' + b"7" * 1000 + b"}", ["value.n", "1000 digits", "string"]),
    "2**64": (b"[18446744073709551616]", ["value[0]", "64-bit", "string"]),
    "-2**63-1": (b"[-9223372036854775809]", ["value[0]", "64-bit"]),
    "NaN": (b'{"x": NaN}', ["value.x", "NaN"]),
    "Infinity": (b"[Infinity]", ["value[0]", "Infinity"]),
    "1e999": (b'{"items": [{}, {}, {}, {"qty": 1e999}]}', ["value.items[3].qty", "finite"]),
    "33 levels": (json.dumps(_nested(33)).encode(), ["32 levels"]),
    "unpaired surrogate": (b'["\\ud800"]', ["value[0]", "surrogate"]),
    "not JSON": (b"{nope", ["not JSON"]),
}


def _entries(stub: Stub, waiting: str, payload: S.Payload) -> dict[str, Callable[[], Any]]:
    awakeable = "awk_" + waiting[4:] + "_0"
    return {
        "Invoke": lambda: stub.Invoke(C.InvokeRequest(handler="jsonedge/echo", input=payload)),
        "ResolveAwakeable": lambda: stub.ResolveAwakeable(
            C.ResolveAwakeableRequest(awakeable_id=awakeable, value=payload)
        ),
        "ResolvePromise": lambda: stub.ResolvePromise(
            C.ResolvePromiseRequest(handler="jflow/run", key="w1", promise="p", value=payload)
        ),
        "SetObjectState": lambda: stub.SetObjectState(
            C.SetObjectStateRequest(
                object="jbox", key="k", set=[S.StateEntry(name="v", value=payload)]
            )
        ),
    }


@pytest.mark.parametrize("case", list(BAD_JSON_TEXT))
async def test_json_bytes_that_break_a_rule_are_refused_on_every_path(
    stub: Stub, waiting: str, case: str
) -> None:
    """The data path used to accept these: a 1000-digit integer then made its invocation
    retry forever, and SetObjectState answered INTERNAL after writing the state."""
    text, fragments = BAD_JSON_TEXT[case]
    payload = S.Payload(data=text, content_type=JSON)
    for rpc, call in _entries(stub, waiting, payload).items():
        details = await refused(stub, waiting, call)
        for fragment in fragments:
            expected = fragment.replace("value", _ROOTS[rpc], 1)
            assert expected in details, (rpc, details)


_ROOTS = {
    "Invoke": "input",
    "ResolveAwakeable": "value",
    "ResolvePromise": "value",
    "SetObjectState": "state 'v'",
}


async def test_a_value_json_payload_that_breaks_a_rule_is_refused(stub: Stub, waiting: str) -> None:
    """As google.protobuf.Value: NaN (which a Value holds in binary) and 33 levels (of
    lists: 33 levels of objects are more than the request itself can carry)."""
    nan = S.Payload(json=to_payload([1]).json)
    nan.json.list_value.values.add().number_value = math.nan
    lists: Any = 1
    for _ in range(33):
        lists = [lists]
    deep = to_payload(lists)
    for payload, fragment in ((nan, "[1]: nan is not a finite number"), (deep, "32 levels")):
        for rpc, call in _entries(stub, waiting, payload).items():
            details = await refused(stub, waiting, call)
            assert fragment in details, (rpc, details)


@pytest.mark.parametrize("number", [2**64 - 1, -(2**63), 2**53 + 1])
async def test_integers_within_64_bits_come_back_exactly(
    engine: LocalEngine, stub: Stub, number: int
) -> None:
    """Beyond 2**53 a Value would round them, so the API answers with the JSON bytes."""
    text = b'{"n":%d}' % number
    response = await stub.Invoke(
        C.InvokeRequest(
            handler="jsonedge/echo", input=S.Payload(data=text, content_type=JSON), wait=True
        ),
        timeout=10,
    )
    assert response.result.value.WhichOneof("value") == "data"
    assert response.result.value.content_type == JSON
    assert json.loads(response.result.value.data) == {"n": number}
    view = await stub.GetWorkflow(C.GetWorkflowRequest(invocation_id=response.invocation_id))
    assert view.invocation.input.data == text
    assert json.loads(view.invocation.result.value.data) == {"n": number}
    assert from_payload(view.invocation.result.value) == {"n": number}
    assert await engine.client.result(response.invocation_id) == {"n": number}


async def test_32_levels_are_accepted_and_read_back_everywhere(
    engine: LocalEngine, stub: Stub
) -> None:
    value = _nested(32)
    handle = await engine.client.invoke("jsonedge/echo", value, wait=True)
    assert await handle.result() == value
    view = await stub.GetWorkflow(C.GetWorkflowRequest(invocation_id=handle.id))
    assert from_payload(view.invocation.input) == value
    events = [e async for e in stub.WatchWorkflow(C.WatchWorkflowRequest(invocation_id=handle.id))]
    assert from_payload(events[-1].invocation.result.value) == value


@pytest.mark.parametrize("what", list(BAD_VALUES))
async def test_a_handler_output_that_breaks_a_rule_fails_it(
    engine: LocalEngine, stub: Stub, what: str
) -> None:
    """It used to be journaled, and GetWorkflow then answered INTERNAL."""
    handle = await engine.client.start("jsonedge/emit", what)
    view = await wait_status(engine, handle.id, S.INVOCATION_STATUS_FAILED)
    failure = view.failure
    assert failure.error_type == "TerminalError"
    assert "the output of jsonedge/emit cannot be stored as JSON" in failure.message
    events = [e async for e in stub.WatchWorkflow(C.WatchWorkflowRequest(invocation_id=handle.id))]
    assert events[-1].invocation.status == S.INVOCATION_STATUS_FAILED


@pytest.mark.parametrize("what", ["huge-int", "nan", "too-deep"])
async def test_a_step_result_that_breaks_a_rule_fails_the_step(
    engine: LocalEngine, what: str
) -> None:
    message = await engine.client.execute("jsonedge/step", what, timeout=10)
    assert message.startswith("step refused: the result of step 'bad' cannot be stored as JSON")


async def test_a_state_value_that_breaks_a_rule_fails_the_handler(engine: LocalEngine) -> None:
    await engine.client.set_state("jbox", "k2", {"v": "kept"})
    handle = await engine.client.start("jbox/put", "huge-int", key="k2")
    view = await wait_status(engine, handle.id, S.INVOCATION_STATUS_FAILED)
    assert "state 'v' cannot be stored as JSON" in view.failure.message
    assert await engine.client.get_state("jbox", "k2") == {"v": "kept"}


@pytest.mark.parametrize(
    "stored",
    [
        b"NaN",
        b"[1, 2",
        b"1" + b"0" * 5000,
        json.dumps(_nested(40)).encode(),
        b'["\\ud800"]',
        b"\xff\xfe",
        b"9007199254740993",
    ],
    ids=["NaN", "truncated", "5001-digits", "40-levels", "surrogate", "not-utf8", "2**53+1"],
)
def test_stored_json_a_value_cannot_carry_is_read_as_bytes(stored: bytes) -> None:
    """Anything stored as JSON by an older version reads back unchanged, never failing."""
    from durable_server.control.validation import stored_to_payload

    payload = stored_to_payload(stored, JSON)
    assert payload.WhichOneof("value") == "data"
    assert payload.data == stored and payload.content_type == JSON


def test_stored_json_a_value_carries_is_read_as_a_value() -> None:
    from durable_server.control.validation import stored_to_payload

    payload = stored_to_payload(b'{"a":[1,2.5,"x",null,true]}', JSON)
    assert from_payload(payload) == {"a": [1, 2.5, "x", None, True]}
    assert from_payload(stored_to_payload(b"", JSON)) is None
