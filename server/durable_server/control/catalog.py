"""The handler catalog: what the workers registered, followed live from the workers bucket.

A worker's entry is refreshed by its heartbeat and ages out a day after it stops, so a
handler stays known (and Invoke keeps accepting it) across worker restarts and deploys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from nats.js.kv import KeyValue

from durable.internal.v1 import storage_pb2
from durable.v1 import types_pb2

log = logging.getLogger("durable.control")


class HandlerCatalog:
    """Live view of worker registrations."""

    def __init__(self, live_after: float) -> None:
        self._workers: dict[str, storage_pb2.WorkerRegistration] = {}
        self._live_after = live_after
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self, kv: KeyValue) -> None:
        watcher = await kv.watchall()
        self._task = asyncio.create_task(self._follow(watcher), name="handler-catalog")
        await self._ready.wait()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        try:
            async for entry in watcher:
                if entry is None:
                    self._ready.set()
                elif entry.operation in ("DEL", "PURGE") or not entry.value:
                    self._workers.pop(entry.key, None)
                else:
                    reg = storage_pb2.WorkerRegistration()
                    try:
                        reg.ParseFromString(entry.value)
                    except Exception:
                        log.warning("unreadable worker registration %s", entry.key)
                        continue
                    self._workers[entry.key] = reg
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

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
