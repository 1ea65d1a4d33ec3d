"""Prometheus metrics of workers and control planes, and the HTTP endpoint that serves them.

Every metric lives in one registry per process (``METRICS.registry``), so ``durable dev``, which
runs a control plane and a worker in one process, serves both sets from one endpoint; a
separate worker serves its own. Labels are bounded by the code, never by traffic: service,
handler, status, step kind, error type (a class name), RPC method and gRPC code. No
invocation id, key or step name is ever a label.

Counters count where the record write that makes them true lands, so they add up exactly
across processes: an attempt's outcome is counted by the worker whose write settled it, an
invocation's end by whoever wrote the ended record (a worker, or the control plane for a
Kill), a start by whoever created the record (the control plane for Invoke, the calling
worker for ``ctx.call``/``ctx.send``).

The endpoint (:class:`MetricsEndpoint`, :func:`serving`) answers ``GET /metrics`` from the
process's own event loop, so gauges computed from in-memory state (the control plane's
index, a worker's slots) are read without a lock. prometheus-client is optional: without
it (``pip install durable-nats[worker]`` brings it) the counters are no-ops and
``--metrics-listen`` refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("durable.metrics")

try:
    import prometheus_client as _prom
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
except ImportError:  # pragma: no cover - the worker extra brings it
    _prom = None  # type: ignore[assignment]

#: Buckets (seconds) for things from a millisecond to a week: invocations wait for timers.
_LONG = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    1800,
    3600,
    21600,
    86400,
    604800,
)
#: Buckets for a request or a journal append: 100 µs to 10 s.
_SHORT = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    10,
)


def status_label(status: int) -> str:
    """``COMPLETED`` for ``INVOCATION_STATUS_COMPLETED``: short, and the same in every
    process."""
    from durable._handle import status_name

    return status_name(status)


def service_handler(handler: str) -> tuple[str, str]:
    service, _, name = handler.partition("/")
    return service, name


class _Nothing:
    """Stands for a metric when prometheus-client is not installed."""

    def labels(self, *_: Any, **__: Any) -> _Nothing:
        return self

    def inc(self, *_: Any) -> None:
        pass

    def observe(self, *_: Any) -> None:
        pass

    def set(self, *_: Any) -> None:
        pass


class Metrics:
    """The metrics of one process (see the module's docstring for what counts where)."""

    def __init__(self) -> None:
        self.registry: Any = CollectorRegistry(auto_describe=True) if _prom else None
        self.invocations_started = self._counter(
            "durable_invocations_started",
            "Invocations created (by Invoke, or by ctx.call/ctx.send)",
            ["service", "handler"],
        )
        self.invocations_ended = self._counter(
            "durable_invocations_ended",
            "Invocations that reached an end, by their final status",
            ["service", "handler", "status"],
        )
        self.invocation_duration = self._histogram(
            "durable_invocation_duration_seconds",
            "From creation to end, waits included",
            ["service", "handler", "status"],
            _LONG,
        )
        self.attempts = self._counter(
            "durable_attempts",
            "Attempts settled, by how they ended (SUSPENDED, BACKING_OFF, COMPLETED, ...)",
            ["service", "handler", "outcome"],
        )
        self.retries = self._counter(
            "durable_retries",
            "Failed tries that will be tried again: a step retried in place (scope=step) or "
            "an attempt that backs off (scope=attempt)",
            ["service", "handler", "scope", "error_type"],
        )
        self.steps = self._histogram(
            "durable_step_duration_seconds",
            "Steps this process ran (journaled steps replayed are not counted), by kind",
            ["service", "handler", "kind"],
            (*_SHORT, 30, 60, 300, 3600),
        )
        self.journal_append = self._histogram(
            "durable_journal_append_seconds",
            "One journal append, publish to JetStream's acknowledgement",
            [],
            _SHORT,
        )
        self.slots = self._gauge("durable_worker_slots", "Slots of this worker", [])
        self.slots_in_use = self._gauge(
            "durable_worker_slots_in_use", "Invocations this worker drives now", []
        )
        self.rpcs = self._counter(
            "durable_rpc_requests",
            "DurableControl requests answered, by method and gRPC status code",
            ["method", "code"],
        )
        self.rpc_duration = self._histogram(
            "durable_rpc_duration_seconds",
            "DurableControl request latency (streams: until the stream ends)",
            ["method"],
            (*_SHORT, 30, 60, 300),
        )
        self.nats_reconnects = self._counter(
            "durable_nats_reconnects", "Reconnections to NATS", ["component"]
        )
        self.invocations = self._gauge(
            "durable_invocations",
            "Invocations not ended, by service and status (from the control plane's index)",
            ["service", "status"],
        )
        self.backlog = self._gauge(
            "durable_queue_backlog",
            "Invocations waiting for a worker (PENDING or BACKING_OFF) by service",
            ["service"],
        )
        self.consumer_pending = self._gauge(
            "durable_consumer_pending",
            "Work items not yet delivered, per work consumer (its lag)",
            ["service", "consumer"],
        )
        self.consumer_ack_pending = self._gauge(
            "durable_consumer_ack_pending",
            "Work items delivered and not yet acked, per work consumer",
            ["service", "consumer"],
        )
        self.live_workers = self._gauge(
            "durable_live_workers", "Live workers hosting the service", ["service"]
        )

    def _counter(self, name: str, doc: str, labels: list[str]) -> Any:
        if not _prom:
            return _Nothing()
        return Counter(name, doc, labels, registry=self.registry)

    def _gauge(self, name: str, doc: str, labels: list[str]) -> Any:
        if not _prom:
            return _Nothing()
        return Gauge(name, doc, labels, registry=self.registry)

    def _histogram(self, name: str, doc: str, labels: list[str], buckets: tuple[float, ...]) -> Any:
        if not _prom:
            return _Nothing()
        return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)

    # -- what the engine calls ---------------------------------------------------------

    def started(self, handler: str) -> None:
        self.invocations_started.labels(*service_handler(handler)).inc()

    def ended(self, handler: str, status: int, created_at: Any) -> None:
        """An ended record was written (once per invocation: the write is a CAS from a
        state that had not ended). ``created_at``: the record's Timestamp."""
        service, name = service_handler(handler)
        label = status_label(status)
        self.invocations_ended.labels(service, name, label).inc()
        took = max(0.0, time.time() - created_at.ToNanoseconds() / 1e9)
        self.invocation_duration.labels(service, name, label).observe(took)

    def attempt(self, handler: str, outcome: int) -> None:
        self.attempts.labels(*service_handler(handler), status_label(outcome)).inc()

    def retry(self, handler: str, scope: str, error_type: str) -> None:
        self.retries.labels(*service_handler(handler), scope, error_type or "Exception").inc()

    def step(self, handler: str, kind: str, seconds: float) -> None:
        """A step this process ran; ``kind`` as the label shows it (``run``)."""
        self.steps.labels(*service_handler(handler), kind).observe(seconds)

    def render(self) -> bytes:
        """The exposition text, for a scrape."""
        if not _prom:
            return b""
        return bytes(_prom.generate_latest(self.registry))


#: This process's metrics.
METRICS = Metrics()


class MetricsEndpoint:
    """``GET /metrics`` over HTTP/1.1 on the event loop (one request per connection).

    A handful of lines instead of prometheus-client's threaded server, so that scrapes read
    in-memory state on the loop that changes it. ``before_scrape`` callbacks refresh gauges
    first.
    """

    def __init__(self, listen: str, metrics: Metrics = METRICS) -> None:
        if not _prom:
            raise RuntimeError(
                "--metrics-listen needs prometheus-client (pip install 'durable-nats[worker]')"
            )
        self._listen = listen
        self._metrics = metrics
        self._server: asyncio.Server | None = None
        self.before_scrape: list[Callable[[], None]] = []
        self.address = ""

    async def start(self) -> MetricsEndpoint:
        host, _, port = self._listen.rpartition(":")
        self._server = await asyncio.start_server(self._serve, host or "127.0.0.1", int(port))
        sock = self._server.sockets[0].getsockname()
        self.address = f"{sock[0]}:{sock[1]}"
        log.info("metrics on http://%s/metrics", self.address)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, path, *_ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            if method != "GET" or path.split("?")[0] != "/metrics":
                body, status, ctype = b"only GET /metrics here\n", "404 Not Found", "text/plain"
            else:
                for refresh in self.before_scrape:
                    refresh()
                body, status = self._metrics.render(), "200 OK"
                ctype = _prom.CONTENT_TYPE_LATEST
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ValueError,
            ConnectionError,
        ):
            pass  # a client that went away or sent something else than a request
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def serving(listen: str) -> Any:
    """The metrics endpoint for the block, when ``listen`` names an address (else None)."""
    if not listen:
        yield None
        return
    endpoint = await MetricsEndpoint(listen).start()
    try:
        yield endpoint
    finally:
        await endpoint.stop()
