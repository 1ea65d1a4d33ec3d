"""Two times per journal entry: when the worker made it (``recorded_at``) and when JetStream
stored it (``stored_at``), named as what they are; `durable get` shows the second when it is
noticeably later (an entry buffered across a NATS restart)."""

from __future__ import annotations

import datetime as dt
import re
import time
from datetime import timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from durable import Context, Service
from durable.v1 import types_pb2
from durable_server.cli_render import took
from durable_server.cli_views import recorded_text
from tests.engine_support import EngineFactory, start_ready
from tests.test_cli_format import durable

timed = Service("timed")


@timed.handler()
async def two(ctx: Context, x: int) -> int:
    a = await ctx.run("a", lambda: x + 1)
    return await ctx.run("b", lambda: a * 2)


async def test_every_entry_says_when_jetstream_stored_it(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, [timed])
    handle = await engine.client.invoke("timed/two", 1, wait=True, wait_timeout=10)
    assert await handle.result(timeout=10) == 4
    view = await engine.client.get(handle.id)
    assert [e.name for e in view.journal] == ["a", "b"]
    for e in view.journal:
        assert e.stored_at is not None and e.recorded_at is not None, e
        # One machine, one clock: stored after it was made, within a second's rounding.
        assert e.stored_at >= e.recorded_at - dt.timedelta(seconds=1), e


def _entry(made_s: float, stored_s: float) -> types_pb2.JournalEntry:
    e = types_pb2.JournalEntry(index=0, name="a")
    e.recorded_at.CopyFrom(Timestamp(seconds=int(made_s), nanos=int(made_s % 1 * 1e9)))
    e.stored_at.CopyFrom(Timestamp(seconds=int(stored_s), nanos=int(stored_s % 1 * 1e9)))
    return e


def test_get_shows_a_late_store_and_keeps_quiet_about_an_ordinary_one() -> None:
    assert recorded_text(_entry(1000.0, 1002.5)).endswith("(stored +2.5s)")
    assert "stored" not in recorded_text(_entry(1000.0, 1000.004))


@timed.handler()
async def nap(ctx: Context, seconds: float) -> str:
    def slow() -> str:
        time.sleep(seconds)
        return "done"

    await ctx.run("slow", slow)
    await ctx.sleep(timedelta(seconds=seconds))
    return "rested"


@pytest.mark.slow
async def test_steps_say_how_long_they_took_and_what_was_awaited(
    engine_factory: EngineFactory,
) -> None:
    engine = await start_ready(engine_factory, [timed])
    handle = await engine.client.invoke("timed/nap", 0.3, wait=True, wait_timeout=10)
    assert await handle.result(timeout=10) == "rested"
    journal = (await engine.client.get(handle.id)).journal
    kinds = [types_pb2.StepKind.Name(e.kind) for e in journal]
    assert kinds == ["STEP_KIND_RUN", "STEP_KIND_SLEEP", "STEP_KIND_AWAIT"]
    run, sleep, wait = journal
    assert run.raw.recorded_at.ToNanoseconds() - run.raw.started_at.ToNanoseconds() >= 300_000_000
    assert sleep.started_at is None  # creating a timer takes no time
    assert sleep.awaited is None
    assert (wait.awaited.index, wait.awaited.kind) == (1, types_pb2.STEP_KIND_SLEEP)
    # A short timer is waited for in the attempt that made it: the wait began right then.
    assert wait.raw.started_at.ToNanoseconds() <= sleep.raw.recorded_at.ToNanoseconds()
    assert wait.raw.recorded_at.ToNanoseconds() - wait.raw.started_at.ToNanoseconds() >= 300_000_000

    ran = await durable(engine.target, "get", handle.id)
    assert ran.code == 0, ran
    rows = {row[0]: row for row in ran.table("INDEX")}
    assert rows["0"][1:3] == ["RUN", "slow"] and re.fullmatch(r"\d+ms|\d+\.\ds", rows["0"][4]), rows
    assert rows["2"][1:4] == ["AWAIT", "sleep (#1)", "timer fired"], rows


def test_step_durations_read_as_a_person_would_say_them() -> None:
    def stamp(seconds: float) -> Timestamp:
        out = Timestamp()
        out.FromNanoseconds(int(seconds * 1e9))
        return out

    cases = [
        (0.0002, "<1ms"),
        (0.012, "12ms"),
        (1.5, "1.5s"),
        (42, "42s"),
        (123, "2m03s"),
        (3900, "1h05m"),
    ]
    for span, text in cases:
        assert took(stamp(1000), stamp(1000 + span)) == text
