"""The handler catalog: what the workers registered, followed live from the workers bucket.

A worker's entry is refreshed by its heartbeat and ages out a day after it stops, so a
handler stays known (and Invoke keeps accepting it) across worker restarts and deploys.
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Callable

from google.protobuf.timestamp_pb2 import Timestamp
from nats.js import JetStreamContext

from durable.contract import service_of
from durable.internal.v1 import storage_pb2
from durable.v1 import types_pb2
from durable_server.control.follow import BucketFollower

log = logging.getLogger("durable.control")


class HandlerCatalog:
    """Live view of worker registrations."""

    def __init__(self, live_after: float) -> None:
        self._workers: dict[str, storage_pb2.WorkerRegistration] = {}
        self._live_after = live_after
        self._listeners: list[Callable[[storage_pb2.WorkerRegistration], None]] = []
        self._follower = BucketFollower(
            "handler-catalog",
            storage_pb2.WorkerRegistration,
            on_put=self._put,
            on_delete=self._forget,
        )

    def listen(self, listener: Callable[[storage_pb2.WorkerRegistration], None]) -> None:
        """Call ``listener`` with every registration as it arrives (those stored already,
        once the follow starts, then each heartbeat)."""
        self._listeners.append(listener)

    def _put(self, worker_id: str, reg: storage_pb2.WorkerRegistration) -> None:
        self._workers[worker_id] = reg
        for listener in self._listeners:
            listener(reg)

    def _forget(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)

    async def start(self, js: JetStreamContext, bucket: str) -> None:
        await self._follower.start(js, bucket)

    async def stop(self) -> None:
        await self._follower.stop()

    def handlers(self) -> dict[str, types_pb2.HandlerInfo]:
        """Every known handler with its live worker count and when it was last seen."""
        now = time.time()
        out: dict[str, types_pb2.HandlerInfo] = {}
        for reg in self._workers.values():
            beat = reg.heartbeat_at.ToNanoseconds() / 1e9
            live = now - beat <= self._live_after
            for h in reg.handlers:
                info = out.get(h.name)
                if info is None or beat > info.last_seen.ToNanoseconds() / 1e9:
                    live_workers = info.live_workers if info else 0
                    info = types_pb2.HandlerInfo()
                    info.CopyFrom(h)
                    info.live_workers = live_workers
                    info.last_seen.CopyFrom(reg.heartbeat_at)
                    out[h.name] = info
                if live:
                    info.live_workers += 1
        versions = self._versions_by_service()
        for info in out.values():
            info.versions[:] = versions.get(info.service, [])
        return out

    def services(self) -> dict[str, tuple[int, Timestamp | None]]:
        """Every registered service with the number of live workers hosting any of its
        handlers, and when a worker hosting it was last heard from."""
        now = time.time()
        out: dict[str, tuple[int, Timestamp | None]] = {}
        for reg in self._workers.values():
            live = now - reg.heartbeat_at.ToNanoseconds() / 1e9 <= self._live_after
            for service in {service_of(h.name) for h in reg.handlers}:
                count, seen = out.get(service, (0, None))
                if seen is None or reg.heartbeat_at.ToNanoseconds() > seen.ToNanoseconds():
                    seen = reg.heartbeat_at
                out[service] = (count + (1 if live else 0), seen)
        return out

    def _versions_by_service(self) -> dict[str, list[str]]:
        """The code versions of the registered workers hosting each service, newest first:
        ordered by when the first worker of each version that is still registered started
        (a registration lasts a day after its worker's last heartbeat). One pass."""
        first: dict[str, dict[str, int]] = {}
        for reg in self._workers.values():
            for service in {service_of(h.name) for h in reg.handlers}:
                _fold_first(first.setdefault(service, {}), reg)
        return {service: _newest_first(started) for service, started in first.items()}

    def pinned_version(self, handler: str) -> str | None:
        """Where a new invocation of ``handler`` goes when its service is pinned: the newest
        version (ordered as ``_versions_by_service`` orders them) of the workers that pin
        it; None when none does."""
        service = service_of(handler)
        first: dict[str, int] = {}
        for reg in self._workers.values():
            if service in reg.pinned_services:
                _fold_first(first, reg)
        return _newest_first(first)[0] if first else None

    def get(self, name: str) -> types_pb2.HandlerInfo | None:
        return self.handlers().get(name)

    def unserved_since(self, record: storage_pb2.InvocationRecord) -> Timestamp | None:
        """Since when no live worker has hosted the handler of ``record``, an invocation
        that waits for one (a worker of its version, when it is pinned to one): that
        worker's last heartbeat, or the invocation's creation if later; None while a live
        worker hosts it."""
        name, created_at = record.handler, record.created_at
        version = record.version if record.pinned else ""
        now = time.time()
        live = False
        seen = 0
        for reg in self._workers.values():
            if version and reg.version != version:
                continue
            if not any(h.name == name for h in reg.handlers):
                continue
            beat = reg.heartbeat_at.ToNanoseconds()
            seen = max(seen, beat)
            live = live or now - beat / 1e9 <= self._live_after
        if live:
            return None
        since = Timestamp()
        since.FromNanoseconds(max(created_at.ToNanoseconds(), seen))
        return since


def _fold_first(first: dict[str, int], reg: storage_pb2.WorkerRegistration) -> None:
    """Keep in ``first`` the earliest start of any worker of ``reg``'s version."""
    started = reg.started_at.ToNanoseconds()
    first[reg.version] = min(first.get(reg.version, started), started)


def _newest_first(first: dict[str, int]) -> list[str]:
    """Versions by their first worker's start, newest first (ties by name)."""
    return sorted(first, key=lambda v: (-first[v], v))


def closest_names(name: str, known: list[str], most: int = 3) -> list[str]:
    """The registered handler names ``name`` was most likely meant to be, ignoring case:
    close spellings of the whole name, else of its method alone (``checkout`` ->
    ``orders/checkout``) with a service close to the one given, if one was."""
    lowered: dict[str, list[str]] = {}
    for full in known:
        lowered.setdefault(full.lower(), []).append(full)
    wanted = name.lower()
    close = _nearest(wanted, list(lowered), most, cutoff=0.6)
    if not close:
        service, _, method = wanted.rpartition("/")
        by_method: dict[str, list[str]] = {}
        for low in lowered:
            by_method.setdefault(low.rpartition("/")[2], []).append(low)
        for near in _nearest(method, list(by_method), most, cutoff=0.75):
            for low in sorted(by_method[near]):
                other = low.rpartition("/")[0]
                if not service or difflib.SequenceMatcher(None, service, other).ratio() >= 0.5:
                    close.append(low)
    return [full for low in close for full in lowered[low]][:most]


def _nearest(word: str, options: list[str], most: int, cutoff: float) -> list[str]:
    """The options most like ``word`` (at least ``cutoff`` alike), keeping only those about
    as close as the best one: a second name that is clearly worse only adds doubt."""
    scored = []
    for option in options:
        ratio = difflib.SequenceMatcher(None, word, option).ratio()
        if ratio >= cutoff:
            scored.append((ratio, option))
    scored.sort(key=lambda pair: (-pair[0], pair[1]))
    return [option for ratio, option in scored[:most] if ratio >= scored[0][0] - 0.05]
