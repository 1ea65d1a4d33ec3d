"""Follows a KV bucket: replays every key's latest value once, then pushes each change.

The index and the handler catalog are both views folded from such a watch, so neither ever
reads the bucket per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from google.protobuf.message import DecodeError, Message
from nats.js.kv import KeyValue

log = logging.getLogger("durable.control")

M = TypeVar("M", bound=Message)


class BucketFollower(Generic[M]):
    """Decodes each value as ``message_type`` and hands it to ``on_put`` (or the key to
    ``on_delete``); :meth:`start` returns once the existing keys were delivered."""

    def __init__(
        self,
        name: str,
        message_type: type[M],
        on_put: Callable[[str, M], None],
        on_delete: Callable[[str], None],
    ) -> None:
        self._name = name
        self._type = message_type
        self._on_put = on_put
        self._on_delete = on_delete
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self, kv: KeyValue) -> None:
        watcher = await kv.watchall()
        self._task = asyncio.create_task(self._follow(watcher), name=self._name)
        await self._ready.wait()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        try:
            async for entry in watcher:
                if entry is None:  # the existing keys have all been delivered
                    self._ready.set()
                elif entry.operation in ("DEL", "PURGE") or not entry.value:
                    self._on_delete(entry.key)
                else:
                    message = self._type()
                    try:
                        message.ParseFromString(entry.value)
                    except DecodeError:
                        log.warning("%s: unreadable value for %s", self._name, entry.key)
                        continue
                    self._on_put(entry.key, message)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]
