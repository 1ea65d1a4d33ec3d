"""retry-failures: find failed invocations with ListWorkflows and run them again.

A few checkouts fail (amount 0: a TerminalError). The script lists FAILED invocations of
``orders/checkout``, fixes each input, and invokes it again with an idempotency key derived
from the failed id, so running the script twice never retries one twice.

    make example-retry-failures
"""

from __future__ import annotations

import contextlib
import json
import uuid

from durable.errors import InvocationFailedError
from durable_server._tables import format_table
from examples.tour._common import client, main


async def run() -> None:
    async with client() as c:
        for i in range(3):
            order = {"order_id": f"bad-{i}-{uuid.uuid4().hex[:4]}", "items": ["x"], "amount": 0}
            with contextlib.suppress(InvocationFailedError):
                await c.execute("orders/checkout", order, timeout=30)
        rows = []
        failed = [s async for s in c.list_all(statuses="failed", handler="orders/checkout")]
        for summary in failed:
            view = await c.get(summary.id, skip_journal=True)
            order = view.input
            if order.get("amount", 0) > 0:
                continue
            fixed = {**order, "amount": 1.0}
            retry = await c.invoke(
                "orders/checkout",
                fixed,
                idempotency_key=f"retry-of-{summary.id}",
                wait=True,
                wait_timeout=30,
            )
            rows.append((summary.id, retry.id, json.dumps(await retry.result())[:40]))
        print(format_table(("FAILED", "RETRIED AS", "RESULT"), rows))
        print(f"{len(rows)} failed invocation(s) retried")


if __name__ == "__main__":
    main(run)
