"""async: start an invocation, do other work, then fetch its result.

make example-async
"""

from __future__ import annotations

import asyncio
import uuid

from examples.tour._common import client, main


async def run() -> None:
    async with client() as c:
        order = {"order_id": f"o-{uuid.uuid4().hex[:6]}", "items": ["book"], "amount": 12.5}
        handle = await c.start("orders/checkout", order)
        print(f"started {handle.id}; doing other work meanwhile")
        await asyncio.sleep(0.1)
        receipt = await handle.result(timeout=30)
        print(f"receipt: {receipt}")


if __name__ == "__main__":
    main(run)
