"""Durable gRPC calls from handlers: ``ctx.stub(HelloServiceStub).SayHello(request)``.

The generated stub is built on a channel whose calls are ``ctx.run`` steps named after the
method and a digest of the request (``rpc /pkg.Service/Method #<digest>``): the response is
journaled, a replay never calls again, and a replay with a different request is a
non-determinism error. Each call carries ``durable-idempotency-key: <invocation>:<step>`` in
its metadata, the same on every retry, so the service can deduplicate. Which transport
carries a service (NATS, or a plain gRPC server at an address) is the worker's
configuration, never the handler's code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import grpc

from durable._retry import RetryPolicy
from durable._rpc import GrpcTransport, Metadata, NatsTransport, Transport
from durable.errors import RpcStatusError, TerminalError

#: Status codes a retry cannot fix: they end the call with a TerminalError by default.
TERMINAL_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
IDEMPOTENCY_KEY = "durable-idempotency-key"


class TransportRouter:
    """NATS for every service, except those mapped to a gRPC address."""

    def __init__(self, nats: Transport, endpoints: Mapping[str, str] | None = None) -> None:
        self._nats = nats
        self._grpc = {service: GrpcTransport(addr) for service, addr in (endpoints or {}).items()}

    def for_path(self, path: str) -> Transport:
        service = path.strip("/").split("/", 1)[0]
        return self._grpc.get(service, self._nats)

    async def close(self) -> None:
        for transport in self._grpc.values():
            await transport.close()


def parse_endpoints(values: Iterable[str]) -> dict[str, str]:
    """``SERVICE=HOST:PORT`` flags as a mapping; ValueError names a malformed one."""
    out: dict[str, str] = {}
    for value in values:
        service, sep, address = value.partition("=")
        if not sep or not service or not address:
            raise ValueError(
                f"{value!r} is not SERVICE=ADDRESS (e.g. examples.v1.HelloService=localhost:9000)"
            )
        out[service] = address
    return out


class DurableChannel:
    """What ``ctx.stub`` builds a generated stub on."""

    def __init__(
        self,
        run: Callable[..., Awaitable[Any]],
        step_key: Callable[[], str],
        router: TransportRouter,
        *,
        retry: RetryPolicy | None,
        terminal_codes: frozenset[grpc.StatusCode],
    ) -> None:
        self._run = run
        self._step_key = step_key
        self._router = router
        self._retry = retry
        self._terminal = terminal_codes

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        **_: Any,
    ) -> Callable[..., Awaitable[Any]]:
        async def call(
            request: Any, *, timeout: float | None = None, metadata: Metadata = ()
        ) -> Any:
            data = request_serializer(request) if request_serializer else bytes(request)
            digest = hashlib.sha256(data).hexdigest()[:16]
            headers = [*metadata, (IDEMPOTENCY_KEY, self._step_key())]
            transport = self._router.for_path(method)

            async def once() -> bytes:
                try:
                    return await transport.call(method, data, timeout=timeout, metadata=headers)
                except RpcStatusError as err:
                    if err.code in self._terminal:
                        raise TerminalError(
                            f"{method} failed: {err.code.name}: {err.message}",
                            code=err.code.value[0],
                        ) from None
                    raise

            raw = await self._run(
                f"rpc {method} #{digest}", once, retry=self._retry, result_type=bytes
            )
            return response_deserializer(raw) if response_deserializer else raw

        return call


__all__ = [
    "IDEMPOTENCY_KEY",
    "TERMINAL_CODES",
    "DurableChannel",
    "NatsTransport",
    "TransportRouter",
    "parse_endpoints",
]
