"""The handler catalog: what the workers registered, followed live from the workers bucket.

A worker's entry is refreshed by its heartbeat and ages out a day after it stops, so a
handler stays known (and Invoke keeps accepting it) across worker restarts and deploys.
"""

from __future__ import annotations

import logging
import time

from nats.js import JetStreamContext

from durable.internal.v1 import storage_pb2
from durable.v1 import types_pb2
from durable_server.control.follow import BucketFollower

log = logging.getLogger("durable.control")


class HandlerCatalog:
    """Live view of worker registrations."""

    def __init__(self, live_after: float) -> None:
        self._workers: dict[str, storage_pb2.WorkerRegistration] = {}
        self._live_after = live_after
        self._follower = BucketFollower(
            "handler-catalog",
            storage_pb2.WorkerRegistration,
            on_put=self._workers.__setitem__,
            on_delete=self._forget,
        )

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
        return out

    def get(self, name: str) -> types_pb2.HandlerInfo | None:
        return self.handlers().get(name)
