"""Two times per journal entry: when the worker made it (``recorded_at``) and when JetStream
stored it (``stored_at``), named as what they are; `durable get` shows the second when it is
noticeably later (an entry buffered across a NATS restart)."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from durable import Context, Service
from durable.v1 import types_pb2
from durable_server.cli import _recorded_text
from tests.engine_support import EngineFactory, start_ready

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
        assert e.HasField("stored_at") and e.HasField("recorded_at"), e
        # One machine, one clock: stored after it was made, within a second's rounding.
        made, stored = e.recorded_at.ToNanoseconds(), e.stored_at.ToNanoseconds()
        assert stored >= made - 1_000_000_000, e


def _entry(made_s: float, stored_s: float) -> types_pb2.JournalEntry:
    e = types_pb2.JournalEntry(index=0, name="a")
    e.recorded_at.CopyFrom(Timestamp(seconds=int(made_s), nanos=int(made_s % 1 * 1e9)))
    e.stored_at.CopyFrom(Timestamp(seconds=int(stored_s), nanos=int(stored_s % 1 * 1e9)))
    return e


def test_get_shows_a_late_store_and_keeps_quiet_about_an_ordinary_one() -> None:
    assert _recorded_text(_entry(1000.0, 1002.5)).endswith("(stored +2.5s)")
    assert "stored" not in _recorded_text(_entry(1000.0, 1000.004))
