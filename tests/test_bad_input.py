"""Bad requests get a precise gRPC status and a message that names the problem, and change
nothing stored: the list, the stats and an existing invocation (with its journal) are exactly
as before each refused request. Uses the raw generated stub, so the status codes asserted
are the ones on the wire."""

from __future__ import annotations

import base64
import collections
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Value
from google.protobuf.timestamp_pb2 import Timestamp

from durable import Context, Service
from durable._codec import to_payload, to_value
from durable.testing import LocalEngine, start_engine
from durable.v1 import control_pb2, control_pb2_grpc, types_pb2
from durable_server.natsd import EmbeddedNats
from tests.engine_support import settled, wait_for_handlers

S = types_pb2
C = control_pb2
Code = grpc.StatusCode

LIMIT = 64 * 1024
RUNS: collections.Counter[str] = collections.Counter()

bad = Service("bad")


@dataclasses.dataclass
class Order:
    sku: str
    qty: int
    note: str = ""


@bad.handler()
async def order(ctx: Context, order: Order) -> str:
    RUNS["order"] += 1
    return await ctx.run("place", lambda: f"{order.qty}x{order.sku}")


@bad.handler()
async def echo(ctx: Context, text: str) -> str:
    RUNS["echo"] += 1
    return await ctx.run("echo", lambda: text)


@bad.handler()
async def blob(ctx: Context, data: bytes) -> int:
    RUNS["blob"] += 1
    return len(data)


@bad.handler()
async def stamp(ctx: Context, ts: Timestamp) -> str:
    RUNS["stamp"] += 1
    return ts.ToJsonString()


KNOWN = ["bad/blob", "bad/echo", "bad/order", "bad/stamp"]
UNKNOWN_ID = "inv_" + "a" * 26
MALFORMED_IDS = [
    "abc",
    "inv_TOOSHORT",
    "inv_" + "A" * 26,  # upper case
    "inv_" + "a" * 27,  # too long
    "inv_" + "a" * 25 + "1",  # not base32
    "inv_" + "a" * 24 + ".>",  # a NATS wildcard
    "run_" + "a" * 26,
]


@pytest.fixture(scope="module")
async def engine(nats_server: EmbeddedNats) -> AsyncIterator[LocalEngine]:
    async with start_engine([bad], nats_url=nats_server.url, max_payload_bytes=LIMIT) as eng:
        await wait_for_handlers(eng, [bad])
        yield eng


@pytest.fixture(scope="module")
async def stub(engine: LocalEngine) -> AsyncIterator[control_pb2_grpc.DurableControlStub]:
    async with grpc.aio.insecure_channel(engine.target) as channel:
        yield control_pb2_grpc.DurableControlStub(channel)


@pytest.fixture(scope="module")
async def existing(engine: LocalEngine) -> list[str]:
    """Two finished invocations that every refused request must leave alone."""
    first = await engine.client.invoke("bad/order", {"sku": "book", "qty": 2}, wait=True)
    second = await engine.client.invoke("bad/echo", "hello", wait=True)
    assert await first.result(timeout=10) == "2xbook"
    assert await second.result(timeout=10) == "hello"
    return [first.id, second.id]


async def _snapshot(stub: control_pb2_grpc.DurableControlStub, ids: list[str]) -> Any:
    listed = await stub.ListWorkflows(C.ListWorkflowsRequest(page_size=1000), timeout=5)
    stats = await stub.Stats(C.StatsRequest(), timeout=5)
    views = [await stub.GetWorkflow(C.GetWorkflowRequest(invocation_id=i), timeout=5) for i in ids]
    return listed, stats, views, dict(RUNS)


async def refused(
    stub: control_pb2_grpc.DurableControlStub,
    existing: list[str],
    code: grpc.StatusCode,
    call: Callable[[], Awaitable[Any]],
) -> str:
    """Assert ``call`` fails with ``code`` and that nothing stored changed; return details."""
    await settled(stub, existing)
    before = await _snapshot(stub, existing)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call()
    assert info.value.code() == code, f"{info.value.code()}: {info.value.details()}"
    after = await _snapshot(stub, existing)
    assert after == before, "a refused request changed stored state"
    details = info.value.details() or ""
    assert details, "the status carries no message"
    return details


def _invoke(
    stub: control_pb2_grpc.DurableControlStub, **fields: Any
) -> Callable[[], Awaitable[Any]]:
    return lambda: stub.Invoke(C.InvokeRequest(**fields), timeout=5)


def _json(value: Any) -> types_pb2.Payload:
    return types_pb2.Payload(json=to_value(value))


# -- handlers ------------------------------------------------------------------------------


@pytest.mark.parametrize("handler", ["nope/missing", "bad/missing", "bad"])
async def test_unknown_handler_is_not_found_and_lists_the_known_ones(
    stub: Any, existing: list[str], handler: str
) -> None:
    details = await refused(
        stub, existing, Code.NOT_FOUND, _invoke(stub, handler=handler, input=_json("x"))
    )
    assert handler in details
    for known in KNOWN:
        assert known in details, details


@pytest.mark.parametrize(
    ("handler", "meant"),
    [
        ("BAD/ORDER", "bad/order"),  # case
        ("bad/ordr", "bad/order"),  # a typo
        ("order", "bad/order"),  # the method alone
        ("bda/echo", "bad/echo"),  # the service misspelt
    ],
)
async def test_unknown_handler_suggests_the_closest_names(
    stub: Any, existing: list[str], handler: str, meant: str
) -> None:
    details = await refused(
        stub, existing, Code.NOT_FOUND, _invoke(stub, handler=handler, input=_json("x"))
    )
    assert details.startswith(f"handler '{handler}' is not registered; did you mean {meant}")
    assert "bad/blob" not in details  # not the whole list


async def test_empty_handler_is_invalid(stub: Any, existing: list[str]) -> None:
    details = await refused(stub, existing, Code.INVALID_ARGUMENT, _invoke(stub, handler=""))
    assert "handler is required" in details


async def test_key_on_a_service_handler_is_invalid(stub: Any, existing: list[str]) -> None:
    details = await refused(
        stub,
        existing,
        Code.INVALID_ARGUMENT,
        _invoke(stub, handler="bad/echo", key="customer-7", input=_json("x")),
    )
    assert "service handler" in details and "customer-7" in details


async def test_overlong_idempotency_key_is_invalid(stub: Any, existing: list[str]) -> None:
    details = await refused(
        stub,
        existing,
        Code.INVALID_ARGUMENT,
        _invoke(stub, handler="bad/echo", input=_json("x"), idempotency_key="k" * 300),
    )
    assert "idempotency_key" in details and "300" in details


async def test_negative_wait_timeouts_are_invalid(stub: Any, existing: list[str]) -> None:
    details = await refused(
        stub,
        existing,
        Code.INVALID_ARGUMENT,
        _invoke(
            stub,
            handler="bad/echo",
            input=_json("x"),
            wait=True,
            wait_timeout=Duration(seconds=-1),
        ),
    )
    assert "timeout" in details and "negative" in details
    details = await refused(
        stub,
        existing,
        Code.INVALID_ARGUMENT,
        lambda: stub.AwaitResult(
            C.AwaitResultRequest(invocation_id=existing[0], timeout=Duration(seconds=-5)),
            timeout=5,
        ),
    )
    assert "timeout" in details and "negative" in details


# -- invocation ids ------------------------------------------------------------------------

_ID_RPCS: dict[str, Callable[[Any, str], Awaitable[Any]]] = {
    "GetWorkflow": lambda s, i: s.GetWorkflow(C.GetWorkflowRequest(invocation_id=i), timeout=5),
    "AwaitResult": lambda s, i: s.AwaitResult(
        C.AwaitResultRequest(invocation_id=i, timeout=Duration(seconds=1)), timeout=5
    ),
    "Pause": lambda s, i: s.Pause(C.PauseRequest(invocation_id=i), timeout=5),
    "Resume": lambda s, i: s.Resume(C.ResumeRequest(invocation_id=i), timeout=5),
    "Cancel": lambda s, i: s.Cancel(C.CancelRequest(invocation_id=i), timeout=5),
}


@pytest.mark.parametrize("rpc", list(_ID_RPCS))
async def test_malformed_invocation_ids_are_invalid(
    stub: Any, existing: list[str], rpc: str
) -> None:
    for bad_id in MALFORMED_IDS:
        details = await refused(
            stub, existing, Code.INVALID_ARGUMENT, lambda i=bad_id: _ID_RPCS[rpc](stub, i)
        )
        assert repr(bad_id) in details or bad_id in details, details
        assert "malformed" in details and "inv_" in details
    details = await refused(stub, existing, Code.INVALID_ARGUMENT, lambda: _ID_RPCS[rpc](stub, ""))
    assert "invocation_id is required" in details


@pytest.mark.parametrize("rpc", list(_ID_RPCS))
async def test_unknown_invocation_id_is_not_found(stub: Any, existing: list[str], rpc: str) -> None:
    details = await refused(stub, existing, Code.NOT_FOUND, lambda: _ID_RPCS[rpc](stub, UNKNOWN_ID))
    assert UNKNOWN_ID in details


# -- listing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "!!!",
        base64.urlsafe_b64encode(b'{"c": 1}').decode(),
        base64.urlsafe_b64encode(b"[1, 2, 3]").decode(),
        base64.urlsafe_b64encode(b'{"c": "x", "i": "y", "f": "z"}').decode(),
    ],
)
async def test_garbage_page_token_is_invalid(stub: Any, existing: list[str], token: str) -> None:
    details = await refused(
        stub,
        existing,
        Code.INVALID_ARGUMENT,
        lambda: stub.ListWorkflows(C.ListWorkflowsRequest(page_token=token), timeout=5),
    )
    assert "page_token" in details


async def test_page_token_reused_with_other_filters_is_invalid(
    stub: Any, existing: list[str]
) -> None:
    first = await stub.ListWorkflows(C.ListWorkflowsRequest(page_size=1), timeout=5)
    token = first.next_page_token
    assert token, "two invocations exist, so a page of one has a successor"
    # Same filters: fine.
    second = await stub.ListWorkflows(
        C.ListWorkflowsRequest(page_size=1, page_token=token), timeout=5
    )
    assert len(second.invocations) == 1
    assert second.invocations[0].invocation_id != first.invocations[0].invocation_id
    for other in (
        C.ListWorkflowsRequest(page_size=1, page_token=token, handler="bad/order"),
        C.ListWorkflowsRequest(
            page_size=1, page_token=token, statuses=[S.INVOCATION_STATUS_COMPLETED]
        ),
        C.ListWorkflowsRequest(page_size=1, page_token=token, key="k"),
    ):
        details = await refused(
            stub, existing, Code.INVALID_ARGUMENT, lambda r=other: stub.ListWorkflows(r, timeout=5)
        )
        assert "page_token" in details and "filters" in details

    # A token edited by hand (cursor id swapped for junk) is refused too.
    raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw["i"] = "not-an-id"
    forged = base64.urlsafe_b64encode(json.dumps(raw).encode()).decode().rstrip("=")
    await refused(
        stub,
        existing,
        Code.INVALID_ARGUMENT,
        lambda: stub.ListWorkflows(
            C.ListWorkflowsRequest(page_size=1, page_token=forged), timeout=5
        ),
    )


@pytest.mark.parametrize("page_size", [-1, 1001, 5000])
async def test_page_size_out_of_range_is_invalid(
    stub: Any, existing: list[str], page_size: int
) -> None:
    details = await refused(
        stub,
        existing,
        Code.INVALID_ARGUMENT,
        lambda: stub.ListWorkflows(C.ListWorkflowsRequest(page_size=page_size), timeout=5),
    )
    assert "page_size" in details and "1000" in details


async def test_page_size_bounds_are_accepted(stub: Any, existing: list[str]) -> None:
    for size in (1, 1000, 0):
        page = await stub.ListWorkflows(C.ListWorkflowsRequest(page_size=size), timeout=5)
        assert page.total_size >= 2
        assert len(page.invocations) == min(size or 50, page.total_size)


@pytest.mark.parametrize("status", [S.INVOCATION_STATUS_UNSPECIFIED, 99])
async def test_status_filter_that_is_no_status_is_invalid(
    stub: Any, existing: list[str], status: int
) -> None:
    request = C.ListWorkflowsRequest(statuses=[S.INVOCATION_STATUS_COMPLETED])
    request.statuses.append(status)  # type: ignore[arg-type]
    details = await refused(
        stub, existing, Code.INVALID_ARGUMENT, lambda: stub.ListWorkflows(request, timeout=5)
    )
    assert "statuses" in details and str(status) in details


# -- payloads ------------------------------------------------------------------------------


async def test_oversized_json_input_is_resource_exhausted(stub: Any, existing: list[str]) -> None:
    text = "x" * (100 * 1024)
    size = len(json.dumps(text))
    details = await refused(
        stub,
        existing,
        Code.RESOURCE_EXHAUSTED,
        _invoke(stub, handler="bad/echo", input=_json(text)),
    )
    assert f"{size} bytes" in details and f"{LIMIT} bytes" in details, details


async def test_oversized_bytes_input_is_resource_exhausted(stub: Any, existing: list[str]) -> None:
    data = b"\x01" * (100 * 1024)
    details = await refused(
        stub,
        existing,
        Code.RESOURCE_EXHAUSTED,
        _invoke(stub, handler="bad/blob", input=to_payload(data)),
    )
    assert f"{len(data)} bytes" in details and f"{LIMIT} bytes" in details, details


async def test_input_just_under_the_limit_is_accepted(engine: LocalEngine) -> None:
    data = b"\x02" * (LIMIT - 16)
    assert await engine.client.execute("bad/blob", data, timeout=10) == len(data)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a string", ["expected object", "string"]),
        (None, ["expected object", "null"]),
        ([1, 2], ["expected object", "array"]),
        ({"sku": "x"}, ["missing required field", "qty"]),
        ({"sku": "x", "qty": 1, "colour": "red"}, ["unknown field", "colour"]),
        ({"sku": "x", "qty": "two"}, ["input.qty", "expected integer", "string"]),
        ({"sku": "x", "qty": 1.5}, ["input.qty", "expected integer", "number"]),
        ({"sku": 5, "qty": 1}, ["input.sku", "expected string", "integer"]),
        ({"sku": "x", "qty": 1, "note": False}, ["input.note", "expected string", "boolean"]),
    ],
)
async def test_input_not_matching_the_dataclass_is_invalid(
    stub: Any, existing: list[str], value: Any, expected: list[str]
) -> None:
    payload = types_pb2.Payload(json=Value(null_value=0)) if value is None else _json(value)
    details = await refused(
        stub, existing, Code.INVALID_ARGUMENT, _invoke(stub, handler="bad/order", input=payload)
    )
    assert "bad/order" in details
    for fragment in expected:
        assert fragment in details, details


async def test_bytes_for_a_json_handler_are_invalid(stub: Any, existing: list[str]) -> None:
    details = await refused(
        stub,
        existing,
        Code.INVALID_ARGUMENT,
        _invoke(stub, handler="bad/order", input=to_payload(b"\x00\x01")),
    )
    assert "application/octet-stream" in details and "JSON" in details


async def test_json_content_type_with_non_json_bytes_is_invalid(
    stub: Any, existing: list[str]
) -> None:
    payload = types_pb2.Payload(data=b'{"sku": "x", qty: }', content_type="application/json")
    details = await refused(
        stub, existing, Code.INVALID_ARGUMENT, _invoke(stub, handler="bad/order", input=payload)
    )
    assert "application/json" in details and "not JSON" in details


async def test_wrong_protobuf_message_type_is_invalid(stub: Any, existing: list[str]) -> None:
    details = await refused(
        stub,
        existing,
        Code.INVALID_ARGUMENT,
        _invoke(stub, handler="bad/stamp", input=to_payload(Duration(seconds=3))),
    )
    assert "google.protobuf.Timestamp" in details and "google.protobuf.Duration" in details


@pytest.mark.parametrize(
    "payload",
    [
        _json("yesterday"),
        _json({"seconds": "x"}),
        types_pb2.Payload(
            data=b"\xff\xff\xff",
            content_type="application/x-protobuf; messageType=google.protobuf.Timestamp",
        ),
    ],
    ids=["json-not-a-time", "json-wrong-shape", "corrupt-bytes"],
)
async def test_input_not_decoding_as_the_protobuf_message_is_invalid(
    stub: Any, existing: list[str], payload: types_pb2.Payload
) -> None:
    """The handler takes google.protobuf.Timestamp (a type every process knows): input that
    cannot be read as one must be refused at Invoke, not stored and then failed."""
    details = await refused(
        stub, existing, Code.INVALID_ARGUMENT, _invoke(stub, handler="bad/stamp", input=payload)
    )
    assert "google.protobuf.Timestamp" in details


async def test_engine_still_serves_after_bad_input(
    engine: LocalEngine, existing: list[str]
) -> None:
    assert await engine.client.execute("bad/order", {"sku": "pen", "qty": 3}, timeout=10) == (
        "3xpen"
    )
    for invocation_id in existing:
        view = await engine.client.get(invocation_id)
        assert view.status == S.INVOCATION_STATUS_COMPLETED
        assert len(view.journal) == 1
    stamp = Timestamp(seconds=86400)
    assert await engine.client.execute("bad/stamp", stamp, timeout=10) == "1970-01-02T00:00:00Z"
