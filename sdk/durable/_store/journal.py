"""The journal: append-only JetStream subjects per invocation, fenced per entry.

Steps go to ``<p>.journal.<id>.s`` and the entry that carries the outcome to
``<p>.journal.<id>.f``. Each entry is published with ``Nats-Expected-Last-Subject-Sequence``
set to the stream sequence of the entry before it (0 for the first), checked over
``<p>.journal.<id>.*`` (``Nats-Expected-Last-Subject-Sequence-Subject``): one fence for both
subjects. A worker that is not the current driver, because another one took the invocation
over, finds the journal has moved on, gets error 10071, and stops: no duplicate or
interleaved entries can be written, and at most one final entry. Appending costs one small
message per step, whatever the journal's length. The final entry has its own subject so
that the stream can republish outcomes, and only outcomes, to the control planes.

A third subject, ``<p>.journal.<id>.c``, holds at most one seal: see :meth:`Journal.seal`,
and what a Purge leaves behind: see :meth:`Journal.purge`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, RawStreamMsg
from nats.js.errors import APIError, NotFoundError

from durable._metrics import METRICS
from durable._store.config import EngineConfig
from durable._store.patience import TRANSIENT, TRY_TIMEOUT, until_answered
from durable.internal.v1 import storage_pb2

Entry = storage_pb2.JournalRecord
log = logging.getLogger("durable.journal")

_WRONG_LAST_SEQUENCE = (10071, 10164)
# On a purge's seal: the creation time (ns) of the invocation that was purged.
PURGED_HEADER = "Durable-Purged-Created"
#: On a replicated store, journals of this many entries or more are read through one ordered
#: consumer; shorter ones by a leader read per entry (``Journal._ordered``).
ORDERED_FROM = 16
#: Why an ordered consumer may not be made: then the read goes on entry by entry.
_NO_CONSUMER: tuple[type[BaseException], ...] = (*TRANSIENT, APIError)


class JournalFenced(Exception):
    """Another driver appended to this journal since we read it: stop driving."""


@dataclass
class LoadedJournal:
    """Entries in order with the stream sequence of the last one (0 when empty)."""

    entries: list[Entry]
    last_seq: int
    # The control plane sealed it (an operator acted before any record) or purged it.
    sealed: bool = False
    # The creation time (ns) of the invocation whose purge left the seal; 0 for none.
    purged: int = 0
    # When JetStream stored each entry (ns since the epoch, 0 when unknown), in the order of
    # ``entries``: an entry's ``recorded_at`` is when the worker made it, which is earlier
    # when the client buffered it across a reconnect.
    stored_ns: list[int] = field(default_factory=list)


@dataclass
class JournalEnd:
    """The newest message of one journal: its stream sequence (0 when the journal is empty)
    and the entry it holds (None when empty, or when the newest message is the seal, which
    only lands on an empty journal)."""

    seq: int
    entry: Entry | None

    @property
    def length(self) -> int:
        """Entries journaled: the newest one's index plus one."""
        return self.entry.index + 1 if self.entry is not None else 0


#: Messages and bytes one batched read asks for at most; a longer journal takes more.
BATCH = 1024
BATCH_BYTES = 8 * 1024 * 1024


class Journal:
    """Reads and appends journal entries.

    With ``nc`` on a single-node store (``cfg.direct_reads``), a whole journal is read with
    batched direct gets (nats-server 2.11+): one request answers up to :data:`BATCH`
    entries, so a replay or GetWorkflow costs requests in proportion to the journal's length
    over a thousand, not one per entry. On a replicated store any replica answers a direct
    get, possibly one that lacks the newest entries (a replay would run a journaled step
    again), so a journal is read through an ordered consumer up to the sequence the leader
    reports as its newest (:meth:`_ordered`): two requests, whatever its length.
    """

    def __init__(self, js: JetStreamContext, cfg: EngineConfig, nc: NATS | None = None) -> None:
        self._js = js
        self._cfg = cfg
        self._nc = nc if cfg.direct_reads else None
        #: On a replicated store, whole journals are read through an ordered consumer.
        self._ordered_reads = not cfg.direct_reads

    async def _read(self, **query: Any) -> RawStreamMsg:
        """One read of the journal stream, tried again in short tries while its leader is
        elected (``patience.until_answered``): a read sent to a dead leader is never
        answered, and one try as long as the JetStream timeout (5 s) made the attempt or
        wake-up behind it wait that long after the election was over (a timer ran 5.4 s
        late in the chaos profile, seed 343000)."""

        async def once(timeout: float) -> RawStreamMsg:
            return await asyncio.wait_for(
                self._js.get_msg(self._cfg.journal_stream, direct=self._cfg.direct_reads, **query),
                timeout,
            )

        return await until_answered(once, "reading a journal")

    async def append(self, invocation_id: str, entry: Entry, expected_last_seq: int) -> int:
        """Append ``entry`` if the journal's last entry is still ``expected_last_seq``.

        Returns the new entry's stream sequence; raises :class:`JournalFenced` otherwise.
        """
        final = entry.HasField("final")
        subject = self._cfg.journal_subject(invocation_id, final=final)
        headers = {
            **self._fence(invocation_id, expected_last_seq),
            # Same entry republished after a lost ack is dropped instead of doubled.
            "Nats-Msg-Id": f"{invocation_id}:{entry.index}:{entry.worker_id}:{entry.attempt}",
        }
        began = time.perf_counter()
        try:
            ack = await self._js.publish(subject, entry.SerializeToString(), headers=headers)
        except APIError as err:
            if err.err_code in _WRONG_LAST_SEQUENCE:
                raise JournalFenced(
                    f"journal of {invocation_id} moved past sequence {expected_last_seq}"
                ) from err
            raise
        METRICS.journal_append.observe(time.perf_counter() - began)
        if ack.duplicate:
            # Our own earlier publish of this very entry landed; find its sequence.
            msg = await self._read(subject=subject)
            return int(msg.seq or 0)
        return int(ack.seq)

    async def load(self, invocation_id: str) -> LoadedJournal:
        """Read every entry of one invocation, in order."""
        entries: list[Entry] = []
        stored: list[int] = []
        last_seq = 0
        sealed = False
        purged = 0
        async for seq, entry, purged_created, stored_ns in self._messages(invocation_id):
            last_seq = seq  # the seal is not an entry, but the fence counts it
            if entry is not None:
                entries.append(entry)
                stored.append(stored_ns)
            else:
                sealed = True
                purged = purged_created
        return LoadedJournal(entries, last_seq, sealed, purged, stored)

    async def _messages(
        self, invocation_id: str
    ) -> AsyncGenerator[tuple[int, Entry | None, int, int], None]:
        """(stream sequence, entry, purged, stored) of every message of one journal, in
        order; the entry is None for the seal, whose ``purged`` is the creation time (ns) of
        the invocation a Purge sealed it for (0 for an operator's seal); ``stored`` is when
        JetStream stored the message (ns, 0 when not told)."""
        seal = self._cfg.journal_seal_subject(invocation_id)
        if self._nc is not None:
            async for subject, seq, headers, data, stored in self._batched(invocation_id):
                yield _parsed(subject == seal, seq, headers, data, stored)
            return
        seq = 0
        if self._ordered_reads:
            async for message in self._ordered(invocation_id):
                if message is None:
                    return  # read to the end
                seq = message[0]
                yield message
        subject = self._cfg.journal_filter(invocation_id)
        while True:
            try:
                msg = await self._read(seq=seq + 1, subject=subject, next=True)
            except NotFoundError:
                return
            seq = int(msg.seq or 0)
            stored = int(msg.time.timestamp() * 1e9) if msg.time is not None else 0
            yield _parsed(msg.subject == seal, seq, msg.headers or {}, msg.data or b"", stored)

    async def _ordered(
        self, invocation_id: str
    ) -> AsyncGenerator[tuple[int, Entry | None, int, int] | None, None]:
        """Every message of one journal on a replicated store, through one ordered consumer:
        a request for the newest message's sequence (the leader's: it knows every committed
        entry), a request creating the consumer, then the messages pushed in order up to
        that sequence, whatever the journal's length. Wherever the consumer is placed, it
        delivers every message up to that sequence, so the read is complete. A consumer
        that stalls (a node died) hands over to one leader read per remaining entry, from
        where it stopped (the caller's loop). Ends with None once it read to the end."""
        end = await self.end(invocation_id)
        if end.seq == 0:
            yield None
            return
        if end.entry is None or end.entry.index + 1 < ORDERED_FROM:
            return  # short (or sealed): a few leader reads cost less than a consumer
        seal = self._cfg.journal_seal_subject(invocation_id)
        try:
            # Creating the consumer is a proposal to the meta leader, which an election may
            # leave unanswered (chaos seed 432344: a timer 5 s late) and which the server
            # may refuse under load (seed 252168: "maximum consumers limit reached"): then
            # read entry by entry, each read tried again until answered.
            async with asyncio.timeout(TRY_TIMEOUT * 2):
                sub = await self._js.subscribe(
                    self._cfg.journal_filter(invocation_id),
                    stream=self._cfg.journal_stream,
                    ordered_consumer=True,
                    config=ConsumerConfig(
                        deliver_policy=DeliverPolicy.ALL,
                        # Unsubscribing leaves an ephemeral consumer to the server: let it
                        # go soon after the read, not after the default 5 s.
                        inactive_threshold=1.0,
                    ),
                )
        except _NO_CONSUMER as err:
            log.info("journal read of %s: no consumer (%r); reading by entry", invocation_id, err)
            return
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=TRY_TIMEOUT * 2)
                except (TimeoutError, nats.errors.TimeoutError):
                    log.info("journal read of %s stalled; reading the rest by entry", invocation_id)
                    return
                meta = msg.metadata
                seq = int(meta.sequence.stream)
                stamp = meta.timestamp
                stored = int(stamp.timestamp() * 1e9) if stamp is not None else 0
                yield _parsed(msg.subject == seal, seq, msg.headers or {}, msg.data or b"", stored)
                if seq >= end.seq:
                    yield None
                    return
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _batched(
        self, invocation_id: str
    ) -> AsyncGenerator[tuple[str, int, dict[str, str], bytes, int], None]:
        """Every message of one journal through batched direct gets, each batch tried
        again in short tries while JetStream does not answer."""
        subject = self._cfg.journal_filter(invocation_id)
        seq = 1
        while True:
            batch, more = await until_answered(
                functools.partial(self._one_batch, subject, seq), "reading a journal"
            )
            for message in batch:
                yield message
            if not more or not batch:
                return
            seq = batch[-1][1] + 1

    async def _one_batch(
        self, subject: str, seq: int, timeout: float
    ) -> tuple[list[tuple[str, int, dict[str, str], bytes, int]], bool]:
        """One batched direct get from ``seq`` on: the messages, and whether more match."""
        assert self._nc is not None
        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox)
        try:
            request = {
                "seq": seq,
                "next_by_subj": subject,
                "batch": BATCH,
                "max_bytes": BATCH_BYTES,
            }
            await self._nc.publish(
                f"$JS.API.DIRECT.GET.{self._cfg.journal_stream}",
                json.dumps(request).encode(),
                reply=inbox,
            )
            found: list[tuple[str, int, dict[str, str], bytes, int]] = []
            while True:
                msg = await sub.next_msg(timeout=timeout)
                headers = msg.headers or {}
                status = headers.get("Status")
                if status == "404":  # nothing (more) on the journal's subjects
                    return found, False
                if status == "204":  # end of this batch
                    return found, int(headers.get("Nats-Num-Pending", "0")) > 0
                if status is not None:
                    raise APIError(description=f"direct get answered {status}")
                found.append(
                    (
                        headers["Nats-Subject"],
                        int(headers["Nats-Sequence"]),
                        headers,
                        msg.data,
                        _nanos(headers.get("Nats-Time-Stamp", "")),
                    )
                )
        finally:
            await sub.unsubscribe()

    async def end(self, invocation_id: str) -> JournalEnd:
        """The newest message on any of the journal's subjects: one read, whatever the
        journal's length (its entry's index tells the length, its sequence the fence)."""
        try:
            # seq=0 with a subject makes nats-py send last_by_subj in the request's body:
            # the other form puts the subject in the request subject, where a wildcard
            # cannot go.
            msg = await self._read(seq=0, subject=self._cfg.journal_filter(invocation_id))
        except NotFoundError:
            return JournalEnd(0, None)
        if msg.subject == self._cfg.journal_seal_subject(invocation_id):
            return JournalEnd(int(msg.seq or 0), None)
        entry = Entry()
        entry.ParseFromString(msg.data or b"")
        return JournalEnd(int(msg.seq or 0), entry)

    async def entry_at(self, invocation_id: str, index: int) -> Entry | None:
        """The entry at step ``index``, read from the first entry on: one direct get per
        entry up to it (JetStream has no get of the previous message on a subject)."""
        async with contextlib.aclosing(self._messages(invocation_id)) as messages:
            async for _, entry, _, _ in messages:
                if entry is not None and entry.index >= index:
                    return entry if entry.index == index else None
        return None

    def _fence(self, invocation_id: str, expected_last_seq: int) -> dict[str, str]:
        """Headers that make a publish land only if the journal's last message, on any of
        its subjects, is still ``expected_last_seq`` (0: the journal is empty)."""
        return {
            "Nats-Expected-Last-Subject-Sequence": str(expected_last_seq),
            "Nats-Expected-Last-Subject-Sequence-Subject": self._cfg.journal_filter(invocation_id),
        }

    async def _last_on(self, subject: str) -> Entry | None:
        """The newest message on one subject of the journal stream, parsed, if any."""
        try:
            msg = await self._read(subject=subject)
        except NotFoundError:
            return None
        entry = Entry()
        entry.ParseFromString(msg.data or b"")
        return entry

    async def sealed(self, invocation_id: str) -> bool:
        """Whether the control plane sealed this journal (see :meth:`seal`)."""
        return await self._last_on(self._cfg.journal_seal_subject(invocation_id)) is not None

    async def seal(self, invocation_id: str) -> bool:
        """Mark a journal nobody has written yet; False when a worker already has.

        A worker takes a fresh invocation (one whose work item carries its record) without
        reading the record first, and appends its first entry expecting an empty journal.
        The control plane seals the journal before it writes the record of such an
        invocation (an operator's Pause or Cancel as it starts): that first append is then
        fenced, and the worker claims the record the ordinary way, seeing what was asked.
        When the seal comes too late, the worker is past its first append and hears of the
        change from the signal, its RUNNING record write, or its final record write.
        """
        try:
            await self._js.publish(
                self._cfg.journal_seal_subject(invocation_id),
                b"",
                headers=self._fence(invocation_id, 0),
            )
        except APIError as err:
            if err.err_code in _WRONG_LAST_SEQUENCE:
                return False
            raise
        return True

    async def purge(self, invocation_id: str, created_ns: int) -> None:
        """Delete a journal, with its awakeable and promise resolutions, and leave a seal
        naming the purged invocation by its creation time, ``created_ns``.

        The seal is published first, unconditionally, and then everything before it is
        deleted, so the journal is never empty in between. A worker that still holds a
        fresh item of the purged invocation is fenced at its first append (it expects an
        empty journal), and one that loads the journal finds it sealed; either way it
        turns to the record, which is purged, and drops the item instead of running the
        handler again. A worker that claimed a record of that invocation written just
        before the purge finds the seal naming it, and drops its item too. An id used
        again (an idempotency key, a workflow id) starts its new journal after the seal,
        which a load skips like any seal (it names another invocation).
        """
        ack = await self._js.publish(
            self._cfg.journal_seal_subject(invocation_id),
            b"",
            headers={PURGED_HEADER: str(created_ns)},
        )
        await self._js.purge_stream(
            self._cfg.journal_stream,
            subject=f"{self._cfg.prefix}.journal.{invocation_id}.>",
            seq=int(ack.seq),
        )

    async def final_entry(self, invocation_id: str) -> Entry | None:
        """The entry that carries the invocation's outcome, once journaled (the fence
        admits one)."""
        return await self._last_on(self._cfg.journal_subject(invocation_id, final=True))


def _parsed(
    is_seal: bool, seq: int, headers: dict[str, str], data: bytes, stored: int
) -> tuple[int, Entry | None, int, int]:
    if is_seal:
        return seq, None, int(headers.get(PURGED_HEADER, 0)), stored
    entry = Entry()
    entry.ParseFromString(data)
    return seq, entry, 0, stored


def _nanos(stamp: str) -> int:
    """An RFC 3339 time with up to nanoseconds (``Nats-Time-Stamp``) as ns since the epoch;
    0 when absent or unreadable."""
    if not stamp:
        return 0
    whole, _, rest = stamp.rstrip("Z").partition(".")
    try:
        seconds = dt.datetime.fromisoformat(whole).replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return 0
    digits = "".join(c for c in rest if c.isdigit())[:9].ljust(9, "0")
    return int(seconds) * 1_000_000_000 + int(digits)
