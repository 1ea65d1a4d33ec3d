"""The control-plane process: DurableControl plus server reflection and standard health,
so grpcurl, buf curl and generated stubs work with nothing but the address.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from nats.aio.client import Client as NATS

from durable.contract import EngineConfig, connect_nats, service_of
from durable.v1 import control_pb2, control_pb2_grpc
from durable_server.control.auth import Authenticator, AuthInterceptor
from durable_server.control.errors import RequestBodyCheck
from durable_server.control.plane import ControlPlane
from durable_server.control.reflection import enable_reflection
from durable_server.control.servicer import DurableControlServicer
from durable_server.control.telemetry import Gauges, TelemetryInterceptor
from durable_server.control.tls import TlsFiles
from durable_server.control.validation import RequestError

log = logging.getLogger("durable.control")

SERVICE_NAME = control_pb2.DESCRIPTOR.services_by_name["DurableControl"].full_name


class HealthServicer(health.aio.HealthServicer):  # type: ignore[misc,name-defined]
    """grpc's asyncio health service, with ``List`` (which reflection advertises, and which
    grpcio's answers UNIMPLEMENTED): every service's status as this server holds it."""

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthListResponse:
        response = health_pb2.HealthListResponse()
        for service, status in self._server_status.items():
            response.statuses[service].status = status
        return response


class PortTaken(ConnectionError):
    """The gRPC address is in use: reported in one line, with the flag that changes it."""


class ControlServer:
    """Runs the gRPC server over a :class:`ControlPlane`."""

    def __init__(
        self,
        cfg: EngineConfig,
        listen: str = "127.0.0.1:50051",
        *,
        nc: NATS | None = None,
        tls: TlsFiles | None = None,
        authenticators: list[Authenticator] | None = None,
        reflection: bool = True,
    ) -> None:
        """``tls``: serve TLS (mutual with a client CA); ``authenticators``: require every
        DurableControl call to authenticate (see ``control/auth.py``), None: no auth;
        ``reflection``: serve gRPC server reflection."""
        self.cfg = cfg
        self.listen = listen
        self.tls = tls
        self.authenticators = authenticators
        self.reflection = reflection
        self._nc = nc
        self._own_nc = nc is None
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self.plane: ControlPlane | None = None
        self.servicer: DurableControlServicer | None = None
        self.gauges: Gauges | None = None

    async def start(self) -> None:
        if self._nc is None:
            self._nc = await connect_nats(self.cfg, "durable-control")
        self.plane = ControlPlane(self.cfg, self._nc)
        await self.plane.start()
        self.gauges = Gauges(self.plane, self.cfg)
        self.gauges.start()
        # Accept messages well over the payload limit so the limit is reported precisely
        # (RESOURCE_EXHAUSTED with the numbers) instead of by grpc's generic size check.
        max_message = 4 * self.cfg.max_payload_bytes + 1024 * 1024
        # Outermost first: telemetry sees every call, refused ones included.
        interceptors: list[grpc.aio.ServerInterceptor] = [  # type: ignore[type-arg]
            TelemetryInterceptor(),
            RequestBodyCheck(),
        ]
        if self.authenticators is not None:
            interceptors.append(AuthInterceptor(self.authenticators, self._service_of))
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", max_message),
                ("grpc.max_send_message_length", max_message * 2),
                # grpcio lets a second server bind a taken port by default (SO_REUSEPORT), and
                # calls then go at random to either: one port, one engine.
                ("grpc.so_reuseport", 0),
            ],
        )
        self.servicer = DurableControlServicer(self.plane)
        control_pb2_grpc.add_DurableControlServicer_to_server(self.servicer, server)
        health_servicer = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        if self.reflection:
            enable_reflection(server, (SERVICE_NAME, health.SERVICE_NAME))
        try:
            if self.tls is not None:
                self.port = server.add_secure_port(self.listen, self.tls.credentials())
            else:
                self.port = server.add_insecure_port(self.listen)
        except RuntimeError:  # grpcio raises when the bind fails
            self.port = 0
        if self.port == 0:
            raise PortTaken(
                f"cannot listen on {self.listen}: the port is taken (another engine?); "
                "choose another with --listen"
            )
        await server.start()
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        log.info("control plane listening on %s (port %d)", self.listen, self.port)

    async def _service_of(self, invocation_id: str) -> str | None:
        """The service of an invocation, for credentials limited to some services."""
        assert self.plane is not None
        summary = self.plane.index.get(invocation_id)
        if summary is not None:
            return service_of(summary.handler)
        try:
            record = await self.plane.invocations.view_record(invocation_id)
        except RequestError:
            return None
        return service_of(record.handler)

    @property
    def target(self) -> str:
        host = self.listen.rsplit(":", 1)[0]
        if host in ("0.0.0.0", "[::]", ""):
            host = "127.0.0.1"
        return f"{host}:{self.port}"

    async def stop(self, grace: float = 1.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
        if self.gauges is not None:
            await self.gauges.stop()
        if self.plane is not None:
            await self.plane.stop()
        if self._own_nc and self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()

    async def wait(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()

    async def __aenter__(self) -> ControlServer:
        try:
            await self.start()
        except BaseException:
            # A start that failed (the port is taken, NATS refused) stops what it started:
            # the plane's follows and loops, the gauges, the connection; not left to the
            # event loop's teardown.
            await self.stop(grace=0)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
