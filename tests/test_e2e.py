"""End to end through real gRPC and a real nats-server: multi-step handlers invoked from the
Python client and from `buf curl` (server reflection only), the journal as GetWorkflow shows
it, deterministic values across a replay, terminal failures, retry policies (per step and per
handler), and protobuf, bytes and dataclass payloads."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import json
import os
import shutil
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from durable import (
    Context,
    InvocationFailedError,
    RetryPolicy,
    Service,
    TerminalError,
)
from durable._codec import from_payload
from durable.testing import start_engine
from durable.v1 import types_pb2
from durable_server.natsd import EmbeddedNats
from tests.engine_support import EngineFactory, start_ready, wait_status

S = types_pb2

# Per-step execution counts, keyed "<tag>:<step>", and tags whose handler already failed once.
RUNS: collections.Counter[str] = collections.Counter()
FAILED_ONCE: set[str] = set()
MAIN_THREAD = threading.main_thread().ident

FAST_RETRY = RetryPolicy(initial_interval=0.01, maximum_interval=0.05, jitter=0)

e2e = Service("e2e", retry=FAST_RETRY)


def _tag() -> str:
    return uuid.uuid4().hex[:8]


# -- handlers ------------------------------------------------------------------------------


@dataclasses.dataclass
class Item:
    sku: str
    qty: int


@dataclasses.dataclass
class Order:
    tag: str
    items: list[Item]
    amount: float
    note: str = "none"


def _validate(order: Order) -> dict[str, Any]:
    """A sync step: runs in a thread, off the event loop."""
    RUNS[f"{order.tag}:validate"] += 1
    try:
        asyncio.get_running_loop()
        on_loop = True
    except RuntimeError:
        on_loop = False
    return {
        "lines": len(order.items),
        "units": sum(i.qty for i in order.items),
        "on_loop": on_loop,
        "other_thread": threading.get_ident() != MAIN_THREAD,
    }


async def _reserve(order: Order) -> str:
    """An async step: runs on the event loop."""
    RUNS[f"{order.tag}:reserve"] += 1
    asyncio.get_running_loop()
    await asyncio.sleep(0)
    return f"rsv-{order.tag}"


def _charge(tag: str, amount: float) -> str:
    RUNS[f"{tag}:charge"] += 1
    return f"pay-{tag}-{amount:.2f}"


async def _ship(tag: str) -> dict[str, str]:
    RUNS[f"{tag}:ship"] += 1
    return {"carrier": "dhl", "tracking": f"trk-{tag}"}


@e2e.handler()
async def checkout(ctx: Context, order: Order) -> dict[str, Any]:
    """Validates, reserves, charges and ships an order in four steps."""
    validated = await ctx.run("validate", _validate, order)
    reservation = await ctx.run("reserve", _reserve, order)
    payment = await ctx.run("charge", _charge, order.tag, order.amount)
    shipment = await ctx.run("ship", _ship, order.tag)
    return {
        "validated": validated,
        "reservation": reservation,
        "payment": payment,
        "shipment": shipment,
        "input_types": [type(order).__name__, type(order.items[0]).__name__],
        "note": order.note,
    }


@e2e.handler()
async def clocks(ctx: Context, tag: str) -> dict[str, Any]:
    """Reads now/random/uuid, records them in a step, fails once to force a replay."""
    now = await ctx.now()
    first = ctx.random()
    ident = ctx.uuid()
    second = ctx.random()
    values = {"now": now.isoformat(), "random": [first, second], "uuid": str(ident)}
    recorded = await ctx.run("record", lambda: values)
    if tag not in FAILED_ONCE:
        FAILED_ONCE.add(tag)
        raise RuntimeError("transient failure after the steps")
    return {"recorded": recorded, "replayed": values, "attempt": ctx.attempt}


def _count(tag: str, step: str) -> str:
    RUNS[f"{tag}:{step}"] += 1
    return f"{step}-done"


def _refuse(tag: str) -> str:
    RUNS[f"{tag}:refund"] += 1
    raise TerminalError("card expired", code=402)


@e2e.handler()
async def refund(ctx: Context, tag: str) -> str:
    await ctx.run("lookup", _count, tag, "lookup")
    await ctx.run("refund", _refuse, tag)
    await ctx.run("notify", _count, tag, "notify")
    return "refunded"


def _fail_twice(tag: str) -> str:
    RUNS[f"{tag}:fetch"] += 1
    if RUNS[f"{tag}:fetch"] <= 2:
        raise ValueError(f"flake {RUNS[f'{tag}:fetch']}")
    return "fetched"


@e2e.handler()
async def flaky_step(ctx: Context, tag: str) -> dict[str, Any]:
    value = await ctx.run(
        "fetch",
        _fail_twice,
        tag,
        retry=RetryPolicy(initial_interval=0.01, maximum_attempts=5, jitter=0),
    )
    return {"value": value, "attempt": ctx.attempt}


def _always_fail(tag: str) -> str:
    RUNS[f"{tag}:fetch"] += 1
    raise ValueError("upstream down")


@e2e.handler()
async def exhausted_step(ctx: Context, tag: str) -> dict[str, Any]:
    try:
        await ctx.run(
            "fetch",
            _always_fail,
            tag,
            retry=RetryPolicy(initial_interval=0.01, maximum_attempts=3, jitter=0),
        )
        caught: dict[str, Any] = {"caught": None}
    except TerminalError as err:
        caught = {"caught": type(err).__name__, "message": err.message}
    if tag not in FAILED_ONCE:
        FAILED_ONCE.add(tag)
        raise RuntimeError("force a replay")
    after = await ctx.run("after", _count, tag, "after")
    return caught | {"after": after, "attempt": ctx.attempt}


@e2e.handler(
    retry=RetryPolicy(initial_interval=0.3, backoff_coefficient=1.0, maximum_attempts=3, jitter=0)
)
async def always_fails(ctx: Context, tag: str) -> None:
    RUNS[f"{tag}:attempt"] += 1
    raise ValueError(f"broken attempt {ctx.attempt}")


@e2e.handler()
async def later(ctx: Context, ts: Timestamp) -> Timestamp:
    """Takes and returns a protobuf Timestamp; the step's result is a protobuf message too."""

    async def add_minute() -> Timestamp:
        out = Timestamp(seconds=ts.seconds + 60, nanos=ts.nanos)
        return out

    return await ctx.run("add-minute", add_minute)


@e2e.handler()
async def struct_keys(ctx: Context, doc: Struct) -> Struct:
    keys = await ctx.run("keys", lambda: sorted(doc.keys()))
    out = Struct()
    out.update({"keys": keys, "count": len(keys), "input_type": type(doc).__name__})
    return out


@e2e.handler()
async def reverse(ctx: Context, data: bytes) -> bytes:
    assert isinstance(data, bytes)
    return bytes(await ctx.run("reverse", lambda: data[::-1]))


# -- helpers -------------------------------------------------------------------------------


def _order(tag: str) -> dict[str, Any]:
    return {
        "tag": tag,
        "items": [{"sku": "book", "qty": 2}, {"sku": "pen", "qty": 3}],
        "amount": 12.5,
    }


def _expected_receipt(tag: str, note: str = "none") -> dict[str, Any]:
    return {
        "validated": {"lines": 2, "units": 5, "on_loop": False, "other_thread": True},
        "reservation": f"rsv-{tag}",
        "payment": f"pay-{tag}-12.50",
        "shipment": {"carrier": "dhl", "tracking": f"trk-{tag}"},
        "input_types": ["Order", "Item"],
        "note": note,
    }


def _buf() -> str:
    local = Path(sys.executable).parent / "buf"
    found = str(local) if local.exists() else shutil.which("buf")
    assert found, "buf is not installed (pip install buf-bin)"
    return found


async def buf_curl(tmp_path: Path, *args: str) -> str:
    """Run `buf curl` (plaintext HTTP/2, gRPC protocol) without blocking the event loop that
    serves the engine; return its stdout, failing the test on a non-zero exit."""
    env = {**os.environ, "BUF_CACHE_DIR": str(tmp_path / "buf-cache")}
    proc = await asyncio.create_subprocess_exec(
        _buf(),
        "curl",
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, f"buf curl {args} failed: {err.decode()}"
    return out.decode()


# -- tests ---------------------------------------------------------------------------------


async def test_multi_step_workflow_from_python(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, [e2e])
    tag = _tag()
    handle = await engine.client.invoke("e2e/checkout", _order(tag), wait=True, wait_timeout=10)
    assert handle.done and handle.status == S.INVOCATION_STATUS_COMPLETED
    assert await handle.result() == _expected_receipt(tag)
    for step in ("validate", "reserve", "charge", "ship"):
        assert RUNS[f"{tag}:{step}"] == 1, step

    view = await engine.client.get(handle.id)
    inv = view
    assert inv.id == handle.id
    assert inv.handler == "e2e/checkout"
    assert inv.key == "" and inv.idempotency_key == ""
    assert inv.status == S.INVOCATION_STATUS_COMPLETED
    assert inv.input == _order(tag)
    assert inv.failure is None
    assert inv.output == _expected_receipt(tag)
    assert inv.attempt == 1
    assert inv.journal_length == 4
    assert inv.current_step.index == 4
    assert inv.status_reason == ""
    assert inv.last_failure is None and inv.next_attempt_at is None
    assert not inv.pause_requested and not inv.cancel_requested

    for name in ("created_at", "updated_at", "started_at", "ended_at"):
        assert getattr(inv, name) is not None, name
    created, started, ended = (
        inv.raw.created_at.ToNanoseconds(),
        inv.raw.started_at.ToNanoseconds(),
        inv.raw.ended_at.ToNanoseconds(),
    )
    assert created <= started <= ended <= inv.raw.updated_at.ToNanoseconds()
    assert abs(time.time_ns() - created) < 60 * 10**9

    expected_values = [
        _expected_receipt(tag)["validated"],
        f"rsv-{tag}",
        f"pay-{tag}-12.50",
        {"carrier": "dhl", "tracking": f"trk-{tag}"},
    ]
    assert [(e.index, e.kind, e.name, e.attempt) for e in view.journal] == [
        (0, S.STEP_KIND_RUN, "validate", 1),
        (1, S.STEP_KIND_RUN, "reserve", 1),
        (2, S.STEP_KIND_RUN, "charge", 1),
        (3, S.STEP_KIND_RUN, "ship", 1),
    ]
    previous = started
    for entry, value in zip(view.journal, expected_values, strict=True):
        assert json.loads(entry.summary) == value, entry.summary
        assert from_payload(entry.raw.result.value) == value
        recorded = entry.raw.recorded_at.ToNanoseconds()
        assert previous <= recorded <= ended
        previous = recorded

    brief = await engine.client.get(handle.id, skip_journal=True)
    assert list(brief.journal) == []
    assert brief.journal_length == 4
    assert brief.status == S.INVOCATION_STATUS_COMPLETED

    # The same through execute(), and a second invocation is independent of the first.
    tag2 = _tag()
    assert await engine.client.execute("e2e/checkout", _order(tag2), timeout=10) == (
        _expected_receipt(tag2)
    )
    assert RUNS[f"{tag2}:ship"] == 1 and RUNS[f"{tag}:ship"] == 1


async def test_multi_step_workflow_from_buf_curl(
    engine_factory: EngineFactory, tmp_path: Path
) -> None:
    engine = await start_ready(engine_factory, [e2e])
    base = f"http://{engine.target}"

    services = await buf_curl(tmp_path, "--list-services", base)
    assert "durable.v1.DurableControl" in services.split()
    assert "grpc.health.v1.Health" in services.split()

    methods = await buf_curl(tmp_path, "--list-methods", base)
    listed = {m.replace("/", ".") for m in methods.split()}
    for rpc in (
        "Invoke",
        "AwaitResult",
        "GetWorkflow",
        "ListWorkflows",
        "Stats",
        "Pause",
        "Resume",
        "Cancel",
        "ListHandlers",
    ):
        assert f"durable.v1.DurableControl.{rpc}" in listed, methods

    tag = _tag()
    body = {"handler": "e2e/checkout", "input": {"json": _order(tag)}, "wait": True}
    out = json.loads(
        await buf_curl(
            tmp_path,
            "--data",
            json.dumps(body),
            f"{base}/durable.v1.DurableControl/Invoke",
        )
    )
    assert out["status"] == "INVOCATION_STATUS_COMPLETED", out
    assert out["result"]["value"]["json"] == _expected_receipt(tag)
    invocation_id = out["invocationId"]
    assert invocation_id.startswith("inv_")
    assert RUNS[f"{tag}:charge"] == 1

    got = json.loads(
        await buf_curl(
            tmp_path,
            "--data",
            json.dumps({"invocationId": invocation_id}),
            f"{base}/durable.v1.DurableControl/GetWorkflow",
        )
    )
    assert got["invocation"]["status"] == "INVOCATION_STATUS_COMPLETED"
    assert got["invocation"]["input"]["json"] == _order(tag)
    assert [e["name"] for e in got["journal"]] == ["validate", "reserve", "charge", "ship"]
    assert {e["kind"] for e in got["journal"]} == {"STEP_KIND_RUN"}

    handlers = json.loads(
        await buf_curl(tmp_path, "--data", "{}", f"{base}/durable.v1.DurableControl/ListHandlers")
    )
    assert "e2e/checkout" in [h["name"] for h in handlers["handlers"]]

    health = json.loads(
        await buf_curl(
            tmp_path,
            "--data",
            json.dumps({"service": "durable.v1.DurableControl"}),
            f"{base}/grpc.health.v1.Health/Check",
        )
    )
    assert health == {"status": "SERVING"}


async def test_health_service_serving(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, [e2e])
    async with grpc.aio.insecure_channel(engine.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "durable.v1.DurableControl"):
            response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_now_random_uuid_are_the_same_on_replay(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, [e2e])
    tag = _tag()
    before = dt.datetime.now(dt.UTC)
    out = await engine.client.execute("e2e/clocks", tag, timeout=10)
    after = dt.datetime.now(dt.UTC)
    assert out["attempt"] == 2, "the handler should have been retried once from its journal"
    # Values computed again on the replay equal the ones recorded by the first attempt.
    assert out["replayed"] == out["recorded"]
    now = dt.datetime.fromisoformat(out["recorded"]["now"])
    assert now.tzinfo is not None and now.utcoffset() == dt.timedelta(0)
    assert before - dt.timedelta(seconds=1) <= now <= after + dt.timedelta(seconds=1)
    first, second = out["recorded"]["random"]
    assert 0 <= first < 1 and 0 <= second < 1 and first != second
    assert uuid.UUID(out["recorded"]["uuid"]).version == 4

    # now() is journaled (a NOW step), then the run step; both from attempt 1.
    handles = [s async for s in engine.client.list_all(handler="e2e/clocks")]
    assert len(handles) == 1
    view = await engine.client.get(handles[0].id)
    assert [(e.kind, e.name, e.attempt) for e in view.journal] == [
        (S.STEP_KIND_NOW, "now", 1),
        (S.STEP_KIND_RUN, "record", 1),
    ]
    assert view.attempt == 2

    # A different invocation gets different random values (seeded per invocation).
    FAILED_ONCE.add(tag + "-b")
    other = await engine.client.execute("e2e/clocks", tag + "-b", timeout=10)
    assert other["recorded"]["random"] != out["recorded"]["random"]
    assert other["recorded"]["uuid"] != out["recorded"]["uuid"]


async def test_terminal_error_in_a_step_fails_the_invocation(
    engine_factory: EngineFactory,
) -> None:
    engine = await start_ready(engine_factory, [e2e])
    tag = _tag()
    handle = await engine.client.start("e2e/refund", tag)
    with pytest.raises(InvocationFailedError) as info:
        await handle.result(timeout=10)
    err = info.value
    assert err.failure_message == "card expired"
    assert err.code == 402
    assert err.error_type == "TerminalError"
    assert err.invocation_id == handle.id
    assert "card expired" in str(err)

    view = await engine.client.get(handle.id)
    inv = view
    assert inv.status == S.INVOCATION_STATUS_FAILED
    assert inv.attempt == 1, "a TerminalError is not retried"
    assert inv.failure.message == "card expired"
    assert inv.failure.code == 402
    assert inv.ended_at is not None
    assert [(e.name, e.raw.result.WhichOneof("outcome")) for e in view.journal] == [
        ("lookup", "value"),
        ("refund", "failure"),
    ]
    assert view.journal[1].failure.code == 402
    assert "card expired" in view.journal[1].summary
    assert (RUNS[f"{tag}:lookup"], RUNS[f"{tag}:refund"], RUNS[f"{tag}:notify"]) == (1, 1, 0)


async def test_run_retry_policy_retries_in_place(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, [e2e])
    tag = _tag()
    handle = await engine.client.start("e2e/flaky_step", tag)
    assert await handle.result(timeout=10) == {"value": "fetched", "attempt": 1}
    assert RUNS[f"{tag}:fetch"] == 3
    view = await engine.client.get(handle.id)
    assert view.attempt == 1, "the step retried in place, not the invocation"
    assert [(e.name, e.attempt, e.summary) for e in view.journal] == [("fetch", 1, '"fetched"')]


async def test_run_retry_policy_exhausted_journals_a_terminal_failure(
    engine_factory: EngineFactory,
) -> None:
    engine = await start_ready(engine_factory, [e2e])
    tag = _tag()
    handle = await engine.client.start("e2e/exhausted_step", tag)
    out = await handle.result(timeout=10)
    assert out["caught"] == "TerminalError"
    assert "gave up after 3 attempts" in out["message"]
    assert "upstream down" in out["message"]
    assert out["attempt"] == 2 and out["after"] == "after-done"
    # Attempt 2 replayed the failure from the journal: the step body ran 3 times in all.
    assert RUNS[f"{tag}:fetch"] == 3
    assert RUNS[f"{tag}:after"] == 1

    view = await engine.client.get(handle.id)
    fetch, after = view.journal
    assert (fetch.name, fetch.attempt, fetch.raw.result.WhichOneof("outcome")) == (
        "fetch",
        1,
        "failure",
    )
    assert fetch.failure.error_type == "TerminalError"
    assert fetch.failure.message == out["message"]
    assert "gave up after 3 attempts" in fetch.summary
    assert (after.name, after.attempt) == ("after", 2)


async def test_handler_retry_policy_backs_off_then_fails(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, [e2e])
    tag = _tag()
    handle = await engine.client.start("e2e/always_fails", tag)

    backing_off = await wait_status(engine, handle.id, S.INVOCATION_STATUS_BACKING_OFF)
    inv = backing_off
    assert inv.attempt in (1, 2)
    assert inv.last_failure.error_type == "ValueError"
    assert inv.last_failure.message.startswith("broken attempt ")
    assert inv.next_attempt_at is not None
    assert inv.raw.next_attempt_at.ToNanoseconds() > inv.raw.updated_at.ToNanoseconds()
    assert inv.ended_at is None

    with pytest.raises(InvocationFailedError) as info:
        await handle.result(timeout=10)
    assert info.value.error_type == "ValueError"
    assert "gave up after 3 attempts" in info.value.failure_message
    assert "broken attempt 3" in info.value.failure_message
    assert RUNS[f"{tag}:attempt"] == 3

    final = await engine.client.get(handle.id)
    assert final.status == S.INVOCATION_STATUS_FAILED
    assert final.attempt == 3
    assert final.failure is not None and final.failure.error_type == "ValueError"
    assert final.last_failure is None


async def test_protobuf_message_input_and_output(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, [e2e])
    ts = Timestamp(seconds=1_700_000_000, nanos=123_000)
    out = await engine.client.execute("e2e/later", ts, timeout=10, result_type=Timestamp)
    assert isinstance(out, Timestamp)
    assert (out.seconds, out.nanos) == (1_700_000_060, 123_000)

    [summary] = [s async for s in engine.client.list_all(handler="e2e/later")]
    view = await engine.client.get(summary.id)
    inv = view
    ct = "application/x-protobuf; messageType=google.protobuf.Timestamp"
    assert inv.raw.input.content_type == ct
    assert Timestamp.FromString(inv.raw.input.data) == ts
    assert inv.raw.result.value.content_type == ct
    assert Timestamp.FromString(inv.raw.result.value.data) == out
    [step] = view.journal
    assert step.name == "add-minute"
    assert step.raw.result.value.content_type == ct
    assert "google.protobuf.Timestamp" in step.summary

    # A Struct-typed handler takes a Struct message, and JSON read through the protobuf
    # JSON mapping (what grpcurl users send).
    doc = Struct()
    doc.update({"b": 1, "a": "x"})
    result = await engine.client.execute("e2e/struct_keys", doc, timeout=10, result_type=Struct)
    assert dict(result) == {"keys": ["a", "b"], "count": 2.0, "input_type": "Struct"}
    from_json = await engine.client.execute(
        "e2e/struct_keys", {"z": True, "y": None}, timeout=10, result_type=Struct
    )
    assert list(from_json["keys"]) == ["y", "z"]

    infos = {h.name: h for h in await engine.client.handlers()}
    assert infos["e2e/later"].input_message == "google.protobuf.Timestamp"
    assert infos["e2e/struct_keys"].input_message == "google.protobuf.Struct"


async def test_bytes_payloads(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, [e2e])
    data = bytes(range(256)) + b"\x00tail"
    out = await engine.client.execute("e2e/reverse", data, timeout=10)
    assert out == data[::-1]
    [summary] = [s async for s in engine.client.list_all(handler="e2e/reverse")]
    view = await engine.client.get(summary.id)
    assert view.raw.input.data == data
    assert view.raw.input.content_type == "application/octet-stream"
    assert view.raw.result.value.data == data[::-1]
    assert view.journal[0].summary == f"<{len(data)} bytes application/octet-stream>"


async def test_dataclass_input_is_decoded(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, [e2e])
    tag = _tag()
    order = _order(tag) | {"note": "gift wrap"}
    out = await engine.client.execute("e2e/checkout", order, timeout=10)
    assert out == _expected_receipt(tag, note="gift wrap")
    assert out["input_types"] == ["Order", "Item"]
    # JSON numbers travel as doubles; an integral number still decodes into an int field.
    assert out["validated"]["units"] == 5

    info = {h.name: h for h in await engine.client.handlers()}["e2e/checkout"]
    assert info.input_type == "Order"
    schema = json.loads(info.input_schema)
    assert schema["required"] == ["tag", "items", "amount"]
    assert schema["additionalProperties"] is False


async def test_start_engine_yields_once_its_handlers_are_known(nats_server: EmbeddedNats) -> None:
    """`durable.testing.start_engine` is for users' own tests, whose first line is an Invoke:
    when it yields, the control plane must already know the worker's handlers (otherwise
    that Invoke fails NOT_FOUND "no worker has registered yet", now and then)."""
    for _ in range(10):
        async with start_engine([e2e], nats_url=nats_server.url) as engine:
            known = {h.name for h in await engine.client.handlers()}  # from the catalog
            assert "e2e/reverse" in known, "start_engine yielded before its handlers were known"
            assert await engine.client.execute("e2e/reverse", b"ab", timeout=5) == b"ba"
