"""OpenTelemetry tracing: one invocation is one trace, from the caller's span through the
control plane's Invoke, every attempt (across a suspension), each step it ran, a
``ctx.call`` callee and a gRPC call over NATS; a journaled step replayed after a crash is
not emitted again.

Spans of the test process go to an in-memory exporter; a worker process writes its spans to
a file as each ends (tests/telemetry_handlers.py), which is all that survives its SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from durable import Client
from durable._store.ids import idempotent_invocation_id
from durable_server.natsd import EmbeddedNats
from examples.grpc_services import HelloServicer
from examples.v1 import hello_pb2_grpc
from tests.procs import ProcGroup, free_port, wait_healthy
from tests.telemetry_handlers import KILL_FILE_ENV, SPAN_FILE_ENV, span_json, tele

_EXPORTER = InMemorySpanExporter()


class _WhileActive(SimpleSpanProcessor):
    """Keeps spans only while this module's tests run: the provider is process-wide and
    cannot be removed, and the rest of the suite should not fill memory with spans."""

    active = False

    def on_end(self, span: ReadableSpan) -> None:
        if self.active:
            super().on_end(span)


_PROCESSOR = _WhileActive(_EXPORTER)


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """The test process's spans (the provider is global, so it is installed once)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(_PROCESSOR)
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    _PROCESSOR.active = True
    yield _EXPORTER
    _PROCESSOR.active = False
    _EXPORTER.clear()


def named(found: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [s for s in found if s["name"] == name]


def check_invocation_trace(
    found: list[dict[str, Any]], root: dict[str, Any], *, killed_after_first: bool = False
) -> None:
    """The shape every run of ``tele/traced`` must have, whatever process ran it.
    ``killed_after_first``: the attempt that ran ``first`` was killed, so its span never
    ended and was never exported; only ``first``'s own span, ended before, names it."""
    assert {s["trace_id"] for s in found} == {root["trace_id"]}, "more than one trace"
    attempts = named(found, "attempt tele/traced")
    assert len(attempts) >= 2, "the sleep suspends it: a second attempt wakes it"
    invokes = named(found, "durable.v1.DurableControl/Invoke")
    if invokes:  # the control plane's spans are there when it runs in this process
        [invoke] = invokes
        assert invoke["parent_id"] == root["span_id"]  # the caller's traceparent continued
        assert all(a["parent_id"] == invoke["span_id"] for a in attempts)
    else:
        assert len({a["parent_id"] for a in attempts}) == 1 and attempts[0]["parent_id"]
    attempt_ids = {a["span_id"] for a in attempts}
    # Each step once, although later attempts replay them.
    for step in ("step first", "step second", "sleep", "call tele/ok"):
        [one] = named(found, step)
        if step == "step first" and killed_after_first:
            assert one["parent_id"] not in attempt_ids
            continue
        assert one["parent_id"] in attempt_ids, step
    [rpc_step] = [s for s in found if s["name"].startswith("step rpc /examples.v1.HelloService")]
    assert rpc_step["parent_id"] in attempt_ids
    # The callee's attempt is a child of the call step; its steps are its children.
    [call] = named(found, "call tele/ok")
    [callee] = named(found, "attempt tele/ok")
    assert callee["parent_id"] == call["span_id"]
    assert {s["parent_id"] for s in found if s["name"] in ("step one", "step two")} == {
        callee["span_id"]
    }
    # The gRPC call over NATS: the service's SERVER span is a child of the step's.
    [served] = named(found, "examples.v1.HelloService/SayHello")
    assert served["parent_id"] == rpc_step["span_id"]
    assert served["kind"] == "SpanKind.SERVER"


async def test_one_invocation_is_one_trace(
    spans: InMemorySpanExporter, engine_factory: Any
) -> None:
    engine = await engine_factory(
        [tele], servicers=[(hello_pb2_grpc.add_HelloServiceServicer_to_server, HelloServicer())]
    )
    tracer = trace.get_tracer("test")
    spans.clear()
    with tracer.start_as_current_span("caller") as root:
        async with Client(engine.target) as client:
            handle = await client.start("tele/traced", 1)
        root_id = root.get_span_context()
    assert await engine.client.result(handle.id, timeout=30) > 0
    await _until_ended(spans, "attempt tele/traced", "examples.v1.HelloService/SayHello")
    found = [span_json(s) for s in spans.get_finished_spans()]
    ours = [s for s in found if s["trace_id"] == f"{root_id.trace_id:032x}"]
    root_json = next(s for s in ours if s["name"] == "caller")
    check_invocation_trace([s for s in ours if s is not root_json], root_json)
    attempt = named(ours, "attempt tele/traced")[0]
    assert attempt["attributes"]["durable.invocation_id"] == handle.id
    [invoke] = named(ours, "durable.v1.DurableControl/Invoke")
    assert invoke["attributes"]["durable.invocation_id"] == handle.id


async def _until_ended(spans: InMemorySpanExporter, *names: str) -> None:
    """Spans end as the work ends, just after the result is visible: wait for them."""
    deadline = time.monotonic() + 10
    while not all(any(s.name == n for s in spans.get_finished_spans()) for n in names) or not any(
        s.name == "attempt tele/traced"
        and s.attributes is not None
        and s.attributes.get("durable.outcome") == "COMPLETED"
        for s in spans.get_finished_spans()
    ):
        assert time.monotonic() < deadline, [s.name for s in spans.get_finished_spans()]
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_a_worker_killed_mid_invocation_emits_no_step_twice(
    spans: InMemorySpanExporter, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """The worker kills itself (SIGKILL) in step ``second``, after ``first`` was journaled;
    another worker takes over. ``first`` is replayed, not run: one span. ``second`` never
    finished in the killed worker, so its one span is the second worker's."""
    span_file = tmp_path / "spans.jsonl"
    kill_file = tmp_path / "kill"
    group = ProcGroup(
        tmp_path / "logs",
        nats_server.url,
        f"t{uuid.uuid4().hex[:8]}",
        ack_wait=2.0,
        ledger=tmp_path / "ledger",
        module="tests.telemetry_handlers",
    )
    group.env[SPAN_FILE_ENV] = str(span_file)
    group.env[KILL_FILE_ENV] = str(kill_file)
    port = free_port()
    tracer = trace.get_tracer("test")
    try:
        server = group.server(port).start()
        await wait_healthy(f"127.0.0.1:{port}", proc=server)
        first = group.worker("first").start()
        await first.wait_for_log("serving")
        spans.clear()
        async with Client(f"127.0.0.1:{port}") as client:
            # Its id follows from the idempotency key, so the kill is armed before it runs.
            inv = idempotent_invocation_id("tele/traced", "", "kill-once")
            kill_file.write_text(f"{inv}:1")
            with tracer.start_as_current_span("caller") as root:
                handle = await client.start("tele/traced", 2, idempotency_key="kill-once")
            assert handle.id == inv
            deadline = time.monotonic() + 20
            while first.running:
                assert time.monotonic() < deadline, f"the worker never died:\n{first.tail()}"
                await asyncio.sleep(0.05)
            group.worker("second").start()
            assert await client.result(handle.id, timeout=60) > 0
        deadline = time.monotonic() + 10
        while True:
            found = [json.loads(line) for line in span_file.read_text().splitlines()]
            if any(s["name"] == "examples.v1.HelloService/SayHello" for s in found) and any(
                s["name"] == "attempt tele/traced"
                and s["attributes"].get("durable.outcome") == "COMPLETED"
                for s in found
            ):
                break
            assert time.monotonic() < deadline, [s["name"] for s in found]
            await asyncio.sleep(0.05)
        found += [span_json(s) for s in spans.get_finished_spans()]
        ours = [s for s in found if s["trace_id"] == f"{root.get_span_context().trace_id:032x}"]
        root_json = next(s for s in ours if s["name"] == "caller")
        check_invocation_trace(
            [s for s in ours if s is not root_json], root_json, killed_after_first=True
        )
    finally:
        group.close()
