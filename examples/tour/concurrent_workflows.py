"""concurrent-workflows: N invocations at once, with a progress bar and a summary of times.

make example-concurrent-workflows N=200
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid

from examples.tour._common import client, main


async def run() -> None:
    n = int(os.environ.get("N", "100"))
    in_flight = asyncio.Semaphore(int(os.environ.get("IN_FLIGHT", "50")))
    done = 0
    latencies: list[float] = []

    async with client() as c:

        async def one(i: int) -> None:
            nonlocal done
            async with in_flight:
                started = time.perf_counter()
                order = {"order_id": f"c{i}-{uuid.uuid4().hex[:4]}", "items": ["x"], "amount": 1}
                await c.execute("orders/checkout", order, timeout=60)
                latencies.append(time.perf_counter() - started)
            done += 1
            bar = "#" * (30 * done // n)
            sys.stderr.write(f"\r[{bar:<30}] {done}/{n}")
            sys.stderr.flush()

        started = time.perf_counter()
        await asyncio.gather(*[one(i) for i in range(n)])
        wall = time.perf_counter() - started
    sys.stderr.write("\n")
    ms = sorted(x * 1000 for x in latencies)
    print(f"{n} workflows in {wall:.2f}s: {n / wall:.0f}/s")
    print(
        f"latency ms: p50 {statistics.median(ms):.1f}  p99 {ms[int(len(ms) * 0.99) - 1]:.1f}"
        f"  max {ms[-1]:.1f}"
    )


if __name__ == "__main__":
    main(run)
