"""multi-service: several durable gRPC calls in one handler, typed by the generated code.

``concierge/welcome`` greets a guest through HelloService and reserves a seat through
TicketService, both served over NATS by the examples worker (``grpc_services.py``). Each call
is a journaled step: after a crash the greeting and the reservation are not asked for again,
and the reservation carries an idempotency key the ticket service deduplicates on.
"""

from __future__ import annotations

import dataclasses

from durable import Context, Service, TerminalError
from examples.v1 import hello_pb2, hello_pb2_grpc, ticket_pb2, ticket_pb2_grpc

concierge = Service("concierge", description="Greets a guest and reserves a seat")


@dataclasses.dataclass
class Guest:
    name: str
    seat: str


@concierge.handler()
async def welcome(ctx: Context, guest: Guest) -> dict[str, str]:
    """Greets the guest, then reserves their seat; a taken seat is a terminal failure."""
    hello = ctx.stub(hello_pb2_grpc.HelloServiceStub)
    tickets = ctx.stub(ticket_pb2_grpc.TicketServiceStub)
    greeting = await hello.SayHello(hello_pb2.SayHelloRequest(name=guest.name), timeout=5)
    try:
        reservation = await tickets.Reserve(
            ticket_pb2.ReserveRequest(ticket_id=guest.seat, user=guest.name)
        )
    except TerminalError as err:
        return {"greeting": greeting.greeting, "seat": f"not reserved: {err.message}"}
    return {"greeting": greeting.greeting, "seat": reservation.reservation_id}
