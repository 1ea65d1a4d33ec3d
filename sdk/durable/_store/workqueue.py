"""Enqueues "drive invocation X" work items on the work stream, and looks them up.

Items are routed: an invocation's subject names its service and lane
(``EngineConfig.run_subject``), so only the workers hosting that service are handed it.
Each invocation has its own subject, which keeps only its newest item: enqueueing again
(a Resume, a Cancel, a reconcile) replaces the older item. The message id is
``<id>:<generation>``: enqueueing the same generation twice within the duplicate window
stores one item. A stale or duplicate item is harmless anyway, because the worker acts on
the record, not on the item. Acked items stay in the stream (an ack is then a cheap consumer
update, not a deletion); the item's ``generation`` tells the reconciler whether the newest
item is the one the record asks for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError

from durable._store.config import ANY_LANE, EngineConfig, lane_of
from durable._store.ids import service_of
from durable._store.patience import until_answered
from durable.internal.v1 import storage_pb2


def lane_of_record(record: storage_pb2.InvocationRecord) -> str:
    """The lane an invocation's items go to: its version's, when it is pinned to one."""
    return lane_of(record.version) if record.pinned and record.version else ANY_LANE


class WorkQueue:
    """Publishes and inspects work items."""

    def __init__(self, js: JetStreamContext, cfg: EngineConfig) -> None:
        self._js = js
        self._cfg = cfg

    async def enqueue(
        self,
        invocation_id: str,
        handler: str,
        generation: int,
        reason: str,
        initial: storage_pb2.InvocationRecord | None = None,
        *,
        lane: str = ANY_LANE,
        dedupe: str = "",
        incarnation: int = 0,
    ) -> None:
        """``dedupe`` distinguishes an item that must not be taken for an earlier one of the
        same generation (an exclusive invocation getting its key); ``incarnation`` (the
        record's creation time) one of an id used again after a Purge (a workflow id, an
        idempotency key) from the purged invocation's items still in the duplicate window."""
        if incarnation:
            dedupe += f"@{incarnation}"
        item = storage_pb2.WorkItem(
            invocation_id=invocation_id, reason=reason, initial=initial, generation=generation
        )
        data = item.SerializeToString()
        headers = {"Nats-Msg-Id": f"{invocation_id}:{generation}{dedupe}"}
        subject = self._cfg.run_subject(service_of(handler), invocation_id, lane)

        async def publish(timeout: float) -> None:
            await self._js.publish(subject, data, headers=headers, timeout=timeout)

        # A replicated stream electing a leader (a node died) does not answer for a few
        # seconds. The message id makes publishing again safe: a copy that was stored after
        # all is dropped as a duplicate. How long to keep trying is the caller's deadline.
        await until_answered(publish, f"enqueueing {invocation_id}")

    async def enqueue_record(
        self,
        record: storage_pb2.InvocationRecord,
        reason: str,
        *,
        dedupe: str = "",
        fresh: bool = False,
    ) -> None:
        """Enqueue an invocation at the record's generation, in its lane; ``fresh``: no
        worker has written the record yet, so the item carries it (``initial``)."""
        await self.enqueue(
            record.id,
            record.handler,
            record.generation,
            reason,
            initial=record if fresh else None,
            lane=lane_of_record(record),
            dedupe=dedupe,
            incarnation=record.created_at.ToNanoseconds(),
        )

    async def queued_items(self) -> AsyncIterator[storage_pb2.WorkItem]:
        """Work items not yet acked (read once at start-up): for each work consumer, those
        after its ack floor, some of which may have been acked out of order."""
        async for info in self._consumers():
            seq = int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0
            for subject in info.config.filter_subjects or [info.config.filter_subject or ""]:
                async for item in self._items_after(seq, subject):
                    yield item

    async def _consumers(self) -> AsyncIterator[ConsumerInfo]:
        """Every consumer of the work stream, a page (256) at a time."""
        offset = 0
        while True:
            page = await self._js.consumers_info(self._cfg.work_stream, offset=offset)
            for info in page:
                yield info
            if not page:
                return
            offset += len(page)

    async def _items_after(self, seq: int, subject: str) -> AsyncIterator[storage_pb2.WorkItem]:
        if not subject or ".work.wake." in subject:
            return
        while True:
            try:
                msg = await self._js.get_msg(
                    self._cfg.work_stream,
                    seq=seq + 1,
                    subject=subject,
                    next=True,
                    direct=self._cfg.direct_reads,
                )
            except NotFoundError:
                return
            item = storage_pb2.WorkItem()
            item.ParseFromString(msg.data or b"")
            yield item
            seq = int(msg.seq or seq + 1)

    async def latest_item(
        self, invocation_id: str, handler: str = ""
    ) -> storage_pb2.WorkItem | None:
        """The invocation's newest work item in any lane (queued, in flight or already
        acked). Without its handler, in any service: the server matches the id among the
        services' and lanes' subjects, not among the items."""
        service = service_of(handler) if handler else "*"
        try:
            msg = await self._js.get_msg(
                self._cfg.work_stream,
                subject=self._cfg.run_subject_any_lane(service, invocation_id),
                direct=self._cfg.direct_reads,
            )
        except NotFoundError:
            return None
        item = storage_pb2.WorkItem()
        item.ParseFromString(msg.data or b"")
        return item

    async def fresh_record(
        self, invocation_id: str, handler: str = ""
    ) -> storage_pb2.InvocationRecord | None:
        """The record a fresh item carries, at generation 2, when the newest item is one;
        see :meth:`retire_fresh_item`."""
        item = await self.latest_item(invocation_id, handler)
        if item is None or not item.HasField("initial"):
            return None
        record = storage_pb2.InvocationRecord()
        record.CopyFrom(item.initial)
        record.generation = 2
        return record

    async def retire_fresh_item(self, record: storage_pb2.InvocationRecord) -> None:
        """Replace a fresh item by a plain one once the control plane wrote its record.

        A worker that takes a fresh item may start the handler before it has read the
        record, so such an item must not outlive the record's creation: later workers must
        take the plain item, which makes them read the record (and see a Pause or Cancel)
        first. The subject keeps one item, so publishing the plain one removes the fresh one.
        """
        await self.enqueue(record.id, record.handler, 2, "operator", lane=lane_of_record(record))
