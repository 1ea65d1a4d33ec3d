"""The examples `make run` hosts: a one-step greeter and a three-step checkout.

Every ``ctx.run`` is journaled: kill the process in the middle of ``checkout`` and, when it
comes back, the steps that finished are not run again.
"""

from __future__ import annotations

import dataclasses
import uuid

from durable import Context, Service, TerminalError

greeter = Service("greeter", description="Says hello, durably")


@greeter.handler()
async def greet(ctx: Context, name: str) -> str:
    """Greets someone by name."""
    greeting = await ctx.run("compose", lambda: f"Hello, {name}!")
    return greeting


@dataclasses.dataclass
class Order:
    order_id: str
    items: list[str]
    amount: float


@dataclasses.dataclass
class Receipt:
    order_id: str
    reservation: str
    payment: str
    shipment: str


orders = Service("orders", description="A checkout in three durable steps")


def _reserve(order: Order) -> str:
    if not order.items:
        raise TerminalError("an order needs at least one item")
    return f"rsv-{order.order_id}"


def _charge(order: Order) -> str:
    if order.amount <= 0:
        raise TerminalError(f"cannot charge {order.amount}")
    return f"pay-{uuid.uuid5(uuid.NAMESPACE_URL, order.order_id).hex[:8]}"


@orders.handler()
async def checkout(ctx: Context, order: Order) -> Receipt:
    """Reserves stock, charges the card and ships: each step runs once."""
    reservation = await ctx.run("reserve", _reserve, order)
    payment = await ctx.run("charge", _charge, order)
    tracking = ctx.uuid().hex[:8]  # deterministic: the same on every replay
    shipment = await ctx.run("ship", lambda: f"shp-{tracking}")
    return Receipt(order.order_id, reservation, payment, shipment)
