"""Follows a KV bucket: replays every key's latest value once, then pushes each change.

The index and the handler catalog are both views folded from such a follow, so neither ever
reads the bucket per request. It is an ordered push consumer with a one-second idle
heartbeat, so that when the node serving it dies (on a cluster) the client notices within
a couple of seconds and recreates it, instead of nats-py's KV watch default of up to 20 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from google.protobuf.message import DecodeError, Message
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

log = logging.getLogger("durable.control")

M = TypeVar("M", bound=Message)

_HEARTBEAT = 1.0
_DELETED = ("DEL", "PURGE")


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
        self._sub: Subscription | None = None
        self._ready = asyncio.Event()

    async def start(self, js: JetStreamContext, bucket: str) -> None:
        self._prefix = f"$KV.{bucket}."
        sub = await js.subscribe(
            f"$KV.{bucket}.>",
            stream=f"KV_{bucket}",
            cb=self._on_msg,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            idle_heartbeat=_HEARTBEAT,
            inactive_threshold=300.0,
        )
        try:
            info = await sub.consumer_info()
        except BaseException:
            # Started again at start-up while JetStream elects: leave no second follow.
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            raise
        self._sub = sub
        if info.num_pending == 0 and self._sub.delivered == 0:
            self._ready.set()
        await self._ready.wait()

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _on_msg(self, msg: Msg) -> None:
        key = msg.subject[len(self._prefix) :]
        headers = msg.headers or {}
        operation = headers.get("KV-Operation")
        if operation is None and headers.get("Nats-Marker-Reason"):
            operation = "PURGE"  # a TTL or limit marker: the key is gone
        if operation in _DELETED or not msg.data:
            self._on_delete(key)
        else:
            message = self._type()
            try:
                message.ParseFromString(msg.data)
            except DecodeError:
                log.warning("%s: unreadable value for %s", self._name, key)
            else:
                self._on_put(key, message)
        if not self._ready.is_set() and msg.metadata.num_pending == 0:
            self._ready.set()  # the existing keys have all been delivered
