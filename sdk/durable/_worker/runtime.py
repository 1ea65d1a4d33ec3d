"""The worker process: pulls work items, runs up to ``slots`` invocations at once, keeps their
items alive while they run, and announces its handlers and code version.

Work is pulled with raw JetStream pull requests on the work consumers of the services it
hosts (``pulling``), sized to the free slots, and every delivered item starts at once
(nats-py's ``fetch`` would hold the first item back until the whole batch arrived). The
workers hosting a service share its consumer and so share its work; no worker is handed an
item of a service it does not host.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import os
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from durable import _logs as logs
from durable._handlers import Registry, Service
from durable._metrics import METRICS
from durable._rpc import NatsServer, NatsTransport
from durable._store import open_store
from durable._store.config import ANY_LANE, EngineConfig, lane_of, redact_url
from durable._store.patience import NotProvisioned, at_start_up, stop_tasks
from durable._store.records import now_ts
from durable._store.waking import HandlerKinds, Waker
from durable._worker.claim import Version
from durable._worker.executor import Executor
from durable._worker.lease import Lease, stored_at
from durable._worker.pulling import PULL_HEARTBEAT, Lane, Lanes
from durable._worker.rpc import TransportRouter
from durable._worker.signals import ControlFlags
from durable.internal.v1 import storage_pb2

log = logging.getLogger("durable.worker")

#: A generated ``add_<Service>Servicer_to_server`` and the servicer to serve with it.
Servicer = tuple[Callable[[Any, Any], None], Any]


async def _log_nats_error(err: Exception) -> None:
    log.warning("NATS: %s", err)


async def connect_nats(cfg: EngineConfig, name: str, *, wait: float = 30.0) -> NATS:
    """Connect with reconnects that never give up (the default stops after ~2 minutes).

    The first connection is retried for up to ``wait`` seconds too, so the engine can start
    alongside its NATS servers (compose, systemd) instead of failing on the first refusal;
    then it fails with a ConnectionError naming the URL. Credentials come from the URL
    (``nats://user:password@host``, ``nats://token@host``) or ``cfg.nats_creds``; TLS from
    ``cfg.nats_ca``/``nats_cert``/``nats_key`` (or a ``tls://`` URL with the system's CAs).
    Credentials the server refuses fail at once, in one line, instead of retrying.
    """
    refused: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_error(err: Exception) -> None:
        text = str(err)
        if "authorization" in text.lower() and not refused.done():
            refused.set_result(text)
        await _log_nats_error(err)

    options: dict[str, Any] = {}
    if cfg.nats_creds:
        options["user_credentials"] = cfg.nats_creds
    if cfg.nats_ca or cfg.nats_cert:
        options["tls"] = _nats_tls(cfg)
    connecting = asyncio.ensure_future(
        nats.connect(
            servers=cfg.servers,
            name=name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            allow_reconnect=True,
            connect_timeout=2,
            error_cb=on_error,
            reconnected_cb=functools.partial(_reconnected, name),
            **options,
        )
    )
    try:
        waits: set[asyncio.Future[Any]] = {connecting, refused}
        done, _ = await asyncio.wait(waits, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not connecting.done():
            connecting.cancel()
            with contextlib.suppress(BaseException):
                await connecting
    error = connecting.exception() if connecting in done else None
    if connecting in done and error is None:
        return connecting.result()
    if error is not None and not isinstance(error, OSError | nats.errors.Error | TimeoutError):
        raise error
    if refused.done() or isinstance(error, nats.errors.AuthorizationError):
        why = refused.result() if refused.done() else str(error)
        raise ConnectionError(
            f"NATS at {redact_url(cfg.nats_url)} refused this process's credentials "
            f"({why.strip()}): check the URL's user and password or token, --nats-creds, "
            "and the user's permissions"
        ) from error
    raise ConnectionError(
        f"cannot reach NATS at {redact_url(cfg.nats_url)} within {wait:.0f}s"
    ) from error


async def _reconnected(name: str) -> None:
    # "durable-worker-w1" -> worker, "durable-control" -> control: bounded by the code.
    component = name.removeprefix("durable-").split("-", 1)[0] or "other"
    METRICS.nats_reconnects.labels(component).inc()


def _nats_tls(cfg: EngineConfig) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=cfg.nats_ca or None)
        if cfg.nats_cert:
            context.load_cert_chain(cfg.nats_cert, cfg.nats_key or None)
    except (OSError, ssl.SSLError) as err:
        raise ConnectionError(f"cannot load the NATS TLS files: {err}") from err
    return context


class Worker:
    """Hosts handlers and executes their invocations.

    ``async with Worker(cfg, [svc1, svc2]):`` runs it in the background of the current event
    loop; :meth:`run` runs it until cancelled.
    """

    def __init__(
        self,
        cfg: EngineConfig,
        services: Iterable[Service],
        *,
        slots: int = 64,
        worker_id: str | None = None,
        nc: NATS | None = None,
        servicers: Iterable[Servicer] = (),
        grpc_endpoints: Mapping[str, str] | None = None,
        version: str | None = None,
    ) -> None:
        """``version`` names the code this worker runs (what GetWorkflow shows for each
        attempt, and what pinned services keep their invocations on); by default a digest
        of the source files that define its handlers."""
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.cfg = cfg
        self.registry = Registry(services)
        self.version = version or self.registry.code_version()
        self.slots = slots
        self.worker_id = worker_id or f"w{uuid.uuid4().hex[:12]}"
        self._nc = nc
        self._own_nc = nc is None
        self._servicers = list(servicers)
        self._grpc_endpoints = dict(grpc_endpoints or {})
        self._nats_server: NatsServer | None = None
        self._inflight: dict[str, tuple[Msg, ControlFlags, Lease]] = {}
        #: Items delivered while every slot was busy (at most one per lane), in order.
        self._backlog: collections.deque[tuple[Msg, str]] = collections.deque()
        #: Deliveries this worker has finished handling (attempts and timer wake-ups), for
        #: whoever must know that a delivery was dealt with, not merely that time passed.
        self.handled = 0
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._main: asyncio.Task[None] | None = None
        self._started_at = now_ts()
        self._stopping = False

    @property
    def nc(self) -> NATS:
        assert self._nc is not None, "worker not started"
        return self._nc

    async def start(self) -> None:
        if self._nc is None:
            self._nc = await connect_nats(self.cfg, f"durable-worker-{self.worker_id}")
        js = self.nc.jetstream()
        await at_start_up(self.nc, lambda: self._open_stores(js), "the engine's streams")
        self._executor = Executor(
            records=self._records,
            journal=self._journal,
            registry=self.registry,
            waker=self._waker,
            worker_id=self.worker_id,
            announce=self._announce,
            max_payload=self.cfg.max_payload_bytes,
            running_record_after=self.cfg.running_record_after,
            keys=self._keys,
            state=self._state,
            rpc=self._router,
            version=Version(self.version, frozenset(self.registry.pinned_services)),
        )
        if self._servicers:
            self._nats_server = NatsServer(self.nc, prefix=self.cfg.prefix)
            for add_to_server, servicer in self._servicers:
                self._nats_server.add(add_to_server, servicer)
            await self._nats_server.start()
        await self.nc.subscribe(f"{self.cfg.prefix}.signal.>", cb=self._on_signal)
        self._lanes = Lanes(self._make_lanes(), self.slots)
        self._lane_subs: list[Subscription] = []
        for lane in self._lanes.lanes:
            lane.inbox = self.nc.new_inbox()
            self._lane_subs.append(
                await self.nc.subscribe(lane.inbox, cb=functools.partial(self._on_delivery, lane))
            )
        # Registering is what makes a control plane create the consumers of our services.
        await at_start_up(self.nc, self._register, "the worker registration")
        await at_start_up(self.nc, self._open_lanes, "the work consumers of its services")
        self._main = asyncio.create_task(self._run_loops(), name=f"worker-{self.worker_id}")
        METRICS.slots.inc(self.slots)
        log.info(
            "worker %s (version %s) serving %d handlers of %s with %d slots",
            self.worker_id,
            self.version,
            len(self.registry),
            ", ".join(self.registry.services),
            self.slots,
        )

    async def stop(self, *, graceful: bool = True) -> None:
        """Stop pulling; hand running invocations back (nak) so another worker continues."""
        if self._main is not None and not self._stopping:
            METRICS.slots.dec(self.slots)
        self._stopping = True
        # First stop listening: the server drops pull requests nobody listens to, so what
        # this worker hands back below (nak) goes to another worker, not to its own
        # requests still open until the connection closes.
        for sub in getattr(self, "_lane_subs", []):
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if self._nats_server is not None:
            await self._nats_server.stop()
        if self._main:
            await stop_tasks([self._main])
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        while self._backlog:
            msg, _ = self._backlog.popleft()
            with contextlib.suppress(Exception):
                await msg.nak()
        if hasattr(self, "_router"):
            await self._router.close()
        if graceful and self._nc is not None and self._nc.is_connected:
            with contextlib.suppress(Exception):
                await self._workers_kv.delete(self.worker_id)
        if self._own_nc and self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()

    async def run(self) -> None:
        await self.start()
        try:
            assert self._main is not None
            await self._main
        finally:
            await self.stop()

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- pulling --------------------------------------------------------------------------

    async def _open_stores(self, js: JetStreamContext) -> None:
        """Open every store, waiting (``NotProvisioned``) until the control plane has created
        them: a worker never creates or changes streams (idempotent: tried again at start-up
        while JetStream elects leaders)."""
        store = await open_store(self.nc, self.cfg)
        self._ack_wait = self.cfg.ack_wait
        self._records = store.records
        self._journal = store.journal
        self._workers_kv = store.workers
        self._router = TransportRouter(
            NatsTransport(self.nc, prefix=self.cfg.prefix), self._grpc_endpoints
        )
        self._keys = store.keys
        kinds = HandlerKinds({h.full_name: h.kind for h in self.registry}, self._workers_kv)
        self._waker = Waker(js, self.cfg, self._records, store.work, keys=self._keys, kinds=kinds)
        self._state = store.state

    def _make_lanes(self) -> list[Lane]:
        """A lane per hosted service, plus one per pinned service for this version."""
        cfg = self.cfg
        pinned = set(self.registry.pinned_services)
        lanes: list[Lane] = []
        for service in self.registry.services:
            for lane in [ANY_LANE] + ([lane_of(self.version)] if service in pinned else []):
                consumer = cfg.run_consumer(service, lane)
                api = f"$JS.API.CONSUMER.MSG.NEXT.{cfg.work_stream}.{consumer}"
                lanes.append(Lane(service, consumer, api))
        return lanes

    async def _open_lanes(self) -> None:
        """Wait until every lane's consumer exists (a control plane creates them once it
        has seen our registration) and take its ack wait, fixed at its creation whatever
        this process was told (--ack-wait): renewals and leases go by it."""
        js = self.nc.jetstream()
        for lane in self._lanes.lanes:
            if lane.ack_wait:
                continue
            try:
                info = await js.consumer_info(self.cfg.work_stream, lane.consumer)
            except NotFoundError:
                raise NotProvisioned(
                    f"the work consumer {lane.consumer} of service {lane.service} does not "
                    "exist yet: a control plane creates it when it sees this worker's "
                    "registration (is `durable server` running on this prefix?)"
                ) from None
            lane.ack_wait = min(self.cfg.ack_wait, info.config.ack_wait or self.cfg.ack_wait)
        self._ack_wait = min([lane.ack_wait for lane in self._lanes.lanes] or [self.cfg.ack_wait])
        self._lanes.expires = max(2 * PULL_HEARTBEAT, min(self._lanes.expires, self._ack_wait / 3))

    async def _run_loops(self) -> None:
        await asyncio.gather(self._pull_loop(), self._heartbeat_loop())

    async def _pull_loop(self) -> None:
        lanes = self._lanes
        while not self._stopping:
            now = time.monotonic()
            for lane in lanes.lanes:
                if lane.tidy(now):
                    log.info("no heartbeat on the pull requests of %s; asking again", lane.consumer)
            busy = len(self._tasks) + len(self._backlog)
            free = self.slots - busy - lanes.requested
            if self.nc.is_connected:
                for lane, batch in lanes.plan(free, now):
                    body = {
                        "batch": batch,
                        "expires": int(lanes.expires * 1e9),
                        "idle_heartbeat": int(PULL_HEARTBEAT * 1e9),
                    }
                    lanes.asked(lane, batch, now)
                    await self.nc.publish(lane.api, json.dumps(body).encode(), reply=lane.inbox)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), lanes.next_deadline(time.monotonic()))

    async def _on_delivery(self, lane: Lane, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status is not None:
            lane.ended(status)
            if status != "100":
                self._wake.set()
            return
        lane.delivered()
        invocation_id = msg.subject.rsplit(".", 1)[-1]
        if msg.subject.startswith(f"{self.cfg.prefix}.work.wake."):
            self._spawn(self._wake_up(msg, invocation_id))
            return
        if invocation_id in self._inflight:
            # A second item for an invocation we already drive; look again later.
            await msg.nak(delay=1.0)
            return
        flags = ControlFlags()
        lease = Lease(lane.ack_wait, functools.partial(self._renew, msg), stored_at(msg))
        self._inflight[invocation_id] = (msg, flags, lease)
        if len(self._tasks) >= self.slots:
            self._backlog.append((msg, invocation_id))  # its lease is renewed meanwhile
            return
        self._start(msg, invocation_id)

    def _start(self, msg: Msg, invocation_id: str) -> None:
        _, flags, lease = self._inflight[invocation_id]
        task = asyncio.create_task(self._drive(msg, invocation_id, flags, lease))
        self._tasks.add(task)
        METRICS.slots_in_use.inc()

    async def _drive(self, msg: Msg, invocation_id: str, flags: ControlFlags, lease: Lease) -> None:
        logs.about(invocation_id, worker=self.worker_id)
        try:
            await self._executor.drive(msg, invocation_id, flags, lease)
        except asyncio.CancelledError:
            if self._stopping:
                with contextlib.suppress(Exception):
                    await msg.nak()
            raise
        except Exception:
            log.exception("invocation %s: worker error; it will be redelivered", invocation_id)
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)
        finally:
            METRICS.slots_in_use.dec()
            self._inflight.pop(invocation_id, None)
            self.handled += 1
            task = asyncio.current_task()
            if task is not None:
                self._tasks.discard(task)
            while self._backlog and len(self._tasks) < self.slots and not self._stopping:
                self._start(*self._backlog.popleft())
            self._wake.set()

    def driving(self, invocation_id: str) -> bool:
        """Whether an attempt of this invocation runs on this worker now."""
        return invocation_id in self._inflight

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wake_up(self, msg: Msg, invocation_id: str) -> None:
        """A timer fired: wake its invocation if it still sleeps (it may have been woken by
        something else, paused or cancelled since; then there is nothing to do)."""
        logs.about(invocation_id, worker=self.worker_id)
        try:
            # Also when it finds the record PENDING: its waker (maybe this wake-up's first
            # delivery) may have died between the CAS and the enqueue; wake makes sure.
            await self._waker.wake(invocation_id, "timer")
            await msg.ack()
        except Exception:
            log.exception("waking %s failed; the wake-up will be redelivered", invocation_id)
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)  # again soon, not only after ack_wait
        finally:
            self.handled += 1
            self._wake.set()

    # -- liveness -------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        """Register every few seconds and keep running items from being redelivered."""
        last_progress = time.monotonic()
        period = min(self.cfg.heartbeat_interval, self._ack_wait / 3)
        while not self._stopping:
            await asyncio.sleep(period)
            # Half a period of slack: a sleep that ends a hair early must not skip a renewal.
            if time.monotonic() - last_progress >= self._ack_wait / 3 - period / 2:
                last_progress = time.monotonic()
                leases = [lease for _, _, lease in self._inflight.values()]
                await asyncio.gather(*(lease.renew() for lease in leases), return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._register()

    async def _renew(self, msg: Msg) -> None:
        """An in-progress renewal (``+WPI``) sent as a request: JetStream answers once the
        consumer has reset the item's ack timer, which tells the item's Lease it was in
        time. nats-py's ``Msg.in_progress`` sends it without a reply subject."""
        await self.nc.request(msg.reply, b"+WPI", timeout=max(0.1, self._ack_wait / 3))

    async def _register(self) -> None:
        reg = storage_pb2.WorkerRegistration(
            worker_id=self.worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            handlers=[h.info() for h in self.registry],
            started_at=self._started_at,
            heartbeat_at=now_ts(),
            slots=self.slots,
            version=self.version,
            pinned_services=self.registry.pinned_services,
        )
        await self._workers_kv.put(self.worker_id, reg.SerializeToString())

    # -- control signals ------------------------------------------------------------------

    async def _on_signal(self, msg: Msg) -> None:
        invocation_id = msg.subject.rsplit(".", 1)[-1]
        running = self._inflight.get(invocation_id)
        if running is None:
            return
        flags = running[1]
        try:
            signal = json.loads(msg.data or b"{}")
        except ValueError:
            return
        if signal.get("pause"):
            flags.pause = True
        if signal.get("resume"):
            flags.pause = False
        if signal.get("cancel"):
            flags.cancel = True
            flags.cancel_reason = str(signal.get("reason") or "")

    def _announce(self, invocation_id: str, index: int, kind: int, name: str) -> None:
        body = json.dumps({"i": index, "k": kind, "n": name, "t": time.time()}).encode()
        task = asyncio.ensure_future(
            self.nc.publish(self.cfg.progress_subject(invocation_id), body)
        )
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)
