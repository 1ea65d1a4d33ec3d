"""Which work a worker asks for: one lane per work consumer it takes from, and how its free
slots are shared among them.

Work is routed by service (docs/architecture.md, "Routing"): each service has a durable
consumer on its own subjects, shared by every worker that hosts it, and a pinned service
has one more per code version. A worker asks each of its lanes with raw JetStream pull
requests, sized so that together they never ask for more than its free slots, except that
every lane keeps at least one item asked for: a worker must hear of work for each of its
services without waiting for another lane's request to expire. Those few extra items wait
in the worker's backlog for a slot (``Worker``), in delivery order.

Sharing: a lane that got work from its last request is *hungry*; one whose request expired
empty is *quiet*. Quiet lanes share half of the free slots, hungry ones share the rest
equally, and once half the slots are free again, the hungry lanes ask for an equal share of
them. So a service with a deep backlog cannot starve another one on the same worker: each
gets an equal part of the slots while both have work, and a quiet one takes little.
"""

from __future__ import annotations

import collections
import dataclasses
import time

#: Longest life of a pull request. A worker frozen (SIGSTOP, a long GC, a partition) keeps
#: its open pull requests on the server, which still delivers into them: an item redelivered
#: after the ack wait could land in the frozen worker's request and wait again. So a request
#: lives at most a third of the ack wait (``Lanes.expires``), and a redelivery finds only
#: live workers' requests.
PULL_EXPIRES = 5.0
#: The server sends an idle heartbeat on an open pull request this often when it has nothing
#: to deliver. A pull request lives on the consumer's leader: when that node dies, or after a
#: reconnect, the request is gone without a word, and only the missing heartbeats tell.
PULL_HEARTBEAT = 0.5
#: Silence after which a lane's open pull requests count as lost and a new one is sent:
#: three heartbeats missed, so a new consumer leader gets work flowing again within about
#: 1.5 s of its election instead of at the old request's expiry.
PULL_SILENCE = 3 * PULL_HEARTBEAT
#: How long a lane whose consumer does not exist (yet) waits before asking again.
ABSENT_PAUSE = 1.0


@dataclasses.dataclass
class Request:
    """One open pull request: until when the server keeps it, and what it may still bring."""

    expires_at: float
    remaining: int
    brought: int = 0


@dataclasses.dataclass
class Lane:
    """One work consumer a worker takes from: a service's shared lane, or a pinned
    service's lane of this worker's code version."""

    service: str
    consumer: str
    api: str
    inbox: str = ""
    ack_wait: float = 0.0
    requests: collections.deque[Request] = dataclasses.field(default_factory=collections.deque)
    heard: float = dataclasses.field(default_factory=time.monotonic)
    hungry: bool = True
    absent_until: float = 0.0

    @property
    def requested(self) -> int:
        return sum(r.remaining for r in self.requests)

    def tidy(self, now: float) -> bool:
        """Forget requests the server must have expired (their end may have been missed,
        e.g. across a reconnect) or that went silent. True when it went silent."""
        while self.requests and self.requests[0].expires_at < now - 1.0:
            self.requests.popleft()
        if self.requests and now - self.heard > PULL_SILENCE:
            self.requests.clear()
            return True
        return False

    def delivered(self) -> None:
        """An item arrived on this lane's inbox."""
        self.heard = time.monotonic()
        self.hungry = True
        if self.requests:
            first = self.requests[0]
            first.remaining -= 1
            first.brought += 1
            if first.remaining <= 0:
                self.requests.popleft()

    def ended(self, status: str) -> None:
        """A status on the inbox: 408 (a request expired), 409 (the server ended it), 503
        (no such consumer: the control plane has not created it yet); others are idle
        heartbeats."""
        self.heard = time.monotonic()
        if status == "503":
            self.requests.clear()
            self.absent_until = time.monotonic() + ABSENT_PAUSE
        elif status in ("408", "409") and self.requests:
            done = self.requests.popleft()
            self.hungry = done.brought > 0

    def ready(self, now: float) -> bool:
        return now >= self.absent_until


class Lanes:
    """Every lane of one worker, and the pull requests its free slots allow."""

    def __init__(self, lanes: list[Lane], slots: int) -> None:
        self.lanes = lanes
        self.slots = slots
        self.expires = PULL_EXPIRES

    @property
    def requested(self) -> int:
        return sum(lane.requested for lane in self.lanes)

    def plan(self, free: int, now: float) -> list[tuple[Lane, int]]:
        """The pull requests to send now, as (lane, batch). ``free`` is the slots neither
        busy, nor taken by the backlog, nor already asked for; beyond it, lanes may ask for
        one item each as long as the worker is over by fewer items than it has lanes less
        one (a worker with one lane never asks beyond its slots)."""
        room = free + len(self.lanes) - 1
        free = max(0, free)
        ready = [lane for lane in self.lanes if lane.ready(now)]
        bare = [lane for lane in ready if not lane.requests]
        quiet = [lane for lane in bare if not lane.hungry]
        hungry = [lane for lane in bare if lane.hungry]
        asks: list[tuple[Lane, int]] = []

        def ask(lanes: list[Lane], pool: int) -> int:
            nonlocal room
            share = pool // len(lanes) if lanes else 0
            used = 0
            for lane in lanes:
                if room < 1:
                    break
                batch = min(max(1, share), room)
                asks.append((lane, batch))
                room -= batch
                used += batch
            return used

        if quiet:
            free -= ask(quiet, free // 2)
            free = max(0, free)
        if hungry:
            ask(hungry, free)
        elif free >= max(1, self.slots // 2):
            # Ask again once half the slots are free, not after every finished invocation:
            # a pull request is a message for the server to handle, and one per invocation
            # is measurable on a busy machine.
            ask([lane for lane in ready if lane.hungry] or ready, free)
        return asks

    def asked(self, lane: Lane, batch: int, now: float) -> None:
        if not lane.requests:
            lane.heard = now  # the silence of a new request counts from now
        lane.requests.append(Request(now + self.expires, batch))

    def next_deadline(self, now: float) -> float:
        """How long the pull loop may sleep before it must look again."""
        timeout = self.expires + 0.5
        for lane in self.lanes:
            if lane.requests:
                timeout = min(timeout, max(0.05, lane.requests[0].expires_at - now + 1.05))
                timeout = min(timeout, PULL_HEARTBEAT)  # to notice a silence in time
            elif not lane.ready(now):
                timeout = min(timeout, max(0.05, lane.absent_until - now))
        return timeout
