"""In-memory view of every invocation, folded from a watch of the invocations bucket.

ListWorkflows, Stats and AwaitResult answer from here, never by reading the records per
request: the watch replays the latest value of each key once at start-up, then pushes every
change as it is written. Each control plane process keeps its own view, so they scale out.

Costs, with n invocations stored (docs/benchmarks.md has the measured figures): memory is
a slotted ``Summary`` per invocation (no payloads; handler names and keys shared) plus its
place in the creation order and in one status set; Stats is O(handlers); a List page is
O(page) when its filters match a fair share of the invocations (it walks the creation
order), and O(m log m) over the m matching ones when they are few (it sorts just them: a
status, handler or key set), choosing by which costs less; a walk that finds the
matches bunched far back gives up early and sorts, so a page never walks the whole order;
the reconciler visits only PENDING and SCHEDULED invocations, and retention only those
ended before its cutoff (a heap by end time).
"""

from __future__ import annotations

import asyncio
import bisect
import builtins
import collections
import heapq
import logging
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext

from durable.contract import is_terminal
from durable.internal.v1 import storage_pb2
from durable.v1 import types_pb2
from durable_server.control.follow import BucketFollower

log = logging.getLogger("durable.control")

Record = storage_pb2.InvocationRecord
_NEEDS_ITEM = (types_pb2.INVOCATION_STATUS_PENDING, types_pb2.INVOCATION_STATUS_SCHEDULED)
#: A filtered page sorts its m matching invocations (about 3 us each here) instead of
#: walking the creation order (about page * n / m visits of 0.6 us, if the matches are
#: spread evenly) when m * m * _SORT_COST < page * n; a walk that visits far more than the
#: even spread predicts (the matches are bunched in old invocations) gives up and sorts.
_SORT_COST = 5
_WALK_SLACK = 20
_WALK_AT_LEAST = 10_000


@dataclass(slots=True)
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
            handler=sys.intern(r.handler),
            key=sys.intern(r.key) if r.key else "",
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
        self._by_handler: dict[str, collections.Counter[int]] = collections.defaultdict(
            collections.Counter
        )
        # The ids in each status (their sizes are Stats' counts), of each handler and of
        # each key: what a filtered page sorts when its matches are few.
        self._status_ids: dict[int, set[str]] = collections.defaultdict(set)
        self._handler_ids: dict[str, set[str]] = collections.defaultdict(set)
        self._key_ids: dict[str, set[str]] = collections.defaultdict(set)
        # (ended_ns, id) of ended invocations, oldest first; stale entries (purged, or
        # ended again later) are skipped when popped.
        self._ended: builtins.list[tuple[int, str]] = []
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
            _insert_ordered(self._order, (new.created_ns, new.id))
            self._handler_ids[new.handler].add(new.id)
            if new.key:
                self._key_ids[new.key].add(new.id)
        self._by_id[new.id] = new
        self._count(new, +1)
        if new.ended_ns and (old is None or old.ended_ns != new.ended_ns):
            heapq.heappush(self._ended, (new.ended_ns, new.id))
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
        heapq.heappush(self._ended, (ended_ns, old.id))

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
        _discard(self._handler_ids, old.handler, old.id)
        if old.key:
            _discard(self._key_ids, old.key, old.id)
        i = bisect.bisect_left(self._order, (old.created_ns, old.id))
        if i < len(self._order) and self._order[i] == (old.created_ns, old.id):
            del self._order[i]

    def _count(self, s: Summary, delta: int) -> None:
        if delta > 0:
            self._status_ids[s.status].add(s.id)
        else:
            _discard(self._status_ids, s.status, s.id)
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
        service: str = "",
        created_from_ns: int = 0,
        created_before_ns: int = 0,
        page_size: int,
        after: Cursor | None,
    ) -> tuple[builtins.list[Summary], Cursor | None, int]:
        """One page, newest first, plus the cursor of the next page and the match count.

        A creation-time range is a slice of the creation order (two bisections); a page
        walks it from its newest end, or sorts the few matches of the other filters when
        they are fewer (costed as for the other filters). Counting matches in a range takes
        the smaller of the range and the other filters' candidates.
        """
        wanted = set(statuses)
        prefix = f"{service}/" if service else ""

        def match(s: Summary) -> bool:
            return (
                (not wanted or s.status in wanted)
                and (not handler or s.handler == handler)
                and (not key or s.key == key)
                and (not prefix or s.handler.startswith(prefix))
                and (not created_from_ns or s.created_ns >= created_from_ns)
                and (not created_before_ns or s.created_ns < created_before_ns)
            )

        lo = bisect.bisect_left(self._order, (created_from_ns, "")) if created_from_ns else 0
        hi = len(self._order)
        if created_before_ns:
            hi = bisect.bisect_left(self._order, (created_before_ns, ""))
        ranged = bool(created_from_ns or created_before_ns)
        filtered = bool(wanted or handler or key or service)
        few = self._few(wanted, handler, key, service) if filtered else None
        if ranged:
            if few is not None and len(few) < hi - lo:
                total = sum(1 for i in few if match(self._by_id[i]))
            else:
                total = sum(1 for _, i in self._order[lo:hi] if match(self._by_id[i]))
        else:
            total = self._count_matches(wanted, handler, key, service, match)
        n = hi - lo
        if few is not None and total * total * _SORT_COST < page_size * n:
            page, nxt = self._sorted_page(few, match, page_size, after)
            return page, nxt, total
        start = hi
        if after is not None:
            start = min(start, bisect.bisect_left(self._order, (after.created_ns, after.id)))
        budget = n
        if filtered:
            budget = max(_WALK_AT_LEAST, _WALK_SLACK * page_size * n // max(total, 1))
        page = []
        i = start - 1
        while i >= lo and len(page) <= page_size:  # one more than a page: is there a next?
            s = self._by_id[self._order[i][1]]
            if match(s):
                page.append(s)
            i -= 1
            budget -= 1
            if budget < 0 and few is not None:
                page, nxt = self._sorted_page(few, match, page_size, after)
                return page, nxt, total
        more = len(page) > page_size
        page = page[:page_size]
        nxt = Cursor(page[-1].created_ns, page[-1].id) if page and more else None
        return page, nxt, total

    def _service_ids(self, service: str) -> builtins.list[str]:
        prefix = f"{service}/"
        return [i for h, ids in self._handler_ids.items() if h.startswith(prefix) for i in ids]

    def _few(
        self, wanted: set[int], handler: str, key: str, service: str = ""
    ) -> builtins.list[str] | set[str]:
        """The smallest id set holding every match of the filters."""
        sizes: builtins.list[tuple[int, str]] = []
        if key:
            sizes.append((len(self._key_ids.get(key, ())), "key"))
        if handler:
            sizes.append((len(self._handler_ids.get(handler, ())), "handler"))
        if service:
            prefix = f"{service}/"
            size = sum(len(ids) for h, ids in self._handler_ids.items() if h.startswith(prefix))
            sizes.append((size, "service"))
        if wanted:
            sizes.append((sum(len(self._status_ids.get(st, ())) for st in wanted), "status"))
        smallest = min(sizes)[1]
        if smallest == "key":
            return self._key_ids.get(key, set())
        if smallest == "handler":
            return self._handler_ids.get(handler, set())
        if smallest == "service":
            return self._service_ids(service)
        return [i for st in wanted for i in self._status_ids.get(st, ())]

    def _count_matches(
        self,
        wanted: set[int],
        handler: str,
        key: str,
        service: str,
        match: Callable[[Summary], bool],
    ) -> int:
        if key:
            return sum(1 for i in self._key_ids.get(key, ()) if match(self._by_id[i]))
        if service and not handler:
            prefix = f"{service}/"
            return sum(
                c
                for h, counts in self._by_handler.items()
                if h.startswith(prefix)
                for st, c in counts.items()
                if not wanted or st in wanted
            )
        if handler:
            if service and not handler.startswith(f"{service}/"):
                return 0
            counts = self._by_handler.get(handler, collections.Counter())
            return sum(c for st, c in counts.items() if not wanted or st in wanted)
        return sum(len(ids) for st, ids in self._status_ids.items() if not wanted or st in wanted)

    def stats(self) -> tuple[dict[int, int], dict[str, dict[int, int]]]:
        by_handler = {h: dict(c) for h, c in sorted(self._by_handler.items())}
        return {st: len(ids) for st, ids in self._status_ids.items()}, by_handler

    def _sorted_page(
        self,
        candidates: set[str] | builtins.list[str],
        match: Callable[[Summary], bool],
        page_size: int,
        after: Cursor | None,
    ) -> tuple[builtins.list[Summary], Cursor | None]:
        """A page of the few ``candidates`` that match, sorted newest first."""
        found = [s for s in (self._by_id[i] for i in candidates) if match(s)]
        if after is not None:
            found = [s for s in found if (s.created_ns, s.id) < (after.created_ns, after.id)]
        found.sort(key=lambda s: (s.created_ns, s.id), reverse=True)
        page = found[:page_size]
        nxt = Cursor(page[-1].created_ns, page[-1].id) if len(found) > page_size else None
        return page, nxt

    def stale(self, older_than_ns: int, limit: int = 1000) -> builtins.list[str]:
        """PENDING and SCHEDULED invocations unchanged since ``older_than_ns``: the ones the
        reconciler checks for a missing work item (only those statuses are visited)."""
        out: builtins.list[str] = []
        for status in _NEEDS_ITEM:
            for invocation_id in self._status_ids.get(status, ()):
                if self._by_id[invocation_id].updated_ns < older_than_ns:
                    out.append(invocation_id)
                    if len(out) >= limit:
                        return out
        return out

    def ended_before(self, cutoff_ns: int, limit: int = 1000) -> builtins.list[str]:
        """Ended invocations whose end is older than ``cutoff_ns`` (retention), oldest
        first: popped from the heap by end time, so only those are visited."""
        out: builtins.list[str] = []
        seen: set[str] = set()
        while self._ended and self._ended[0][0] < cutoff_ns and len(out) < limit:
            ended_ns, invocation_id = heapq.heappop(self._ended)
            s = self._by_id.get(invocation_id)
            if s is None or s.ended_ns != ended_ns or not is_terminal(s.status):
                continue  # purged, or not this end any more
            if invocation_id not in seen:
                seen.add(invocation_id)
                out.append(invocation_id)
        # Until purged they stay due: put them back for the next round.
        for invocation_id in out:
            heapq.heappush(self._ended, (self._by_id[invocation_id].ended_ns, invocation_id))
        return out

    def __len__(self) -> int:
        return len(self._by_id)


def _insert_ordered(order: builtins.list[tuple[int, str]], item: tuple[int, str]) -> None:
    """Insert keeping ``order`` sorted; new invocations are almost always the newest, which
    an append covers without a search."""
    if not order or order[-1] < item:
        order.append(item)
    else:
        bisect.insort(order, item)


def _discard(sets: dict[Any, set[str]], name: Any, invocation_id: str) -> None:
    ids = sets.get(name)
    if ids is not None:
        ids.discard(invocation_id)
        if not ids:
            del sets[name]
