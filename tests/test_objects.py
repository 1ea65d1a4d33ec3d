"""Virtual objects and workflows, in process: exclusivity per key, state, run-once workflows,
promises, Kill, Purge, retention, and the bad inputs."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time

import pytest

from durable import Context, TerminalError, VirtualObject, Workflow
from durable.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    InvocationCancelledError,
    InvocationFailedError,
    NotFoundError,
    ResourceExhaustedError,
)
from durable.v1 import types_pb2
from tests.engine_support import EngineFactory, start_ready, wait_status

S = types_pb2
counter = VirtualObject("counter")
SPANS: dict[str, list[tuple[float, float]]] = {}


@counter.handler()
async def add(ctx: Context, n: int) -> int:
    entered = time.monotonic()
    total = int(await ctx.get("total", int) or 0) + n
    await ctx.run("think", asyncio.sleep, 0.01)
    ctx.set("total", total)
    SPANS.setdefault(ctx.key, []).append((entered, time.monotonic()))
    return total


@counter.handler(shared=True)
async def peek(ctx: Context) -> int:
    return int(await ctx.get("total", int) or 0)


@counter.handler(shared=True)
async def sneaky(ctx: Context) -> None:
    ctx.set("total", 0)


@counter.handler()
async def hold(ctx: Context, seconds: float) -> str:
    ctx.set("held", True)
    await ctx.sleep(seconds)
    return "released"


@counter.handler()
async def keys_and_clear(ctx: Context) -> list[str]:
    ctx.set("a", 1)
    ctx.set("b", {"x": 2})
    ctx.clear("total")
    names = await ctx.state_keys()
    ctx.clear_all()
    ctx.set("c", 3)
    return names


@counter.handler()
async def too_big(ctx: Context, size: int) -> None:
    ctx.set("blob", "x" * size)


@dataclasses.dataclass
class User:
    email: str
    name: str


signup = Workflow("signup")
RUNS: dict[str, int] = {}


@signup.main()
async def run(ctx: Context, user: User) -> str:
    RUNS[ctx.key] = RUNS.get(ctx.key, 0) + 1
    ctx.set("user", user)
    ctx.set("stage", "waiting for click")
    clicked = await ctx.promise("clicked", str)
    ctx.set("stage", "verified")
    return f"{user.name} verified with {clicked}"


@signup.handler()
async def click(ctx: Context, secret: str) -> None:
    await ctx.promise("clicked").resolve(secret)


@signup.handler()
async def status(ctx: Context) -> dict[str, object]:
    user = await ctx.get("user", User)
    return {"stage": await ctx.get("stage", str), "email": user.email if user else None}


@signup.handler()
async def peek_click(ctx: Context) -> str | None:
    return await ctx.promise("clicked", str).peek()  # type: ignore[no-any-return]


SERVICES = [counter, signup]


async def test_exclusive_handlers_of_one_key_never_overlap(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, SERVICES)
    SPANS.clear()
    handles = [await engine.client.start("counter/add", 1, key="k1") for _ in range(20)]
    others = [await engine.client.start("counter/add", 5, key=f"o{i}") for i in range(5)]
    results = [await h.result(timeout=30) for h in handles]
    assert sorted(results) == list(range(1, 21))
    assert results == list(range(1, 21)), "exclusive handlers ran out of arrival order"
    assert [await h.result(timeout=30) for h in others] == [5] * 5
    spans = sorted(SPANS["k1"])
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans
    assert await engine.client.get_state("counter", "k1") == {"total": 20}
    assert await engine.client.execute("counter/peek", None, key="k1", timeout=10) == 20


@pytest.mark.slow
async def test_a_suspended_exclusive_handler_keeps_its_key(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, SERVICES)
    holder = await engine.client.start("counter/hold", 2.0, key="held")
    await wait_status(engine, holder.id, S.INVOCATION_STATUS_SUSPENDED)
    queued = await engine.client.start("counter/add", 1, key="held")
    # A shared handler is not queued: it reads the state the holder wrote before its sleep.
    assert await engine.client.execute("counter/peek", None, key="held", timeout=10) == 0
    assert (await engine.client.get_state("counter", "held"))["held"] is True
    assert await holder.result(timeout=10) == "released"
    assert await queued.result(timeout=10) == 1
    # The queued invocation started only once the holder had ended, as both records say.
    held = await engine.client.get(holder.id)
    after = await engine.client.get(queued.id)
    assert after.raw.started_at.ToNanoseconds() >= held.raw.ended_at.ToNanoseconds(), (held, after)


async def test_state_keys_clear_and_operator_edits(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, SERVICES)
    await engine.client.execute("counter/add", 7, key="s1", timeout=10)
    names = await engine.client.execute("counter/keys_and_clear", None, key="s1", timeout=10)
    assert names == ["a", "b"]
    assert await engine.client.get_state("counter", "s1") == {"c": 3}
    edited = await engine.client.set_state("counter", "s1", {"total": 41}, clear=["c"])
    assert edited == {"total": 41}
    assert await engine.client.execute("counter/add", 1, key="s1", timeout=10) == 42


async def test_bad_inputs(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, SERVICES)
    with pytest.raises(
        InvalidArgumentError,
        match=r"needs a key, the object key it runs for: .*durable invoke --key K",
    ):
        await engine.client.start("counter/add", 1)
    with pytest.raises(InvocationFailedError, match="shared handler"):
        await engine.client.execute("counter/sneaky", None, key="k", timeout=10)
    with pytest.raises(InvocationFailedError, match="limit"):
        await engine.client.execute("counter/too_big", 2 * 1024 * 1024, key="big", timeout=10)
    assert await engine.client.get_state("counter", "big") == {}
    with pytest.raises(NotFoundError, match="no virtual object"):
        await engine.client.get_state("nope", "k")
    with pytest.raises(InvalidArgumentError, match="key is required"):
        await engine.client.get_state("counter", "")
    with pytest.raises(ResourceExhaustedError):
        await engine.client.set_state("counter", "big", {"x": "y" * (5 * 1024 * 1024)})


async def test_state_over_the_total_limit_fails_cleanly(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, SERVICES, max_state_bytes=64 * 1024)
    await engine.client.execute("counter/add", 1, key="t", timeout=10)
    with pytest.raises(InvocationFailedError, match="max-state-bytes"):
        await engine.client.execute("counter/too_big", 100 * 1024, key="t", timeout=10)
    assert await engine.client.get_state("counter", "t") == {"total": 1}
    assert await engine.client.execute("counter/add", 1, key="t", timeout=10) == 2


async def test_workflow_runs_once_and_waits_for_its_promise(
    engine_factory: EngineFactory,
) -> None:
    engine = await start_ready(engine_factory, SERVICES)
    user = {"email": "ada@example.com", "name": "Ada"}
    handles = await asyncio.gather(
        *[engine.client.start("signup/run", user, key="wf1") for _ in range(20)]
    )
    assert len({h.id for h in handles}) == 1
    assert sum(h.already_existed for h in handles) == 19
    await wait_status(engine, handles[0].id, S.INVOCATION_STATUS_SUSPENDED)
    # A shared handler reads the state run wrote before it waited.
    assert await engine.client.execute("signup/status", None, key="wf1", timeout=10) == {
        "stage": "waiting for click",
        "email": "ada@example.com",
    }
    assert await engine.client.execute("signup/peek_click", None, key="wf1", timeout=10) is None
    await engine.client.execute("signup/click", "s3cret", key="wf1", timeout=10)
    assert await handles[0].result(timeout=10) == "Ada verified with s3cret"
    assert RUNS["wf1"] <= 2  # once, plus the replay after the promise woke it
    with pytest.raises(AlreadyExistsError, match="already exists"):
        await engine.client.invoke("signup/run", user, key="wf1", fail_if_exists=True)
    again = await engine.client.start("signup/run", user, key="wf1")
    assert again.already_existed and again.id == handles[0].id


async def test_promise_resolved_before_run_awaits_it(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, SERVICES)
    user = {"email": "bo@example.com", "name": "Bo"}
    handle = await engine.client.start("signup/run", user, key="wf2")
    await engine.client.resolve_promise("signup/run", "wf2", "clicked", "early")
    assert await handle.result(timeout=10) == "Bo verified with early"
    with pytest.raises(FailedPreconditionError, match="already ended"):
        await engine.client.resolve_promise("signup/run", "wf2", "clicked", "late")
    with pytest.raises(NotFoundError, match="no workflow"):
        await engine.client.resolve_promise("signup/run", "nope", "clicked", 1)
    third = await engine.client.start("signup/run", user, key="wf3")
    await engine.client.reject_promise("signup/run", "wf3", "clicked", "link expired")
    with pytest.raises(InvocationFailedError, match="link expired"):
        await third.result(timeout=10)


@pytest.mark.slow
async def test_kill_purge_and_a_reused_workflow_id(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, SERVICES)
    holder = await engine.client.start("counter/hold", 60.0, key="kill")
    queued = await engine.client.start("counter/add", 1, key="kill")
    await wait_status(engine, holder.id, S.INVOCATION_STATUS_SUSPENDED)
    killed = await engine.client.kill(holder.id, "stuck")
    assert killed.status == S.INVOCATION_STATUS_CANCELLED
    with pytest.raises(InvocationCancelledError, match="stuck"):
        await holder.result(timeout=5)
    assert await queued.result(timeout=10) == 1  # the key moved on
    with pytest.raises(FailedPreconditionError, match="already ended"):
        await engine.client.kill(holder.id)

    with pytest.raises(FailedPreconditionError, match="only an ended one"):
        user = {"email": "cy@example.com", "name": "Cy"}
        running = await engine.client.start("signup/run", user, key="wf4")
        await engine.client.purge(running.id)
    await engine.client.kill(running.id)
    await engine.client.purge(running.id)
    with pytest.raises(NotFoundError):
        await engine.client.get(running.id)
    assert await engine.client.get_state("signup", "wf4") == {}
    fresh = await engine.client.start("signup/run", user, key="wf4")
    assert not fresh.already_existed
    await engine.client.execute("signup/click", "again", key="wf4", timeout=10)
    assert await fresh.result(timeout=10) == "Cy verified with again"


@pytest.mark.slow
async def test_retention_purges_ended_invocations(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, SERVICES, retention=1.0)
    done = await engine.client.execute("counter/add", 1, key="r", timeout=10)
    assert done == 1
    listed = await engine.client.list(handler="counter/add")
    (summary,) = listed.invocations
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not (await engine.client.list(handler="counter/add")).invocations:
            break
        await asyncio.sleep(0.2)
    with pytest.raises(NotFoundError):
        await engine.client.get(summary.id)


def test_handler_kinds() -> None:
    kinds = {h.full_name: h.kind for s in SERVICES for h in s.handlers}
    assert kinds["counter/add"] == S.HANDLER_KIND_OBJECT_EXCLUSIVE
    assert kinds["counter/peek"] == S.HANDLER_KIND_OBJECT_SHARED
    assert kinds["signup/run"] == S.HANDLER_KIND_WORKFLOW_RUN
    assert kinds["signup/click"] == S.HANDLER_KIND_WORKFLOW_SHARED
    with pytest.raises(ValueError, match="already has a main"):
        signup.main("other")(run)
    assert TerminalError


@counter.handler()
async def stamp(ctx: Context, seconds: int) -> int:
    """Keeps a protobuf message in state."""
    from google.protobuf.timestamp_pb2 import Timestamp

    previous = await ctx.get("stamp", Timestamp)
    ctx.set("stamp", Timestamp(seconds=seconds))
    return int(previous.seconds) if previous is not None else -1


async def test_protobuf_state(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, SERVICES)
    assert await engine.client.execute("counter/stamp", 5, key="p", timeout=10) == -1
    assert await engine.client.execute("counter/stamp", 9, key="p", timeout=10) == 5


@pytest.mark.slow
async def test_cli_state_kill_purge_and_promises(engine_factory: EngineFactory) -> None:
    from tests.test_cli_format import durable

    engine = await start_ready(engine_factory, SERVICES)
    target = engine.target
    await engine.client.execute("counter/add", 3, key="cli", timeout=10)
    shown = await durable(target, "state", "counter", "cli")
    assert shown.code == 0 and "total" in shown.out and "3" in shown.out
    edited = await durable(target, "--json", "set-state", "counter", "cli", "total=10", 'note="x"')
    # The response message as protobuf JSON, as every --json output.
    assert edited.code == 0 and edited.json() == {
        "entries": [
            {"name": "note", "value": {"json": "x"}},
            {"name": "total", "value": {"json": 10}},
        ]
    }
    shown = await durable(target, "--json", "state", "counter", "cli")
    assert [e["name"] for e in shown.json()["entries"]] == ["note", "total"]
    bad = await durable(target, "set-state", "counter", "cli", "oops")
    assert bad.code == 2 and "NAME=JSON" in bad.err

    user = {"email": "cli@example.com", "name": "Cli"}
    run_handle = await engine.client.start("signup/run", user, key="cli-wf")
    await wait_status(engine, run_handle.id, S.INVOCATION_STATUS_SUSPENDED)
    resolved = await durable(target, "resolve-promise", "signup/run", "cli-wf", "clicked", '"ok"')
    assert resolved.code == 0 and run_handle.id in resolved.out
    assert await run_handle.result(timeout=10) == "Cli verified with ok"
    purged = await durable(target, "purge", run_handle.id)
    assert purged.code == 0
    holder = await engine.client.start("counter/hold", 60.0, key="cli-kill")
    await wait_status(engine, holder.id, S.INVOCATION_STATUS_SUSPENDED)
    killed = await durable(target, "kill", holder.id, "--reason", "stuck")
    assert killed.code == 0 and "CANCELLED" in killed.out
    again = await durable(target, "kill", holder.id)
    assert again.code == 1 and "FAILED_PRECONDITION" in again.err


async def test_released_holders_leave_the_inbox(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, SERVICES)
    handles = [await engine.client.start("counter/add", 1, key="inbox") for _ in range(5)]
    assert [await h.result(timeout=20) for h in handles] == [1, 2, 3, 4, 5]
    js = engine.worker.nc.jetstream()
    for _ in range(100):  # the last release follows the answer by a moment
        info = await js.stream_info(engine.config.inbox_stream)
        if info.state.messages == 0:
            break
        await asyncio.sleep(0.05)
    assert info.state.messages == 0


@pytest.mark.slow
async def test_a_result_is_answered_after_the_state_it_wrote(
    engine_factory: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read-your-writes: the outcome is journaled before the worker writes the key's state,
    so a client answered from the journaled outcome could read the old state. An outcome
    whose attempt changed state is answered by the record, written after the state. The
    state write is slowed here so the window is wide open on every run."""
    engine = await start_ready(engine_factory, SERVICES)
    store = engine.worker._executor._state
    assert store is not None
    apply = store.apply

    async def slow_apply(*args: object, **kwargs: object) -> None:
        await asyncio.sleep(0.3)
        await apply(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "apply", slow_apply)
    for n in range(1, 4):
        assert await engine.client.execute("counter/add", 1, key="ryw", timeout=10) == n
        assert await engine.client.get_state("counter", "ryw") == {"total": n}
    handle = await engine.client.start("counter/add", 1, key="ryw")
    assert await handle.result(timeout=10) == 4
    assert await engine.client.get_state("counter", "ryw") == {"total": 4}
