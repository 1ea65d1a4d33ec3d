"""multi-service: one handler making several durable gRPC calls (HelloService and
TicketService, served over NATS by the examples worker).

    make example-multi-service
"""

from __future__ import annotations

import uuid

from examples.tour._common import client, main


async def run() -> None:
    async with client() as c:
        seat = f"seat-{uuid.uuid4().hex[:4]}"
        first = await c.execute("concierge/welcome", {"name": "Ada", "seat": seat}, timeout=30)
        print(f"Ada: {first}")
        second = await c.execute("concierge/welcome", {"name": "Bo", "seat": seat}, timeout=30)
        print(f"Bo:  {second}")


if __name__ == "__main__":
    main(run)
