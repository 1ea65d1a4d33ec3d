"""typed: typed input and output. The handler's type hints are the contract: the input is
checked against ``Order`` before the invocation is accepted, and the result decodes into
``Receipt``.

    make example-typed
"""

from __future__ import annotations

import dataclasses
import uuid

from durable.errors import InvalidArgumentError
from examples.hello import Order, Receipt
from examples.tour._common import client, main


async def run() -> None:
    async with client() as c:
        order = Order(order_id=f"o-{uuid.uuid4().hex[:6]}", items=["pen"], amount=3.0)
        receipt = Receipt(
            **await c.execute("orders/checkout", dataclasses.asdict(order), timeout=30)
        )
        print(f"typed receipt: {receipt}")
        try:
            await c.start("orders/checkout", {"order_id": 7})
        except InvalidArgumentError as err:
            print(f"refused before it started: {err.details}")


if __name__ == "__main__":
    main(run)
