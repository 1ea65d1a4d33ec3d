"""In-memory view of every invocation, folded from a watch of the invocations bucket.

ListWorkflows, Stats and AwaitResult answer from here, never by reading the records per
request: the watch replays the latest value of each key once at start-up, then pushes every
change as it is written. Each control plane process keeps its own view, so they scale out.
"""

from __future__ import annotations

import asyncio
import bisect
import builtins
import collections
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from nats.js import JetStreamContext

from durable.contract import is_terminal
from durable.internal.v1 import storage_pb2
from durable.v1 import types_pb2
from durable_server.control.follow import BucketFollower

log = logging.getLogger("durable.control")

Record = storage_pb2.InvocationRecord
_NEEDS_ITEM = (types_pb2.INVOCATION_STATUS_PENDING, types_pb2.INVOCATION_STATUS_SCHEDULED)


@dataclass
class Summary:
    """What the index keeps per invocation (no payloads)."""

    id: str
    handler: str
    key: str
    status: int
    attempt: int
    created_ns: int
    updated_ns: int
    ended_ns: int

    @classmethod
    def of(cls, r: Record) -> Summary:
        return cls(
            id=r.id,
            handler=r.handler,
            key=r.key,
            status=r.status,
            attempt=r.attempt,
            created_ns=r.created_at.ToNanoseconds(),
            updated_ns=r.updated_at.ToNanoseconds(),
            ended_ns=r.ended_at.ToNanoseconds() if r.HasField("ended_at") else 0,
        )

    def to_proto(self) -> types_pb2.InvocationSummary:
        s = types_pb2.InvocationSummary(
            invocation_id=self.id,
            handler=self.handler,
            key=self.key,
            status=self.status,  # type: ignore[arg-type]
            attempt=self.attempt,
        )
        s.created_at.FromNanoseconds(self.created_ns)
        s.updated_at.FromNanoseconds(self.updated_ns)
        if self.ended_ns:
            s.ended_at.FromNanoseconds(self.ended_ns)
        return s


@dataclass
class Cursor:
    """Position after which the next page starts (exclusive), newest first."""

    created_ns: int
    id: str


class InvocationIndex:
    """Summaries by id, ordered by creation, with counters and result waiters."""

    def __init__(self) -> None:
        self._by_id: dict[str, Summary] = {}
        self._order: builtins.list[tuple[int, str]] = []
        self._by_status: collections.Counter[int] = collections.Counter()
        self._by_handler: dict[str, collections.Counter[int]] = collections.defaultdict(
            collections.Counter
        )
        self._waiters: dict[str, builtins.list[asyncio.Future[Record]]] = {}
        self._listeners: dict[str, builtins.list[Callable[[Record], None]]] = {}
        self._follower = BucketFollower(
            "invocation-index", Record, on_put=lambda _, r: self.apply(r), on_delete=self.remove
        )

    # -- feeding --------------------------------------------------------------------------

    async def start(self, js: JetStreamContext, bucket: str) -> None:
        """Follow the bucket; returns once the existing records are loaded."""
        await self._follower.start(js, bucket)

    async def stop(self) -> None:
        await self._follower.stop()

    def apply(self, record: Record) -> None:
        new = Summary.of(record)
        old = self._by_id.get(new.id)
        if old is not None:
            if is_terminal(old.status) and not is_terminal(new.status):
                return  # an older revision, arriving after the outcome was announced
            self._count(old, -1)
        else:
            bisect.insort(self._order, (new.created_ns, new.id))
        self._by_id[new.id] = new
        self._count(new, +1)
        for listener in self._listeners.get(new.id, ()):
            listener(record)
        if is_terminal(record.status):
            self.resolve_waiters(record)

    def mark_ended(self, ended: Record) -> None:
        """Apply an outcome journaled before its record is written (``ended`` is the record
        as it will be written: status, end time and the attempt that ended it)."""
        old = self._by_id.get(ended.id)
        if old is None or is_terminal(old.status):
            return
        self._count(old, -1)
        ended_ns = ended.ended_at.ToNanoseconds()
        old.status, old.ended_ns, old.updated_ns = ended.status, ended_ns, ended_ns
        old.attempt = max(old.attempt, ended.attempt)
        self._count(old, +1)

    def resolve_waiters(self, record: Record) -> None:
        """Hand an ended invocation's record to whoever awaits its result."""
        for fut in self._waiters.pop(record.id, []):
            if not fut.done():
                fut.set_result(record)

    def apply_if_absent(self, record: Record) -> None:
        """Show a just-accepted invocation before its record is written (see plane.invoke)."""
        if record.id not in self._by_id:
            self.apply(record)

    def remove(self, invocation_id: str) -> None:
        old = self._by_id.pop(invocation_id, None)
        if old is None:
            return
        self._count(old, -1)
        i = bisect.bisect_left(self._order, (old.created_ns, old.id))
        if i < len(self._order) and self._order[i] == (old.created_ns, old.id):
            del self._order[i]

    def _count(self, s: Summary, delta: int) -> None:
        self._by_status[s.status] += delta
        self._by_handler[s.handler][s.status] += delta
        if self._by_handler[s.handler][s.status] == 0:
            del self._by_handler[s.handler][s.status]
            if not self._by_handler[s.handler]:
                del self._by_handler[s.handler]

    # -- reading --------------------------------------------------------------------------

    def get(self, invocation_id: str) -> Summary | None:
        return self._by_id.get(invocation_id)

    def waiter(self, invocation_id: str) -> asyncio.Future[Record]:
        """A future resolved with the record when the invocation ends."""
        fut: asyncio.Future[Record] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(invocation_id, []).append(fut)
        return fut

    def listen(self, invocation_id: str, listener: Callable[[Record], None]) -> None:
        """Call ``listener`` with each new record of one invocation (WatchWorkflow)."""
        self._listeners.setdefault(invocation_id, []).append(listener)

    def unlisten(self, invocation_id: str, listener: Callable[[Record], None]) -> None:
        listeners = self._listeners.get(invocation_id)
        if listeners and listener in listeners:
            listeners.remove(listener)
            if not listeners:
                del self._listeners[invocation_id]

    def drop_waiter(self, invocation_id: str, fut: asyncio.Future[Record]) -> None:
        waiters = self._waiters.get(invocation_id)
        if waiters and fut in waiters:
            waiters.remove(fut)
            if not waiters:
                del self._waiters[invocation_id]

    def list(
        self,
        *,
        statuses: Iterable[int] = (),
        handler: str = "",
        key: str = "",
        page_size: int,
        after: Cursor | None,
    ) -> tuple[builtins.list[Summary], Cursor | None, int]:
        """One page, newest first, plus the cursor of the next page and the match count."""
        wanted = set(statuses)

        def match(s: Summary) -> bool:
            return (
                (not wanted or s.status in wanted)
                and (not handler or s.handler == handler)
                and (not key or s.key == key)
            )

        total = self._count_matches(wanted, handler, key, match)
        start = len(self._order)
        if after is not None:
            start = bisect.bisect_left(self._order, (after.created_ns, after.id))
        page: builtins.list[Summary] = []
        i = start - 1
        while i >= 0 and len(page) < page_size:
            s = self._by_id[self._order[i][1]]
            if match(s):
                page.append(s)
            i -= 1
        more = any(match(self._by_id[self._order[j][1]]) for j in range(i, -1, -1))
        nxt = Cursor(page[-1].created_ns, page[-1].id) if page and more else None
        return page, nxt, total

    def _count_matches(
        self, wanted: set[int], handler: str, key: str, match: Callable[[Summary], bool]
    ) -> int:
        if key:
            return sum(1 for s in self._by_id.values() if match(s))
        if handler:
            counts = self._by_handler.get(handler, collections.Counter())
            return sum(c for st, c in counts.items() if not wanted or st in wanted)
        return sum(c for st, c in self._by_status.items() if not wanted or st in wanted)

    def stats(self) -> tuple[dict[int, int], dict[str, dict[int, int]]]:
        by_handler = {h: dict(c) for h, c in sorted(self._by_handler.items())}
        return dict(self._by_status), by_handler

    def stale(self, older_than_ns: int, limit: int = 1000) -> builtins.list[str]:
        """PENDING and SCHEDULED invocations unchanged since ``older_than_ns``: the ones the
        reconciler checks for a missing work item."""
        out: builtins.list[str] = []
        for s in self._by_id.values():
            if s.status in _NEEDS_ITEM and s.updated_ns < older_than_ns:
                out.append(s.id)
                if len(out) >= limit:
                    break
        return out

    def ended_before(self, cutoff_ns: int, limit: int = 1000) -> builtins.list[str]:
        """Ended invocations whose end is older than ``cutoff_ns`` (retention)."""
        out: builtins.list[str] = []
        for s in self._by_id.values():
            if is_terminal(s.status) and s.ended_ns and s.ended_ns < cutoff_ns:
                out.append(s.id)
                if len(out) >= limit:
                    break
        return out

    def __len__(self) -> int:
        return len(self._by_id)
