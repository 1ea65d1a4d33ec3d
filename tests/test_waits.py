"""Waiting without holding anything: timers, awakeables, calls, sends and their combinators,
with real nats-server, control plane and worker."""

from __future__ import annotations

import asyncio
import collections
import time
from datetime import timedelta

import pytest

from durable import Context, DurableFuture, RetryPolicy, Service, TerminalError
from durable.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    InvocationFailedError,
    NotFoundError,
)
from durable.v1 import control_pb2, types_pb2
from tests.engine_support import EngineFactory, start_ready, until, wait_status

S = types_pb2
C = control_pb2
waits = Service("waits")
RUNS: collections.Counter[str] = collections.Counter()


def _count(tag: str) -> str:
    RUNS[tag] += 1
    return tag


@waits.handler()
async def nap(ctx: Context, seconds: float) -> float:
    started = await ctx.run("start", time.time)
    await ctx.sleep(seconds)
    woke = await ctx.run("woke", time.time)
    return float(woke - started)


@waits.handler()
async def counted_nap(ctx: Context, seconds: float) -> float:
    started = await ctx.run(
        "before", lambda: (_count(f"{ctx.invocation_id}:before"), time.time())[1]
    )
    await ctx.sleep(seconds)
    woke = await ctx.run("after", lambda: (_count(f"{ctx.invocation_id}:after"), time.time())[1])
    return float(woke - started)


@waits.handler()
async def approval(ctx: Context, tag: str) -> str:
    awk_id, decision = ctx.awakeable(str)
    await ctx.run("ask", _count, f"{tag}:{awk_id}")
    try:
        answer = await decision
    except TerminalError as err:
        return f"rejected: {err.message}"
    return f"approved: {answer}"


@waits.handler()
async def two_awakeables(ctx: Context) -> list[str]:
    _, first = ctx.awakeable(str)
    _, second = ctx.awakeable(str)
    b = await second
    a = await first
    return [a, b]


@waits.handler()
async def race(ctx: Context, timeout: float) -> str:
    awk_id, paid = ctx.awakeable(str)
    await ctx.run("publish", lambda: awk_id)
    which, value = await ctx.select(paid, ctx.sleep(timeout))
    return f"paid {value}" if which == 0 else "timed out"


@waits.handler()
async def race_replayed(ctx: Context) -> int:
    _, late = ctx.awakeable(str)
    which, _ = await ctx.select(late, ctx.sleep(0.8))  # waited out in the process
    await ctx.sleep(2.0)  # suspends: the select above is replayed from the journal
    return which


FLAKY: collections.Counter[str] = collections.Counter()


@waits.handler(retry=RetryPolicy(maximum_attempts=2, initial_interval=0.05))
async def sleeps_then_flakes(ctx: Context, tag: str) -> int:
    for _ in range(3):
        await ctx.sleep(1.1)  # each one suspends and is woken: three more attempts

    def flaky() -> int:
        FLAKY[tag] += 1
        if FLAKY[tag] == 1:
            raise RuntimeError("transient")
        return FLAKY[tag]

    return int(await ctx.run("flaky", flaky))


@waits.handler(retry=RetryPolicy(maximum_attempts=2, initial_interval=0.05))
async def calls_nobody(ctx: Context) -> int:
    return int(await ctx.call("nobody/home", 1))


@waits.handler()
async def slow_leaf(ctx: Context, n: int) -> int:
    await ctx.sleep(1.5)
    return n


@waits.handler()
async def calls_slow_leaf(ctx: Context) -> str:
    try:
        return str(await ctx.call(slow_leaf, 7))
    except TerminalError as err:
        return f"failed: {err.message}"


@waits.handler()
async def leaf(ctx: Context, n: int) -> int:
    if n < 0:
        raise TerminalError(f"negative: {n}", code=7)
    return int(await ctx.run("double", lambda: n * 2))


@waits.handler()
async def caller(ctx: Context, n: int) -> int:
    first = await ctx.call(leaf, n)
    a, b = await ctx.gather(ctx.call("waits/leaf", n + 1), ctx.call(leaf, n + 2))
    return int(first + a + b)


@waits.handler()
async def failing_caller(ctx: Context, n: int) -> str:
    try:
        await ctx.call(leaf, -n)
    except TerminalError as err:
        return f"caught {err.message} ({err.code})"
    return "no error"


@waits.handler()
async def resolver(ctx: Context, awk_id: str) -> str:
    await ctx.resolve_awakeable(awk_id, "from another handler")
    return "done"


@waits.handler()
async def sender(ctx: Context, delay: float) -> str:
    return await ctx.send(leaf, 21, delay=delay)


@pytest.mark.slow
async def test_sleep_suspends_and_wakes_after_the_duration(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, [waits])
    handle = await engine.client.start("waits/nap", 1.5)
    view = await wait_status(engine, handle.id, S.INVOCATION_STATUS_SUSPENDED)
    (target,) = view.waiting_for
    assert target.kind == S.WAIT_KIND_TIMER and target.due_at is not None
    slept = await handle.result(timeout=15)
    assert 1.5 <= slept < 5
    kinds = [e.kind for e in (await engine.client.get(handle.id)).journal]
    assert kinds == [S.STEP_KIND_RUN, S.STEP_KIND_SLEEP, S.STEP_KIND_AWAIT, S.STEP_KIND_RUN]


async def test_awakeable_resolved_from_outside(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, [waits])
    handle = await engine.client.start("waits/approval", "t1")
    view = await wait_status(engine, handle.id, S.INVOCATION_STATUS_SUSPENDED)
    (target,) = view.waiting_for
    assert target.kind == S.WAIT_KIND_AWAKEABLE and target.awakeable_id.startswith("awk_")
    assert await engine.client.resolve_awakeable(target.awakeable_id, "yes") == handle.id
    assert await handle.result(timeout=10) == "approved: yes"
    with pytest.raises(FailedPreconditionError, match="already ended"):
        await engine.client.resolve_awakeable(target.awakeable_id, "again")


@pytest.mark.slow
async def test_double_resolve_keeps_the_first(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, [waits])
    handle = await engine.client.start("waits/two_awakeables", None)
    view = await wait_status(engine, handle.id, S.INVOCATION_STATUS_SUSPENDED)
    second = view.waiting_for[0].awakeable_id
    first = second[: second.rindex("_")] + "_0"
    await engine.client.resolve_awakeable(first, "one")  # early: the handler awaits `second`
    with pytest.raises(AlreadyExistsError, match="first completion stands"):
        await engine.client.resolve_awakeable(first, "changed")
    await engine.client.resolve_awakeable(second, "two")
    assert await handle.result(timeout=10) == ["one", "two"]


async def test_awakeable_rejected_and_bad_ids(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, [waits])
    handle = await engine.client.start("waits/approval", "t2")
    view = await wait_status(engine, handle.id, S.INVOCATION_STATUS_SUSPENDED)
    awk = view.waiting_for[0].awakeable_id
    await engine.client.reject_awakeable(awk, "over budget")
    assert await handle.result(timeout=10) == "rejected: over budget"
    with pytest.raises(InvalidArgumentError, match="not an awakeable id"):
        await engine.client.resolve_awakeable("nope", 1)
    with pytest.raises(NotFoundError, match="does not exist"):
        await engine.client.resolve_awakeable("awk_" + "a" * 26 + "_1", 1)
    with pytest.raises(InvalidArgumentError, match="reason is required"):
        await engine.client.reject_awakeable(awk, "")


async def test_early_resolve_is_kept(engine_factory: EngineFactory) -> None:
    """Resolved before the handler reaches its await (the id is deterministic)."""
    engine = await start_ready(engine_factory, [waits])
    handle = await engine.client.start("waits/race", 30.0)
    view = await wait_status(engine, handle.id, S.INVOCATION_STATUS_SUSPENDED)
    awk = next(t.awakeable_id for t in view.waiting_for if t.awakeable_id)
    await engine.client.resolve_awakeable(awk, "42 EUR")
    assert await handle.result(timeout=10) == "paid 42 EUR"


@pytest.mark.slow
async def test_select_times_out(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, [waits])
    handle = await engine.client.start("waits/race", 1.2)
    view = await wait_status(engine, handle.id, S.INVOCATION_STATUS_SUSPENDED)
    assert {t.kind for t in view.waiting_for} == {
        S.WAIT_KIND_AWAKEABLE,
        S.WAIT_KIND_TIMER,
    }
    assert await handle.result(timeout=10) == "timed out"
    awk = view.waiting_for[0].awakeable_id
    with pytest.raises(FailedPreconditionError, match="already ended"):
        await engine.client.resolve_awakeable(awk, "late")


@pytest.mark.slow
async def test_calls_and_gather(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, [waits])
    assert await engine.client.execute("waits/caller", 5, timeout=15) == 10 + 12 + 14
    assert await engine.client.execute("waits/failing_caller", 3, timeout=15) == (
        "caught negative: -3 (7)"
    )


async def test_a_handler_resolves_another_invocations_awakeable(
    engine_factory: EngineFactory,
) -> None:
    engine = await start_ready(engine_factory, [waits])
    waiting = await engine.client.start("waits/approval", "t3")
    view = await wait_status(engine, waiting.id, S.INVOCATION_STATUS_SUSPENDED)
    awk = view.waiting_for[0].awakeable_id
    assert await engine.client.execute("waits/resolver", awk, timeout=10) == "done"
    assert await waiting.result(timeout=10) == "approved: from another handler"


@pytest.mark.slow
async def test_delayed_send_is_scheduled(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, [waits])
    child = await engine.client.execute("waits/sender", 1.5, timeout=10)
    view = await engine.client.get(child)
    assert view.status == S.INVOCATION_STATUS_SCHEDULED
    assert view.raw.scheduled_at.seconds > 0
    assert await engine.client.result(child, timeout=15) == 42


async def test_cancel_wakes_a_suspended_invocation_into_its_compensation(
    engine_factory: EngineFactory,
) -> None:
    engine = await start_ready(engine_factory, [waits])
    handle = await engine.client.start("waits/approval", "t4")
    await wait_status(engine, handle.id, S.INVOCATION_STATUS_SUSPENDED)
    await engine.client.cancel(handle.id, "withdrawn")
    # The awakeable's await raises the cancellation, which approval catches as a
    # TerminalError and returns; the invocation still ends CANCELLED.
    view = await wait_status(engine, handle.id, S.INVOCATION_STATUS_CANCELLED, timeout=10)
    assert view.failure.error_type == "CancelledError"


@pytest.mark.slow
async def test_paused_timer_waits_for_resume(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, [waits])
    handle = await engine.client.start("waits/nap", 1.5)
    await wait_status(engine, handle.id, S.INVOCATION_STATUS_SUSPENDED)
    await until(lambda: not engine.worker.driving(handle.id), "the attempt that suspended ends")
    handled = engine.worker.handled
    await engine.client.pause(handle.id)
    # The timer fires while paused, and its wake-up is handled (and finds nothing to wake).
    await until(lambda: engine.worker.handled > handled, "the timer's wake-up", timeout=10)
    view = await engine.client.get(handle.id)
    assert view.status == S.INVOCATION_STATUS_PAUSED
    await engine.client.resume(handle.id)
    assert await handle.result(timeout=10) >= 1.5


async def test_watch_streams_steps_and_statuses(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, [waits])
    handle = await engine.client.start("waits/approval", "t5")
    events: list[C.WatchWorkflowResponse] = []

    async def follow() -> None:
        async for event in engine.client.watch(handle.id):
            events.append(event)

    task = asyncio.create_task(follow())
    view = await wait_status(engine, handle.id, S.INVOCATION_STATUS_SUSPENDED)
    await engine.client.resolve_awakeable(view.waiting_for[0].awakeable_id, "ok")
    await asyncio.wait_for(task, 10)
    kinds = [e.kind for e in events]
    assert kinds[0] == C.WATCH_EVENT_KIND_SNAPSHOT and kinds[-1] == C.WATCH_EVENT_KIND_ENDED
    assert events[-1].invocation.status == S.INVOCATION_STATUS_COMPLETED
    steps = [s.kind for e in events for s in e.steps]
    assert S.STEP_KIND_AWAIT in steps
    with pytest.raises(NotFoundError):
        async for _ in engine.client.watch("inv_" + "b" * 26):
            pass


async def test_result_of_a_failed_callee_reaches_the_client(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, [waits])
    with pytest.raises(InvocationFailedError):
        await engine.client.execute("waits/leaf", -1, timeout=10)


def test_durable_future_is_abstract() -> None:
    with pytest.raises(TypeError):
        DurableFuture()  # type: ignore[abstract]
    assert timedelta(seconds=1)


@pytest.mark.slow
async def test_timer_longer_than_ack_wait_fires_once_on_time(
    engine_factory: EngineFactory,
) -> None:
    """ack_wait 0.5 s; a 4 s timer: no redelivery drives it, the message schedule does."""
    engine = await start_ready(engine_factory, [waits], ack_wait=0.5)
    RUNS.clear()
    handle = await engine.client.start("waits/counted_nap", 4.0)
    slept = await handle.result(timeout=20)
    assert 4.0 <= slept < 7.0
    assert RUNS[f"{handle.id}:before"] == 1 and RUNS[f"{handle.id}:after"] == 1
    view = await engine.client.get(handle.id)
    assert [e.kind for e in view.journal].count(S.STEP_KIND_AWAIT) == 1


async def test_resolve_after_cancel_is_refused(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, [waits])
    handle = await engine.client.start("waits/race", 60.0)
    view = await wait_status(engine, handle.id, S.INVOCATION_STATUS_SUSPENDED)
    awk = next(t.awakeable_id for t in view.waiting_for if t.awakeable_id)
    await engine.client.cancel(handle.id)
    await wait_status(engine, handle.id, S.INVOCATION_STATUS_CANCELLED, timeout=10)
    with pytest.raises(FailedPreconditionError, match="already ended"):
        await engine.client.resolve_awakeable(awk, "too late")


@pytest.mark.slow
async def test_cli_get_watch_resolve_reject(engine_factory: EngineFactory) -> None:
    from tests.test_cli_format import durable

    engine = await start_ready(engine_factory, [waits])
    target = engine.target
    handle = await engine.client.start("waits/approval", "cli")
    view = await wait_status(engine, handle.id, S.INVOCATION_STATUS_SUSPENDED)
    awk = view.waiting_for[0].awakeable_id
    got = await durable(target, "get", handle.id)
    assert got.code == 0 and f"awakeable {awk}" in got.out and "SUSPENDED" in got.out
    watcher = asyncio.create_task(durable(target, "watch", handle.id))
    await asyncio.sleep(0.5)
    resolved = await durable(target, "resolve", awk, '"yes"')
    assert resolved.code == 0 and handle.id in resolved.out
    watched = await watcher
    assert watched.code == 0, watched
    assert "AWAIT" in watched.out and "COMPLETED" in watched.out and "approved: yes" in watched.out
    # Each line stamped when it happened, in order; the end once, last.
    stamped = [line for line in watched.out.splitlines() if line[:4].isdigit()]
    stamps = [" ".join(line.split()[:2]) for line in stamped]
    assert stamps == sorted(stamps), watched.out
    assert sum("COMPLETED" in line for line in stamped) == 1 and "COMPLETED" in stamped[-1]
    ended = await durable(target, "watch", handle.id)
    assert sum("COMPLETED" in line for line in ended.out.splitlines()) == 1, ended.out
    again = await durable(target, "resolve", awk, '"no"')
    assert again.code == 1 and "FAILED_PRECONDITION" in again.err and "already ended" in again.err

    second = await engine.client.start("waits/approval", "cli2")
    view = await wait_status(engine, second.id, S.INVOCATION_STATUS_SUSPENDED)
    awk2 = view.waiting_for[0].awakeable_id
    rejected = await durable(target, "reject", awk2, "no budget")
    assert rejected.code == 0
    assert await second.result(timeout=10) == "rejected: no budget"
    bad = await durable(target, "resolve", awk2, "{not json")
    assert bad.code == 2 and "not valid JSON" in bad.err


@pytest.mark.slow
async def test_cancel_and_pause_of_a_scheduled_invocation(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, [waits])
    later = await engine.client.execute("waits/sender", 60.0, timeout=10)
    await engine.client.cancel(later, "not needed")
    view = await wait_status(engine, later, S.INVOCATION_STATUS_CANCELLED, timeout=10)
    assert view.failure.message == "not needed"

    soon = await engine.client.execute("waits/sender", 2.0, timeout=10)
    started = time.monotonic()
    await engine.client.pause(soon)
    assert (await engine.client.resume(soon)).status == S.INVOCATION_STATUS_SCHEDULED
    assert await engine.client.result(soon, timeout=15) == 42
    assert time.monotonic() - started >= 1.5


@pytest.mark.slow
async def test_select_replays_its_journaled_winner(engine_factory: EngineFactory) -> None:
    """The timer won; the awakeable is resolved afterwards, before the replay: the replay
    still takes the timer's branch (probing live would now pick the awakeable)."""
    engine = await start_ready(engine_factory, [waits])
    handle = await engine.client.start("waits/race_replayed", None)
    view = await wait_status(engine, handle.id, S.INVOCATION_STATUS_SUSPENDED, timeout=10)
    assert [w.kind for w in view.waiting_for] == [S.WAIT_KIND_TIMER]
    awk = (await engine.client.get(handle.id)).journal[0].output
    await engine.client.resolve_awakeable(awk, "late")
    assert await handle.result(timeout=15) == 1
    kinds = [e.kind for e in (await engine.client.get(handle.id)).journal]
    assert kinds.count(S.STEP_KIND_SELECT) == 1


@pytest.mark.slow
async def test_wake_ups_do_not_count_against_the_retry_policy(
    engine_factory: EngineFactory,
) -> None:
    """maximum_attempts=2: three wake-ups, then one transient failure, then success."""
    engine = await start_ready(engine_factory, [waits])
    assert await engine.client.execute("waits/sleeps_then_flakes", "t", timeout=20) == 2


async def test_a_call_to_an_unregistered_handler_is_retried_then_fails_clearly(
    engine_factory: EngineFactory,
) -> None:
    engine = await start_ready(engine_factory, [waits])
    with pytest.raises(InvocationFailedError, match="nobody/home is not registered"):
        await engine.client.execute("waits/calls_nobody", None, timeout=20)


@pytest.mark.slow
async def test_a_callee_purged_before_its_caller_took_the_result(
    engine_factory: EngineFactory,
) -> None:
    engine = await start_ready(engine_factory, [waits])
    caller = await engine.client.start("waits/calls_slow_leaf", None)
    view = await wait_status(engine, caller.id, S.INVOCATION_STATUS_SUSPENDED)
    callee = view.waiting_for[0].invocation_id
    await engine.client.pause(caller.id)  # it will not take the result when it comes
    await wait_status(engine, callee, S.INVOCATION_STATUS_COMPLETED, timeout=10)
    await engine.client.purge(callee)
    await engine.client.resume(caller.id)
    assert await caller.result(timeout=10) == (
        f"failed: the called invocation {callee} was purged before its result was taken"
    )
