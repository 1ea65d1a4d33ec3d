"""ticket-cart: tickets and carts as virtual objects. One ticket can be reserved by one cart
at a time (its key serializes ``ticket/reserve``); checkout sells what the cart holds.

    make example-ticket-cart
"""

from __future__ import annotations

import uuid

from examples.tour._common import client, main


async def run() -> None:
    async with client() as c:
        seat = f"seat-{uuid.uuid4().hex[:6]}"
        ada, bo = f"ada-{seat}", f"bo-{seat}"
        add = {"ticket_id": seat, "expiry_seconds": 900}
        print(f"ada adds {seat}: {await c.execute('cart/add_ticket', add, key=ada, timeout=30)}")
        print(f"bo adds {seat}:  {await c.execute('cart/add_ticket', add, key=bo, timeout=30)}")
        print(f"ada's cart: {await c.execute('cart/contents', None, key=ada, timeout=30)}")
        print(f"checkout:   {await c.execute('cart/checkout', None, key=ada, timeout=30)}")
        print(f"{seat} is {await c.execute('ticket/status', None, key=seat, timeout=30)}")
        print(f"ticket state: {await c.get_state('ticket', seat)}")


if __name__ == "__main__":
    main(run)
