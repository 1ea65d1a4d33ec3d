"""Handlers for the metrics and tracing tests (tests/test_metrics.py, tests/test_tracing.py).

Every failure is deterministic, so the tests know exactly how many retries, attempts and
steps the engine must count.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from durable import Context, RetryPolicy, Service, TerminalError
from examples.grpc_services import HelloServicer
from examples.v1 import hello_pb2, hello_pb2_grpc

tele = Service("tele", retry=RetryPolicy(initial_interval=0.05, maximum_attempts=5))

#: ``tele/flaky``: failed tries so far per invocation, in this worker process.
_tries: dict[str, int] = {}
#: A step of ``tele/traced`` stops this process (SIGKILL from itself) when this file exists
#: and names the invocation: the tracing test's crash.
KILL_FILE_ENV = "DURABLE_TEST_KILL_FILE"


async def _plus(n: int, k: int) -> int:
    return n + k


@tele.handler()
async def ok(ctx: Context, n: int) -> int:
    """Two steps, completes."""
    a = await ctx.run("one", _plus, n, 1)
    return await ctx.run("two", _plus, a, 1)


@tele.handler()
async def doomed(ctx: Context, n: int) -> int:
    """One step, then fails for good."""
    await ctx.run("one", _plus, n, 1)
    raise TerminalError("doomed fails")


@tele.handler()
async def flaky(ctx: Context, fails: int) -> int:
    """One step whose first ``fails`` tries raise (retried in place)."""

    async def body() -> int:
        done = _tries.get(ctx.invocation_id, 0)
        if done < fails:
            _tries[ctx.invocation_id] = done + 1
            raise ValueError(f"try {done + 1} fails")
        return fails

    return await ctx.run(
        "flaky", body, retry=RetryPolicy(initial_interval=0.01, maximum_attempts=10)
    )


@tele.handler()
async def second_time(ctx: Context, n: int) -> int:
    """Its first attempt fails after one step; the second completes."""
    got = await ctx.run("one", _plus, n, 1)
    if ctx.attempt == 1:
        raise RuntimeError("the first attempt fails")
    return got


@tele.handler()
async def sleeper(ctx: Context, seconds: float) -> float:
    """Sleeps (suspended), then completes with one step."""
    await ctx.sleep(seconds)
    return await ctx.run("after", _plus, int(seconds), 0)


def _maybe_die(invocation_id: str, step: int) -> int:
    path = os.environ.get(KILL_FILE_ENV, "")
    if path and os.path.exists(path):
        with open(path) as f:
            if f.read().strip() == f"{invocation_id}:{step}":
                os.remove(path)
                os.kill(os.getpid(), 9)
    return step


@tele.handler()
async def traced(ctx: Context, n: int) -> int:
    """Two steps, a sleep long enough to suspend, a call to another handler, and a gRPC
    call over NATS."""
    a = await ctx.run("first", _maybe_die, ctx.invocation_id, 0)
    b = await ctx.run("second", _maybe_die, ctx.invocation_id, 1)
    await ctx.sleep(1.5)
    called = await ctx.call(ok, n)
    reply = await ctx.stub(hello_pb2_grpc.HelloServiceStub).SayHello(
        hello_pb2.SayHelloRequest(name="trace")
    )
    return a + b + called + len(reply.greeting)


GRPC_SERVICERS = [(hello_pb2_grpc.add_HelloServiceServicer_to_server, HelloServicer())]

#: A worker process started with this variable writes every span it ends to the file it
#: names, one JSON object per line, as it ends (the tracing test's exporter across a kill).
SPAN_FILE_ENV = "DURABLE_TEST_SPAN_FILE"


def _export_spans_to_file(path: str) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class FileExporter(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            with open(path, "a") as f:
                for span in spans:
                    f.write(json.dumps(span_json(span)) + "\n")
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
    trace.set_tracer_provider(provider)


def span_json(span: object) -> dict[str, object]:
    """What the tests look at of a span: name, ids, parent, attributes."""
    ctx = span.context  # type: ignore[attr-defined]
    parent = span.parent  # type: ignore[attr-defined]
    return {
        "name": span.name,  # type: ignore[attr-defined]
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_id": f"{parent.span_id:016x}" if parent is not None else None,
        "kind": str(span.kind),  # type: ignore[attr-defined]
        "attributes": dict(span.attributes or {}),  # type: ignore[attr-defined]
    }


if os.environ.get(SPAN_FILE_ENV):
    _export_spans_to_file(os.environ[SPAN_FILE_ENV])
