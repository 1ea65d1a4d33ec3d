"""How long a worker can be sure it still holds the invocation it drives, and the check it
makes before a side effect once it cannot be sure.

JetStream redelivers a work item to another worker once ``ack_wait`` passes without an ack
or an in-progress renewal. A worker that was frozen for that long (SIGSTOP, a long pause
of the process, a network split) may find, when it wakes, that another worker has taken the
invocation over and journaled steps since. The journal's fence stops its next append, but
not a side effect it starts before appending. So the worker keeps a :class:`Lease` per work
item: the monotonic time of the last in-progress renewal the server confirmed (a ``+WPI``
sent as a request is answered once the consumer has applied it). Within two thirds of an
ack wait of that, no other worker can have been handed the item, and a step runs with no
extra request. Past it, :meth:`ClaimGuard.check` reads the journal's newest message and the
record, and stops the attempt (:class:`ClaimLost`) if another worker appended or claimed
since.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.msg import Msg

from durable._store.journal import Journal
from durable._store.records import Record, RecordNotFound, RecordStore
from durable._worker.signals import Fenced


def stored_at(msg: Msg) -> float:
    """When JetStream stored a work item, as a monotonic time: the server cannot have
    handed it out, and started its ack timer, before that. The timestamp is by the server's
    clock and its age by the worker's, so they must agree to well within ``ack_wait`` (the
    fast path's young-item test assumes as much); one ahead of the worker's counts as now."""
    published = msg.metadata.timestamp
    age = time.time() - published.timestamp() if published else 0.0
    return time.monotonic() - max(0.0, age)


class ClaimLost(Fenced):
    """Another worker took the invocation over while this one could not renew its claim:
    stop before the next side effect, and leave the work item to it."""


class Lease:
    """Since when the server cannot have handed one work item to anyone else.

    ``since`` is a monotonic time at or before the server last reset the item's ack timer:
    when the item was stored (:func:`stored_at`), then the send time of each confirmed
    renewal. The item cannot be redelivered before ``since + ack_wait``. A renewal
    confirmed later than that comes too late to prove anything (the item may have been
    redelivered in between), and the lease stays lapsed until :meth:`ClaimGuard.check` has
    looked.
    """

    def __init__(
        self,
        ack_wait: float,
        request: Callable[[], Awaitable[object]],
        since: float,
    ) -> None:
        self._ack_wait = ack_wait
        self._request = request
        self._since: float | None = since

    def held(self) -> bool:
        """Whether a renewal the server confirmed is under two thirds of an ack wait old.
        The heartbeat renews every third of one, so a healthy worker always holds its
        lease; the last third is the margin before the server could redeliver."""
        return self._since is not None and time.monotonic() - self._since < self._ack_wait * 2 / 3

    async def confirm(self) -> float | None:
        """Send one renewal and wait for the server's answer: its send time, or None when
        it went unanswered."""
        sent = time.monotonic()
        with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
            await self._request()
            return sent
        return None

    async def renew(self) -> None:
        """One renewal of the heartbeat: extends the lease only if it came in time."""
        sent = await self.confirm()
        if sent is None or self._since is None:
            return
        if time.monotonic() - self._since < self._ack_wait:
            self._since = max(self._since, sent)
        else:
            self._since = None  # a whole ack wait without one: it may have been redelivered

    def restore(self, sent: float) -> None:
        """The check found the invocation still ours after a renewal sent at ``sent``."""
        self._since = sent if self._since is None else max(self._since, sent)


class ClaimGuard:
    """The check one attempt makes before each side effect."""

    def __init__(
        self,
        lease: Lease | None,
        journal: Journal,
        records: RecordStore,
        invocation_id: str,
        still_ours: Callable[[Record], bool],
        loaded_seq: int,
    ) -> None:
        self._lease = lease
        self._journal = journal
        self._records = records
        self._invocation_id = invocation_id
        self._still_ours = still_ours
        # The newest entry any worker that claims the invocation after us has seen: what
        # the attempt loaded, then each append of ours while the lease was held (no other
        # worker could be handed the item before it).
        self._seen_by_successors = loaded_seq

    def sure(self) -> bool:
        """No check needed: the lease is held (or there is none, as in tests that drive an
        executor by hand)."""
        return self._lease is None or self._lease.held()

    def appended(self, seq: int) -> None:
        """An append of ours landed at ``seq``."""
        if self.sure():
            self._seen_by_successors = seq

    async def check(self, last_seq: int) -> None:
        """Stop the attempt if another worker has taken the invocation over; otherwise renew
        the lease, so the next steps need no check. ``last_seq``: the newest entry this
        attempt knows of.

        - The journal moved past ``last_seq``: another worker appended, and our next append
          would be fenced; :class:`ClaimLost`. (:class:`Fenced` when it is the control
          plane's seal: the executor then claims the record the ordinary way.)
        - The record names another attempt, and we appended nothing since we were last
          sure of the lease: that worker loaded our whole journal and goes on from its end,
          as we would; :class:`ClaimLost`. If we did append since, it may have loaded the
          journal before that, and then our entries fence it at its next append: go on.
        """
        assert self._lease is not None
        sent, end, record = await asyncio.gather(
            self._lease.confirm(), self._journal.end(self._invocation_id), self._record()
        )
        inv = self._invocation_id
        if end.seq != last_seq:
            if end.entry is None:
                raise Fenced(f"journal of {inv} was sealed")
            raise ClaimLost(
                f"journal of {inv} moved past sequence {last_seq} while this worker could "
                "not renew its claim"
            )
        if (
            record is not None
            and not self._still_ours(record)
            and last_seq == self._seen_by_successors
        ):
            raise ClaimLost(
                f"invocation {inv} was claimed by attempt {record.attempt} "
                f"({record.worker_id or 'no worker'}) while this worker could not renew its "
                "claim"
            )
        if sent is not None:
            self._lease.restore(sent)

    async def _record(self) -> Record | None:
        try:
            return (await self._records.get(self._invocation_id)).record
        except RecordNotFound:
            return None
