"""restate-style: the ticket cart Restate was built for, end to end: reserve through a
durable call, keep the cart in the user's state, and let a durable delayed send expire the
ticket (15 minutes in the example; EXPIRY seconds here) if it was not checked out.

    make example-restate-style EXPIRY=3
"""

from __future__ import annotations

import asyncio
import os
import uuid

from examples.tour._common import client, main


async def run() -> None:
    expiry = float(os.environ.get("EXPIRY", "3"))
    async with client() as c:
        seat, user = f"seat-{uuid.uuid4().hex[:6]}", f"user-{uuid.uuid4().hex[:4]}"
        add = {"ticket_id": seat, "expiry_seconds": expiry}
        print(f"add_ticket: {await c.execute('cart/add_ticket', add, key=user, timeout=30)}")
        print(f"{seat}: {await c.execute('ticket/status', None, key=seat, timeout=30)}")
        expiries = await c.list(handler="cart/expire_ticket", key=user)
        print(f"expiry scheduled: {[s.id for s in expiries.invocations]}")
        print(f"waiting {expiry:.0f}s for the expiry...")
        for _ in range(int(expiry * 20) + 200):
            if await c.execute("ticket/status", None, key=seat, timeout=30) == "AVAILABLE":
                break
            await asyncio.sleep(0.05)
        print(f"{seat}: {await c.execute('ticket/status', None, key=seat, timeout=30)}")
        print(f"cart: {await c.execute('cart/contents', None, key=user, timeout=30)}")


if __name__ == "__main__":
    main(run)
