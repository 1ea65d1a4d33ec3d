"""Replaying stored journals against changed code (``durable._worker.replayer``, behind
``durable replay``): it names what would break, including a changed number of
``ctx.random()``/``ctx.uuid()`` draws, and runs nothing."""

from __future__ import annotations

from durable import Context, InvocationStatus, Service
from durable._handlers import Registry
from durable._store.waking import Waker
from durable._worker.replayer import Verdict, replay_one
from tests.engine_support import EngineFactory, StoreOpener, wait_status

RAN: list[str] = []


async def _side_effect(tag: str) -> str:
    RAN.append(tag)
    return tag


def _version(draws: int, second_step: str = "second") -> Service:
    """``dice/roll`` drawing ``draws`` random values before its first step, then sleeping."""
    svc = Service("dice")

    @svc.handler()
    async def roll(ctx: Context, tag: str) -> str:
        for _ in range(draws):
            ctx.random()
        await ctx.run("first", _side_effect, tag)
        await ctx.sleep(3600)
        await ctx.run(second_step, _side_effect, tag)
        return tag

    return svc


async def test_replay_finds_changed_steps_and_changed_random_draws(
    engine_factory: EngineFactory, engine_store: StoreOpener
) -> None:
    engine = await engine_factory([_version(draws=1)])
    store = await engine_store(engine)
    handle = await engine.client.invoke("dice/roll", "a", wait=False)
    await wait_status(engine, handle.id, InvocationStatus.SUSPENDED)
    record = (await store.records.get(handle.id)).record
    entries = (await store.journal.load(handle.id)).entries
    waker = Waker(store.js, engine.config, store.records, store.work, keys=store.keys)
    RAN.clear()

    async def check(svc: Service) -> tuple[Verdict, str]:
        got = await replay_one(Registry([svc]), record, entries, journal=store.journal, waker=waker)
        return got.verdict, got.detail

    # The same code replays as far as the journal goes (the step, then the sleep).
    assert await check(_version(draws=1)) == (Verdict.MATCHES, "")
    # One draw more or less before a step: detected, though every step's name is the same.
    verdict, detail = await check(_version(draws=2))
    assert verdict == Verdict.NON_DETERMINISTIC
    assert "drawn 2 values from ctx.random()/ctx.uuid()" in detail and "says 1" in detail
    assert (await check(_version(draws=0)))[0] == Verdict.NON_DETERMINISTIC
    # A step renamed after the journal's end is not reached: this journal cannot tell.
    assert await check(_version(draws=1, second_step="renamed")) == (Verdict.MATCHES, "")
    assert RAN == []  # nothing ran: replayed steps come from the journal
