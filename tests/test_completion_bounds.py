"""What a client (or a handler) may make the engine store against one invocation: awakeable
resolutions only at awakeable steps, or up to AWAKEABLES_AHEAD steps beyond the end of the
journal; promise resolutions up to PROMISES_PER_RUN per workflow run. Every refusal is
checked on the journal stream itself: nothing was stored."""

from __future__ import annotations

import nats
import pytest

from durable import Context, Service, Workflow
from durable._store import completions
from durable._store.completions import AWAKEABLES_AHEAD
from durable._store.ids import awakeable_id, workflow_run_id
from durable.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvocationFailedError,
    NotFoundError,
    ResourceExhaustedError,
)
from durable.testing import LocalEngine
from durable.v1 import types_pb2
from tests.engine_support import EngineFactory, start_ready, wait_status

S = types_pb2
bounds = Service("bounds")


@bounds.handler()
async def gates(ctx: Context) -> list[str]:
    first_id, first = ctx.awakeable(str)  # step 0
    await ctx.run("publish", lambda: first_id)  # step 1
    a = await first  # step 2, suspends until resolved
    _, second = ctx.awakeable(str)  # step 3: may be resolved before it exists
    b = await second  # step 4
    return [a, b]


@bounds.handler()
async def resolver(ctx: Context, awk: str) -> str:
    await ctx.resolve_awakeable(awk, "from a handler")
    return "resolved"


flow = Workflow("boundflow")


@flow.main()
async def run(ctx: Context) -> str:
    return str(await ctx.promise("never", str))


async def stored(engine: LocalEngine, pattern: str) -> dict[str, int]:
    """Messages per subject of the journal stream under ``pattern``, read from JetStream."""
    nc = await nats.connect(engine.nats_url)
    try:
        info = await nc.jetstream().stream_info(
            engine.config.journal_stream, subjects_filter=pattern
        )
        return dict(info.state.subjects or {})
    finally:
        await nc.close()


@pytest.mark.slow
async def test_awakeable_steps_are_bounded(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, [bounds])
    client = engine.client
    handle = await client.start("bounds/gates", None)
    inv = handle.id
    await wait_status(engine, inv, S.INVOCATION_STATUS_SUSPENDED)  # journal: awakeable, run
    resolutions = engine.config.awakeable_subject(inv, 0).rsplit(".", 1)[0] + ".*"

    # A journaled step that is not an awakeable.
    with pytest.raises(NotFoundError, match=r"step 1 of invocation \S+ is run 'publish'"):
        await client.resolve_awakeable(awakeable_id(inv, 1), "no")
    # Beyond the end of the journal (2 steps) by more than the bound, or absurdly far.
    for index in (2 + AWAKEABLES_AHEAD, 999_999_999):
        with pytest.raises(FailedPreconditionError, match=f"at most {AWAKEABLES_AHEAD} steps"):
            await client.resolve_awakeable(awakeable_id(inv, index), "no")
    # A handler is held to the same rule: its step fails, journaled, with the same reason.
    with pytest.raises(InvocationFailedError, match=f"at most {AWAKEABLES_AHEAD} steps"):
        await client.execute("bounds/resolver", awakeable_id(inv, 999_999_999), timeout=10)
    assert await stored(engine, resolutions) == {}

    # Within the bound: the last step it allows, and step 3, which the handler creates once
    # the first awakeable is resolved; that one is resolved through the record's waits.
    assert await client.resolve_awakeable(awakeable_id(inv, 1 + AWAKEABLES_AHEAD), "x") == inv
    await client.resolve_awakeable(awakeable_id(inv, 3), "early")
    await client.resolve_awakeable(awakeable_id(inv, 0), "first")
    assert await handle.result(timeout=10) == ["first", "early"]
    assert set(await stored(engine, resolutions)) == {
        engine.config.awakeable_subject(inv, i) for i in (0, 3, 1 + AWAKEABLES_AHEAD)
    }


async def test_promises_per_run_are_bounded(
    engine_factory: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(completions, "PROMISES_PER_RUN", 3)
    engine = await start_ready(engine_factory, [flow])
    client = engine.client
    handle = await client.start("boundflow/run", None, key="wf")
    await wait_status(engine, handle.id, S.INVOCATION_STATUS_SUSPENDED)
    for name in ("a", "b", "c"):
        await client.resolve_promise("boundflow/run", "wf", name, name)
    with pytest.raises(ResourceExhaustedError, match="holds 3 resolved promises"):
        await client.resolve_promise("boundflow/run", "wf", "d", "d")
    # A promise resolved before is still a conflict, not a lack of room.
    with pytest.raises(AlreadyExistsError):
        await client.resolve_promise("boundflow/run", "wf", "a", "again")
    run_id = workflow_run_id("boundflow", "wf")
    assert len(await stored(engine, engine.config.promise_subject(run_id, "*"))) == 3
