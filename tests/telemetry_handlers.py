"""Handlers for the metrics and tracing tests (tests/test_metrics.py, tests/test_tracing.py).

Every failure is deterministic, so the tests know exactly how many retries, attempts and
steps the engine must count.
"""

from __future__ import annotations

import os

from durable import Context, RetryPolicy, Service, TerminalError

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
    """Two steps, a sleep, a call to another handler, and a gRPC call over NATS."""
    from examples.v1 import hello_pb2, hello_pb2_grpc

    a = await ctx.run("first", _maybe_die, ctx.invocation_id, 0)
    b = await ctx.run("second", _maybe_die, ctx.invocation_id, 1)
    await ctx.sleep(0.2)
    called = await ctx.call(ok, n)
    reply = await ctx.stub(hello_pb2_grpc.HelloServiceStub).SayHello(
        hello_pb2.HelloRequest(name="trace")
    )
    return a + b + called + len(reply.greeting)
