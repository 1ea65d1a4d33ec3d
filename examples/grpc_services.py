"""The example gRPC services (proto/examples/v1), served over NATS by the examples worker.

Plain grpcio servicers: the same classes could be added to a ``grpc.aio.server``. The worker
serves everything a module lists in ``GRPC_SERVICERS`` on NATS subjects
(``durable.grpc.examples.v1.HelloService.SayHello``), in a queue group, so several worker
processes share the calls.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import grpc

from examples.v1 import hello_pb2, hello_pb2_grpc, ticket_pb2, ticket_pb2_grpc

IDEMPOTENCY_KEY = "durable-idempotency-key"


class HelloServicer(hello_pb2_grpc.HelloServiceServicer):
    """Greets; refuses an empty name with INVALID_ARGUMENT."""

    def __init__(self) -> None:
        self._count = itertools.count(1)
        self.calls: list[tuple[str, str]] = []  # (name, idempotency key), for tests

    async def SayHello(
        self, request: hello_pb2.SayHelloRequest, context: Any
    ) -> hello_pb2.SayHelloResponse:
        metadata = dict(context.invocation_metadata())
        self.calls.append((request.name, str(metadata.get(IDEMPOTENCY_KEY, ""))))
        if not request.name:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "name is required")
        return hello_pb2.SayHelloResponse(
            greeting=f"Hello, {request.name}! (from pid {os.getpid()})", count=next(self._count)
        )


class TicketServicer(ticket_pb2_grpc.TicketServiceServicer):
    """Holds tickets; a retried Reserve with the same idempotency key gets the same answer."""

    def __init__(self) -> None:
        self._holders: dict[str, str] = {}
        self._answers: dict[str, ticket_pb2.ReserveResponse] = {}

    async def Reserve(
        self, request: ticket_pb2.ReserveRequest, context: Any
    ) -> ticket_pb2.ReserveResponse:
        key = str(dict(context.invocation_metadata()).get(IDEMPOTENCY_KEY, ""))
        if key and key in self._answers:
            return self._answers[key]
        holder = self._holders.get(request.ticket_id)
        if holder is not None and holder != request.user:
            await _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"ticket {request.ticket_id} is held by someone else",
            )
        self._holders[request.ticket_id] = request.user
        answer = ticket_pb2.ReserveResponse(
            reservation_id=f"rsv-{request.ticket_id}-{request.user}"
        )
        if key:
            self._answers[key] = answer
        return answer

    async def Release(
        self, request: ticket_pb2.ReleaseRequest, context: Any
    ) -> ticket_pb2.ReleaseResponse:
        return ticket_pb2.ReleaseResponse(
            released=self._holders.pop(request.ticket_id, None) is not None
        )


async def _abort(context: Any, code: grpc.StatusCode, message: str) -> None:
    # grpc.aio's abort is a coroutine; the NATS adapter's raises at once: both end here.
    result = context.abort(code, message)
    if result is not None:
        await result


GRPC_SERVICERS = [
    (hello_pb2_grpc.add_HelloServiceServicer_to_server, HelloServicer()),
    (ticket_pb2_grpc.add_TicketServiceServicer_to_server, TicketServicer()),
]
