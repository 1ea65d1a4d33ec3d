"""gRPC services over NATS: serve any grpcio servicer on NATS subjects, and call them.

A generated ``add_<Service>Servicer_to_server(servicer, server)`` is all :class:`NatsServer`
needs: it hands the method handlers to our server object instead of a gRPC server. Each
unary method is served on ``<prefix>.grpc.<package.Service>.<Method>`` in a queue group, so
replicas share the load. Requests and responses are the protobuf bytes; the gRPC status
travels in headers (``Grpc-Status``, ``Grpc-Message``, ``Grpc-Status-Details-Bin``), the
deadline in ``Grpc-Timeout`` (seconds) and metadata in ``Grpc-Md-<key>`` headers.

:class:`NatsChannel` is the client side, shaped like a grpc.aio channel, so a generated stub
works on it unchanged: ``HelloServiceStub(NatsChannel(nc))``. Handlers call services
durably with ``ctx.stub(HelloServiceStub)`` instead (journaled, see ``Context.stub``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import grpc
import grpc.aio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from durable import _tracing as tracing
from durable.errors import RpcStatusError

log = logging.getLogger("durable.rpc")

DEFAULT_PREFIX = "durable"
_MD = "Grpc-Md-"
_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}

Metadata = Sequence[tuple[str, str]]


def rpc_subject(prefix: str, path: str) -> str:
    """``/pkg.Service/Method`` -> ``<prefix>.grpc.pkg.Service.Method``."""
    service, _, method = path.strip("/").partition("/")
    return f"{prefix}.grpc.{service}.{method}"


class Transport(Protocol):
    """Carries one unary call: request bytes in, response bytes out, or RpcStatusError."""

    async def call(
        self, path: str, request: bytes, *, timeout: float | None, metadata: Metadata
    ) -> bytes: ...


class NatsTransport:
    """Calls services that a :class:`NatsServer` serves."""

    def __init__(self, nc: NATS, *, prefix: str = DEFAULT_PREFIX, default_timeout: float = 30.0):
        self._nc = nc
        self._prefix = prefix
        self._default_timeout = default_timeout

    async def call(
        self, path: str, request: bytes, *, timeout: float | None, metadata: Metadata
    ) -> bytes:
        wait = timeout if timeout is not None else self._default_timeout
        headers = {f"{_MD}{k}": v for k, v in tracing.metadata_with_context(metadata)}
        headers["Grpc-Timeout"] = f"{wait:.6f}"
        try:
            reply = await self._nc.request(
                rpc_subject(self._prefix, path), request, timeout=wait, headers=headers
            )
        except NoRespondersError:
            raise RpcStatusError(
                grpc.StatusCode.UNAVAILABLE, f"no server for {path} on NATS"
            ) from None
        except NatsTimeoutError:
            raise RpcStatusError(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"{path}: no answer within {wait}s"
            ) from None
        h = reply.headers or {}
        code = _BY_VALUE.get(int(h.get("Grpc-Status", "0")), grpc.StatusCode.UNKNOWN)
        if code != grpc.StatusCode.OK:
            details = base64.b64decode(h.get("Grpc-Status-Details-Bin", ""))
            raise RpcStatusError(code, h.get("Grpc-Message", ""), details)
        return reply.data or b""


class GrpcTransport:
    """Calls services on a plain gRPC server at ``address`` (another language, another host)."""

    def __init__(self, address: str) -> None:
        self._channel = grpc.aio.insecure_channel(address)

    async def call(
        self, path: str, request: bytes, *, timeout: float | None, metadata: Metadata
    ) -> bytes:
        rpc = self._channel.unary_unary(path, None, None)  # bytes in, bytes out
        try:
            response: bytes = await rpc(
                request, timeout=timeout, metadata=tuple(tracing.metadata_with_context(metadata))
            )
            return response
        except grpc.aio.AioRpcError as err:
            details = b""
            trailing: Any = err.trailing_metadata() or ()
            for key, value in trailing:
                if key == "grpc-status-details-bin" and isinstance(value, bytes):
                    details = value
            raise RpcStatusError(err.code(), err.details() or "", details) from None

    async def close(self) -> None:
        await self._channel.close(None)


class NatsChannel(grpc.aio.Channel):
    """A ``grpc.aio.Channel`` whose unary calls go over NATS, so generated stubs take it
    (and type checkers give them their async stub type).

    ``reply = await HelloServiceStub(NatsChannel(nc)).SayHello(request, timeout=5)``.
    Failures raise :class:`RpcStatusError`. Only unary-unary methods are carried; the
    streaming kinds raise ``NotImplementedError``. There is no connection of its own to
    manage: the NATS connection belongs to the caller.
    """

    def __init__(self, nc: NATS, *, prefix: str = DEFAULT_PREFIX) -> None:
        self._transport = NatsTransport(nc, prefix=prefix)

    async def __aenter__(self) -> NatsChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def close(self, grace: float | None = None) -> None:
        return None

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return grpc.ChannelConnectivity.READY

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        return None

    async def channel_ready(self) -> None:
        return None

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("NatsChannel carries unary-unary methods only")

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("NatsChannel carries unary-unary methods only")

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("NatsChannel carries unary-unary methods only")

    def unary_unary(  # type: ignore[override]  # a plain async callable, not grpc's class
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        **_: Any,
    ) -> Callable[..., Awaitable[Any]]:
        async def call(
            request: Any, *, timeout: float | None = None, metadata: Metadata = ()
        ) -> Any:
            data = request_serializer(request) if request_serializer else request
            raw = await self._transport.call(method, data, timeout=timeout, metadata=metadata)
            return response_deserializer(raw) if response_deserializer else raw

        return call


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _NatsServicerContext:
    """The part of ``grpc.ServicerContext`` servicers use, for a call that came over NATS."""

    def __init__(self, metadata: Metadata, deadline: float | None, peer: str) -> None:
        self._metadata = tuple(metadata)
        self._deadline = deadline
        self._peer = peer
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self.trailing: list[tuple[str, str | bytes]] = []

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def is_active(self) -> bool:
        return self._deadline is None or time.monotonic() < self._deadline

    def peer(self) -> str:
        return self._peer

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self.trailing = list(metadata)

    def send_initial_metadata(self, metadata: Metadata) -> None:
        return None

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Abort(code, details)

    def abort_with_status(self, status: Any) -> None:
        self.trailing = list(getattr(status, "trailing_metadata", ()) or ())
        raise _Abort(status.code, status.details)


class NatsServer:
    """Serves grpcio servicers on NATS, each method in a queue group.

    ::

        server = NatsServer(nc)
        server.add(hello_pb2_grpc.add_HelloServiceServicer_to_server, HelloServicer())
        await server.start()
        ...
        await server.stop()

    Servicer methods may be sync (run in a thread) or ``async def``; unary-unary methods are
    served (streaming ones are refused when added).
    """

    def __init__(self, nc: NATS, *, prefix: str = DEFAULT_PREFIX) -> None:
        self._nc = nc
        self._prefix = prefix
        self._methods: dict[str, Any] = {}
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def services(self) -> list[str]:
        return sorted({path.strip("/").split("/")[0] for path in self._methods})

    def add(self, add_to_server: Callable[[Any, Any], None], servicer: Any) -> None:
        """Register ``servicer`` with its generated ``add_<Service>Servicer_to_server``."""
        add_to_server(servicer, self)

    # The two calls generated add_*_to_server functions make on a server:
    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        return None

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        for name, handler in handlers.items():
            if handler.request_streaming or handler.response_streaming:
                raise ValueError(f"/{service}/{name} streams; only unary methods are served")
            self._methods[f"/{service}/{name}"] = handler

    async def start(self) -> None:
        for path, handler in self._methods.items():
            subject = rpc_subject(self._prefix, path)
            queue = subject.rsplit(".", 1)[0]

            async def on_msg(msg: Msg, handler: Any = handler, path: str = path) -> None:
                task = asyncio.create_task(self._serve(msg, handler, path))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

            self._subs.append(await self._nc.subscribe(subject, queue=queue, cb=on_msg))
        log.info("serving %s on NATS", ", ".join(self.services))

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> NatsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, msg: Msg, handler: Any, path: str) -> None:
        h = msg.headers or {}
        timeout = float(h["Grpc-Timeout"]) if "Grpc-Timeout" in h else None
        metadata = [(k[len(_MD) :].lower(), v) for k, v in h.items() if k.startswith(_MD)]
        ctx = _NatsServicerContext(
            metadata, None if timeout is None else time.monotonic() + timeout, "nats"
        )
        with tracing.span(
            path.strip("/"),
            parent=tracing.context_of_metadata(metadata),
            kind=tracing.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.transport": "nats"},
        ) as current:
            code, message, data = await self._answer(msg, handler, path, ctx, timeout)
            if code != grpc.StatusCode.OK and current.is_recording():
                current.set_status(tracing.Status(tracing.StatusCode.ERROR, message))
            current.set_attribute("rpc.grpc.status_code", code.value[0])
        if not msg.reply:
            return
        headers = {"Grpc-Status": str(code.value[0])}
        if message:
            headers["Grpc-Message"] = message.replace("\r", " ").replace("\n", " ")
        for key, value in ctx.trailing:
            if key == "grpc-status-details-bin" and isinstance(value, bytes):
                headers["Grpc-Status-Details-Bin"] = base64.b64encode(value).decode()
        await self._nc.publish(msg.reply, data, headers=headers)

    @staticmethod
    async def _answer(
        msg: Msg, handler: Any, path: str, ctx: _NatsServicerContext, timeout: float | None
    ) -> tuple[grpc.StatusCode, str, bytes]:
        """Run the method: its status code, message and serialized response."""
        code, message, data = grpc.StatusCode.OK, "", b""
        try:
            request = handler.request_deserializer(msg.data or b"")
            fn = handler.unary_unary
            if inspect.iscoroutinefunction(fn):
                work: Awaitable[Any] = fn(request, ctx)
            else:
                work = asyncio.to_thread(fn, request, ctx)
            response = await asyncio.wait_for(work, timeout) if timeout else await work
            if ctx.code() not in (None, grpc.StatusCode.OK):
                code, message = ctx.code() or grpc.StatusCode.UNKNOWN, ctx.details()
            else:
                data = handler.response_serializer(response)
        except _Abort as err:
            code, message = err.code, err.details
        except TimeoutError:
            code, message = grpc.StatusCode.DEADLINE_EXCEEDED, f"{path}: deadline exceeded"
        except Exception as err:
            code = ctx.code() or grpc.StatusCode.UNKNOWN
            message = ctx.details() or f"{type(err).__name__}: {err}"
            if code == grpc.StatusCode.UNKNOWN:
                log.exception("%s failed", path)
        return code, message, data
