"""delayed-execution: schedule a greeting DELAY seconds from now (5 by default) and wait
for it, saying so. The greeting is a durable scheduled invocation.

    make example-delayed-execution DELAY=5
"""

from __future__ import annotations

import os
import time

from examples.tour._common import client, main


async def run() -> None:
    delay = float(os.environ.get("DELAY", "5"))
    async with client() as c:
        started = time.monotonic()
        greeting_id = await c.execute(
            "scheduler/schedule", {"name": "Ada", "delay_seconds": delay}, timeout=30
        )
        view = await c.get(greeting_id, skip_journal=True)
        print(f"greeting {greeting_id} is {view.status.name}")
        print(f"waiting {delay:.0f}s for it (DELAY=<seconds> changes that)...", flush=True)
        result = await c.result(greeting_id, timeout=delay + 60)
        print(f"after {time.monotonic() - started:.1f}s: {result}")


if __name__ == "__main__":
    main(run)
