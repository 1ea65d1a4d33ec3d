"""Uses the typing must accept: a handler function types the call and its result."""

from __future__ import annotations

import dataclasses

from durable import Client, Context, Service

shop = Service("typed_shop")


@dataclasses.dataclass
class Order:
    order_id: str
    amount: float


@dataclasses.dataclass
class Receipt:
    order_id: str
    charged: float


@shop.handler()
async def checkout(ctx: Context, order: Order) -> Receipt:
    return Receipt(order.order_id, order.amount)


@shop.handler()
async def ping(ctx: Context) -> int:
    return 1


@shop.handler()
async def orchestrate(ctx: Context, order: Order) -> str:
    receipt: Receipt = await ctx.call(checkout, order)
    pong: int = await ctx.call(ping)
    sent: str = await ctx.send(checkout, order, delay=5)
    anything = await ctx.call("typed_shop/checkout", {"order_id": "x", "amount": 1.0})
    return f"{receipt.charged} {pong} {sent} {anything}"


async def client_side(client: Client) -> None:
    receipt: Receipt = await client.execute(checkout, Order("o-1", 9.5))
    print(receipt.charged + 1)
    pong: int = await client.execute(ping)
    print(pong + 1)
    raw = await client.execute("typed_shop/checkout", {"order_id": "o-2", "amount": 1})
    print(raw)
    typed = await client.execute("typed_shop/checkout", {}, result_type=Receipt)
    print(typed.order_id)
