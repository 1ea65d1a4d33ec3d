"""Enqueues "drive invocation X" work items on the work stream.

The message id is ``<id>:<generation>``: enqueueing the same generation twice within the
duplicate window stores one item. A stale or duplicate item is harmless anyway, because the
worker acts on the record, not on the item.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from durable.internal.v1 import storage_pb2
from durable_server.config import EngineConfig


class WorkQueue:
    """Publishes and inspects work items."""

    def __init__(self, js: JetStreamContext, cfg: EngineConfig) -> None:
        self._js = js
        self._cfg = cfg

    async def enqueue(
        self,
        invocation_id: str,
        generation: int,
        reason: str,
        initial: storage_pb2.InvocationRecord | None = None,
    ) -> None:
        item = storage_pb2.WorkItem(invocation_id=invocation_id, reason=reason, initial=initial)
        await self._js.publish(
            self._cfg.work_subject(invocation_id),
            item.SerializeToString(),
            headers={"Nats-Msg-Id": f"{invocation_id}:{generation}"},
        )

    async def queued_items(self) -> AsyncIterator[storage_pb2.WorkItem]:
        """Every work item still in the queue, oldest first (read once at start-up)."""
        seq = 0
        while True:
            try:
                msg = await self._js.get_msg(
                    self._cfg.work_stream,
                    seq=seq + 1,
                    subject=f"{self._cfg.prefix}.work.>",
                    next=True,
                    direct=self._cfg.direct_reads,
                )
            except NotFoundError:
                return
            item = storage_pb2.WorkItem()
            item.ParseFromString(msg.data or b"")
            yield item
            seq = int(msg.seq or seq + 1)

    async def pending_item(self, invocation_id: str) -> storage_pb2.WorkItem | None:
        """The newest unacked work item for the invocation, if one is queued."""
        try:
            msg = await self._js.get_msg(
                self._cfg.work_stream,
                subject=self._cfg.work_subject(invocation_id),
                direct=self._cfg.direct_reads,
            )
        except NotFoundError:
            return None
        item = storage_pb2.WorkItem()
        item.ParseFromString(msg.data or b"")
        return item
