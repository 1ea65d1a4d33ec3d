"""What the control plane tells Prometheus and OpenTelemetry about its requests, and the
gauges it keeps from its index and the work consumers.

:class:`TelemetryInterceptor` is the outermost interceptor: every DurableControl call,
refused ones included (authentication, validation), is counted by method and status code
and timed, and gets a SERVER span whose parent is the caller's ``traceparent`` metadata, so
a trace a Go or Node client started goes on through Invoke into the invocation (the
``Invoke`` behaviour stamps the record with the span it runs in).

:class:`Gauges` refreshes the per-service gauges: from the in-memory index at each scrape
(no I/O), and the consumers' lag from JetStream every few seconds in the background.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from durable.contract import EngineConfig, metrics, patience, service_of, status_name, tracing
from durable.v1 import types_pb2
from durable_server.control.errors import Handler

log = logging.getLogger("durable.control")

S = types_pb2
_SERVICE = "/durable.v1.DurableControl/"
#: Statuses the gauges show (ended ones are counters: durable_invocations_ended_total).
_LIVE = (
    S.INVOCATION_STATUS_PENDING,
    S.INVOCATION_STATUS_SCHEDULED,
    S.INVOCATION_STATUS_RUNNING,
    S.INVOCATION_STATUS_SUSPENDED,
    S.INVOCATION_STATUS_BACKING_OFF,
    S.INVOCATION_STATUS_PAUSED,
)


#: gRPC code names by number, for a context that reports its code as an int.
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def _code_of(context: Any, failed: BaseException | None) -> str:
    code = context.code()
    if code is None:
        return "UNKNOWN" if failed is not None else "OK"
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    return _CODE_NAMES.get(int(code), "UNKNOWN")


class TelemetryInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts, times and traces every DurableControl call (see the module's docstring)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        method = details.method or ""
        if handler is None or not method.startswith(_SERVICE):
            return handler
        name = method[len(_SERVICE) :]
        if handler.unary_unary is not None:
            replaced: Handler = handler._replace(  # type: ignore[attr-defined]
                unary_unary=_unary(handler.unary_unary, name)
            )
            return replaced
        if handler.unary_stream is not None:
            streamed: Handler = handler._replace(  # type: ignore[attr-defined]
                unary_stream=_stream(handler.unary_stream, name)
            )
            return streamed
        return handler


def _parent(context: Any) -> Any:
    return tracing.context_of_metadata(context.invocation_metadata())


def _unary(behaviour: Callable[..., Any], name: str) -> Callable[..., Any]:
    span_name = f"durable.v1.DurableControl/{name}"

    async def wrapped(request: Any, context: Any) -> Any:
        began = time.perf_counter()
        failed: BaseException | None = None
        with tracing.span(span_name, parent=_parent(context), kind=tracing.SpanKind.SERVER) as sp:
            try:
                return await behaviour(request, context)
            except BaseException as err:
                failed = err
                raise
            finally:
                code = _code_of(context, failed if not _aborted(failed) else None)
                _count(name, code, began)
                sp.set_attribute("rpc.grpc.status_code", code)
                if code != "OK" and sp.is_recording():
                    sp.set_status(tracing.Status(tracing.StatusCode.ERROR, code))

    return wrapped


def _stream(behaviour: Callable[..., Any], name: str) -> Callable[..., Any]:
    """A server-streaming method (WatchWorkflow): counted and timed when the stream ends.
    Its span is not made current: an async generator may resume in another context."""

    async def wrapped(request: Any, context: Any) -> AsyncIterator[Any]:
        began = time.perf_counter()
        failed: BaseException | None = None
        sp = tracing.tracer.start_span(
            f"durable.v1.DurableControl/{name}",
            context=_parent(context),
            kind=tracing.SpanKind.SERVER,
        )
        try:
            if inspect.isasyncgenfunction(behaviour):
                async for response in behaviour(request, context):
                    yield response
            else:
                result = await behaviour(request, context)
                if result is not None:
                    yield result
        except BaseException as err:
            failed = err
            raise
        finally:
            code = _code_of(context, failed if not _aborted(failed) else None)
            if isinstance(failed, asyncio.CancelledError):
                code = "CANCELLED"
            _count(name, code, began)
            sp.set_attribute("rpc.grpc.status_code", code)
            sp.end()

    return wrapped


def _aborted(err: BaseException | None) -> bool:
    return isinstance(err, grpc.aio.AbortError)


def _count(method: str, code: str, began: float) -> None:
    metrics.METRICS.rpcs.labels(method, code).inc()
    metrics.METRICS.rpc_duration.labels(method).observe(time.perf_counter() - began)


class Gauges:
    """Per-service gauges of one control plane (see the module's docstring)."""

    def __init__(self, plane: Any, cfg: EngineConfig, period: float = 5.0) -> None:
        self._plane = plane
        self._cfg = cfg
        self._period = period
        self._task: asyncio.Task[None] | None = None

    def refresh(self) -> None:
        """From the index: invocations not ended by service and status, and the backlog."""
        m = metrics.METRICS
        _, by_handler = self._plane.index.stats()
        counts: dict[tuple[str, int], int] = {}
        for handler, by_status in by_handler.items():
            for status, count in by_status.items():
                key = (service_of(handler), status)
                counts[key] = counts.get(key, 0) + count
        serving = self._plane.catalog.services()
        for service in {service for service, _ in counts} | set(serving):
            for status in _LIVE:
                label = status_name(status)
                m.invocations.labels(service, label).set(counts.get((service, status), 0))
            m.backlog.labels(service).set(
                counts.get((service, S.INVOCATION_STATUS_PENDING), 0)
                + counts.get((service, S.INVOCATION_STATUS_BACKING_OFF), 0)
            )
            m.live_workers.labels(service).set(serving.get(service, (0, None))[0])

    def start(self) -> None:
        self._task = asyncio.create_task(self._consumers_loop())

    async def stop(self) -> None:
        if self._task is not None:
            await patience.stop_tasks([self._task])

    async def _consumers_loop(self) -> None:
        """The work consumers' lag, from JetStream (one consumer-list request a round)."""
        js = self._plane.nc.jetstream()
        prefix = "run_"
        while True:
            try:
                for info in await js.consumers_info(self._cfg.work_stream):
                    name = info.name or ""
                    if not name.startswith(prefix):
                        continue
                    service = name[len(prefix) :].split("@", 1)[0]
                    metrics.METRICS.consumer_pending.labels(service, name).set(
                        info.num_pending or 0
                    )
                    metrics.METRICS.consumer_ack_pending.labels(service, name).set(
                        info.num_ack_pending or 0
                    )
            except Exception as err:  # NATS away for a moment: the next round tries again
                log.debug("consumer gauges: %s", err)
            await asyncio.sleep(self._period)
