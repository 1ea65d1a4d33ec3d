"""A journal read sent while the journal stream elects a leader is never answered; the read
is tried again in short tries, so the attempt behind it goes on as soon as a leader answers
(before, one try waited the whole JetStream timeout, and timers behind it ran late)."""

from __future__ import annotations

import asyncio
from typing import Any

from durable._store import patience
from durable._store.config import EngineConfig
from durable._store.journal import Journal


class _ElectingStream:
    """Answers nothing to the first read (a request to a dead leader), then answers."""

    def __init__(self) -> None:
        self.reads = 0
        self.abandoned = 0

    async def get_msg(self, stream: str, **query: Any) -> str:
        self.reads += 1
        if self.reads == 1:
            try:
                await asyncio.Event().wait()  # the dead leader: no answer, ever
            except asyncio.CancelledError:
                self.abandoned += 1
                raise
        return f"answer from {stream}"


async def test_a_read_sent_during_an_election_is_tried_again_in_a_short_try(
    monkeypatch: Any,
) -> None:
    monkeypatch.setattr(patience, "TRY_TIMEOUT", 0.2)
    stream = _ElectingStream()
    journal = Journal(stream, EngineConfig(prefix="jr"))  # type: ignore[arg-type]
    got = await journal._read(subject="jr.journal.x.*")
    assert got == "answer from JR_JOURNAL"
    assert (stream.reads, stream.abandoned) == (2, 1)
