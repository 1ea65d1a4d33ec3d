"""Enqueues "drive invocation X" work items on the work stream.

The message id is ``<id>:<generation>``: enqueueing the same generation twice within the
duplicate window stores one item. A stale or duplicate item is harmless anyway, because the
worker acts on the record, not on the item.
"""

from __future__ import annotations

import contextlib
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
        found = await self._pending(invocation_id)
        return found[0] if found else None

    async def _pending(self, invocation_id: str) -> tuple[storage_pb2.WorkItem, int] | None:
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
        return item, int(msg.seq or 0)

    async def queued_fresh_item(
        self, invocation_id: str
    ) -> tuple[storage_pb2.InvocationRecord, int] | None:
        """The record a queued fresh item carries (at generation 2) and the item's sequence,
        or None when no fresh item is queued. See :meth:`retire_fresh_item`."""
        found = await self._pending(invocation_id)
        if found is None or not found[0].HasField("initial"):
            return None
        item, seq = found
        record = storage_pb2.InvocationRecord()
        record.CopyFrom(item.initial)
        record.generation = 2
        return record, seq

    async def retire_fresh_item(self, invocation_id: str, seq: int) -> None:
        """Replace a fresh item by a plain one once the control plane wrote its record.

        A worker that takes a fresh item may start the handler before it has read the
        record, so such an item must not outlive the record's creation: later workers must
        take the plain item, which makes them read the record (and see a Pause or Cancel)
        first.
        """
        await self.enqueue(invocation_id, 2, "operator")
        with contextlib.suppress(Exception):  # already delivered and acked: nothing to do
            await self._js.delete_msg(self._cfg.work_stream, seq)
