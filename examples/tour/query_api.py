"""query-api: GetWorkflow, ListWorkflows and Stats from Python (README: the same with
grpcurl).

    make example-query-api
"""

from __future__ import annotations

from durable._client import status_name
from durable_server._tables import format_table
from examples.tour._common import client, main


async def run() -> None:
    async with client() as c:
        done = await c.invoke("greeter/greet", "query", wait=True, wait_timeout=30)
        view = await c.get(done.id)
        print(
            f"GetWorkflow {done.id}: {status_name(view.invocation.status)}, "
            f"{view.invocation.journal_length} step(s)"
        )
        for entry in view.journal:
            print(f"  #{entry.index} {entry.name}: {entry.summary}")
        page = await c.list(handler="greeter/greet", page_size=5)
        rows = [(s.invocation_id, s.handler, status_name(s.status)) for s in page.invocations]
        print("ListWorkflows (newest first):")
        print(format_table(("ID", "HANDLER", "STATUS"), rows))
        stats = await c.stats()
        counts = {status_name(s.status): s.count for s in stats.by_status if s.count}
        print(f"Stats: {stats.total} invocations, {counts}")


if __name__ == "__main__":
    main(run)
