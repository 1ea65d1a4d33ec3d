"""The control plane's composition root, independent of gRPC: opens the store (after
provisioning it), builds the services the servicer calls, and runs what keeps them current.

Services, each with explicit dependencies and domain errors (``RequestError`` with a stable
reason; only the servicer maps them to gRPC statuses):

* ``invocations`` (control/invocations.py): Invoke and reading invocations;
* ``steering`` (control/steering.py): Pause, Resume, Cancel;
* ``completions`` (control/completions.py): awakeables and workflow promises;
* ``keyed`` (control/keyed.py): object state, Kill, Purge, retention.

In the background: the handler catalog and the invocation index follow their buckets; the
journal's republished final entries answer waiters at once (``_on_journaled``); progress
announcements feed GetWorkflow; the reconciler re-enqueues an invocation whose work item a
crash lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from google.protobuf.message import DecodeError
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from durable.contract import (
    EngineConfig,
    Record,
    RecordNotFound,
    Waker,
    at_start_up,
    now_ts,
    open_store,
    patience,
    service_of,
)
from durable.internal.v1 import storage_pb2
from durable.v1 import types_pb2
from durable_server.control.catalog import HandlerCatalog
from durable_server.control.completions import Completions
from durable_server.control.index import InvocationIndex
from durable_server.control.invocations import Invocations
from durable_server.control.keyed import KeyedControl
from durable_server.control.routes import Routes
from durable_server.control.steering import Signals, Steering
from durable_server.control.views import Progress, with_final
from durable_server.provision import provision

log = logging.getLogger("durable.control")
S = types_pb2

# Statuses whose invocation needs a work item to move on (the reconciler checks it has one).
_WAITING_FOR_ITEM = (S.INVOCATION_STATUS_PENDING, S.INVOCATION_STATUS_SCHEDULED)


class ControlPlane:
    """The engine's control operations over one NATS connection."""

    def __init__(self, cfg: EngineConfig, nc: NATS) -> None:
        self.cfg = cfg
        self.nc = nc
        self.index = InvocationIndex()
        self.catalog = HandlerCatalog(live_after=3 * cfg.heartbeat_interval + 1)
        self.catalog.listen(lambda reg: self.routes.registered(reg))
        self.progress: dict[str, Progress] = {}
        self.started_at = now_ts()
        self._tasks: list[asyncio.Task[None]] = []
        #: Rounds the reconciler has finished: what a test of it waits for.
        self.reconcile_rounds = 0

    async def start(self) -> None:
        js = self.nc.jetstream()
        await at_start_up(self.nc, lambda: self._open_stores(js), "the engine's streams")
        await self.nc.subscribe(f"{self.cfg.prefix}.progress.>", cb=self._on_progress)
        await self.nc.subscribe(self.cfg.journaled_subject("*"), cb=self._on_journaled)
        # Each step is tried again while JetStream elects (a follow creates a consumer).
        await at_start_up(
            self.nc,
            lambda: self.catalog.start(js, self.cfg.workers_bucket),
            "the handler catalog",
        )
        self._tasks.append(asyncio.create_task(self.routes.run(), name="routes"))
        await at_start_up(
            self.nc,
            lambda: self.index.start(js, self.cfg.invocations_bucket),
            "the invocation index",
        )
        await at_start_up(self.nc, self._index_queued_items, "the queued work items")
        self._tasks.append(asyncio.create_task(self._reconcile_loop(), name="reconciler"))
        self._tasks.append(asyncio.create_task(self.keyed.retention_loop(), name="retention"))

    async def _index_queued_items(self) -> None:
        """Invocations accepted but not yet written by any worker exist only as work items
        (idempotent: an item already indexed is left as it is)."""
        async for item in self.store.work.queued_items():
            if item.HasField("initial"):
                self.index.apply_if_absent(item.initial)

    async def _open_stores(self, js: JetStreamContext) -> None:
        """Create what is missing and open every store (idempotent: tried again at start-up
        while JetStream elects leaders). The control plane provisions; workers only open."""
        await provision(self.nc, self.cfg)
        store = await open_store(self.nc, self.cfg)
        self.store = store
        self.waker = Waker(js, self.cfg, store.records, store.work, keys=store.keys)
        self.routes = Routes(js, self.cfg, store.records)
        signals = Signals(self.nc, self.cfg)
        self.invocations = Invocations(self.cfg, store, self.waker, self.index, self.catalog)
        self.steering = Steering(self.invocations, store, self.waker, signals)
        self.completions = Completions(self.invocations, self.waker)
        self.keyed = KeyedControl(self.cfg, js, store, self.waker, self.invocations, signals)

    async def stop(self) -> None:
        await patience.stop_tasks(self._tasks)
        await self.index.stop()
        await self.catalog.stop()

    # -- background -----------------------------------------------------------------------

    async def _on_journaled(self, msg: Msg) -> None:
        """An invocation's final entry was stored: answer whoever waits for it now, before
        the record (and so the index) catches up."""
        entry = storage_pb2.JournalRecord()
        try:
            entry.ParseFromString(msg.data)
        except DecodeError:
            return
        if not entry.HasField("final"):
            return
        ended = with_final(Record(id=msg.subject.rsplit(".", 1)[-1]), entry)
        self.index.mark_ended(ended)
        if not entry.final.state_follows:
            # Otherwise the record, written once the state is, answers them (index.apply).
            self.index.resolve_waiters(ended)

    async def _on_progress(self, msg: Msg) -> None:
        subject = msg.subject
        try:
            body = json.loads(msg.data)
            self.progress[subject.rsplit(".", 1)[-1]] = Progress(
                int(body["i"]), int(body["k"]), str(body["n"]), float(body["t"])
            )
        except (ValueError, KeyError, TypeError):
            return
        if len(self.progress) > 100_000:
            # Keep only running invocations' entries.
            for inv in list(self.progress):
                s = self.index.get(inv)
                if s is None or s.status != S.INVOCATION_STATUS_RUNNING:
                    del self.progress[inv]

    async def _reconcile_loop(self) -> None:
        """Enqueue again a PENDING invocation whose work item is missing.

        That happens only when a process died between writing the record and the work item
        (e.g. the control plane during Invoke or Resume); the client then got no answer.
        """
        while True:
            await asyncio.sleep(self.cfg.reconcile_after)
            cutoff = time.time_ns() - int(self.cfg.reconcile_after * 1e9)
            keys_seen: set[tuple[str, str]] = set()
            for invocation_id in self.index.stale(cutoff):
                try:
                    current = await self.store.records.get(invocation_id)
                    item = await self.store.work.latest_item(invocation_id)
                    # The newest item is the record's generation (queued or in flight: a
                    # worker acks it only once the record moved on), or it never made it.
                    if item is not None and item.generation >= current.record.generation:
                        continue
                    if current.record.status == S.INVOCATION_STATUS_SCHEDULED and (
                        current.record.scheduled_at.ToNanoseconds() > cutoff
                    ):
                        continue  # its schedule is not due yet (or only just fired)
                    if not await self.keyed.may_run(current.record):
                        # Queued behind its key's holder, which passes the key on; unless
                        # that holder ended, or nobody holds it, when a process died in
                        # between: move the line on.
                        line = (service_of(current.record.handler), current.record.key)
                        if line not in keys_seen:
                            keys_seen.add(line)
                            await self.waker.hand_key_on(*line)
                        continue
                    if current.record.status in _WAITING_FOR_ITEM:
                        log.info("re-enqueueing %s (work item missing)", invocation_id)
                        await self.store.work.enqueue_record(current.record, "reconcile")
                except RecordNotFound:
                    continue
                except Exception:
                    log.exception("reconcile %s failed", invocation_id)
            self.reconcile_rounds += 1
