"""Routing work by service: the control plane creates the work consumer of every (service,
lane) a registered worker takes from, and moves what a store made before routing still
holds onto the routed subjects.

Workers never create consumers (they have no right to), so a worker that registers waits
until a control plane has seen its registration and created the consumers of its services:
``run_<service>`` for the shared lane, and ``run_<service>@<lane>`` for the lane of each
code version of a pinned service (docs/architecture.md, "Routing").

Stores made before routing (engine 0.1) kept every item on ``<p>.work.<id>`` and every
wake-up on ``<p>.work.wake.<id>``, for the one consumer ``workers``; timers and delayed
sends scheduled then still fire there. While that consumer exists, :meth:`Routes.run` takes
from it and publishes each item again on its service's subject (the record, or the item's
own initial record, names the service), acking the old one only after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from durable.contract import (
    ANY_LANE,
    EngineConfig,
    RecordNotFound,
    RecordStore,
    lane_of,
    lane_of_record,
    patience,
    service_of,
)
from durable.internal.v1 import storage_pb2
from durable_server.provision import ensure_run_consumer

log = logging.getLogger("durable.control")


class Routes:
    """Creates the work consumers registrations ask for; drains a pre-routing store."""

    def __init__(self, js: JetStreamContext, cfg: EngineConfig, records: RecordStore) -> None:
        self._js = js
        self._cfg = cfg
        self._records = records
        self._made: set[tuple[str, str]] = set()
        self._wanted: set[tuple[str, str]] = set()
        self._changed = asyncio.Event()

    def registered(self, reg: storage_pb2.WorkerRegistration) -> None:
        """A worker registered (or heartbeated): want the consumers of its lanes."""
        pinned = set(reg.pinned_services)
        for service in {service_of(h.name) for h in reg.handlers}:
            lanes = [ANY_LANE] + ([lane_of(reg.version)] if service in pinned else [])
            for lane in lanes:
                if (service, lane) not in self._made and (service, lane) not in self._wanted:
                    self._wanted.add((service, lane))
                    self._changed.set()

    async def run(self) -> None:
        """Create wanted consumers as registrations arrive (tried again after a failure,
        e.g. while JetStream elects a leader), and move a pre-routing store's items."""
        legacy = asyncio.create_task(self._move_legacy(), name="legacy-work")
        try:
            while True:
                await self._changed.wait()
                self._changed.clear()
                for service, lane in sorted(self._wanted):
                    try:
                        await ensure_run_consumer(self._js, self._cfg, service, lane)
                    except (nats.errors.Error, TimeoutError) as err:
                        log.warning("creating the work consumer of %s failed: %s", service, err)
                        continue
                    self._wanted.discard((service, lane))
                    self._made.add((service, lane))
                if self._wanted:
                    await asyncio.sleep(0.5)
                    self._changed.set()
        finally:
            await patience.stop_tasks([legacy])

    async def _move_legacy(self) -> None:
        cfg = self._cfg
        try:
            await self._js.consumer_info(cfg.work_stream, cfg.legacy_consumer)
        except NotFoundError:
            return  # made with routing: nothing to move
        log.info("moving work items of a store made before routing by service")
        sub = await self._js.pull_subscribe_bind(
            durable=cfg.legacy_consumer, stream=cfg.work_stream
        )
        while True:
            try:
                msgs = await sub.fetch(64, timeout=5.0)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except nats.errors.Error as err:
                log.warning("reading the pre-routing work consumer: %s", err)
                await asyncio.sleep(1.0)
                continue
            for msg in msgs:
                try:
                    await self._move(msg.subject, msg.data or b"")
                    await msg.ack()
                except Exception:
                    log.exception("moving %s failed; it is redelivered", msg.subject)
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=1.0)

    async def _move(self, subject: str, data: bytes) -> None:
        cfg = self._cfg
        invocation_id = subject.rsplit(".", 1)[-1]
        item = storage_pb2.WorkItem()
        item.ParseFromString(data)
        record = item.initial if item.HasField("initial") else None
        if record is None:
            try:
                record = (await self._records.get(invocation_id)).record
            except RecordNotFound:
                return  # purged or never written: a worker would drop it too
        service = service_of(record.handler)
        if subject == cfg.legacy_wake_subject(invocation_id):
            target = cfg.wake_subject(service, invocation_id)
            headers = None
        else:
            target = cfg.run_subject(service, invocation_id, lane_of_record(record))
            headers = {"Nats-Msg-Id": f"{invocation_id}:{item.generation}:moved"}
        await self._js.publish(target, data, headers=headers)
