"""query-api: GetWorkflow, ListWorkflows and Stats from Python (README: the same with
grpcurl).

    make example-query-api
"""

from __future__ import annotations

from durable_server._tables import format_table
from examples.tour._common import client, main


async def run() -> None:
    async with client() as c:
        done = await c.invoke("greeter/greet", "query", wait=True, wait_timeout=30)
        view = await c.get(done.id)
        print(f"GetWorkflow {done.id}: {view.status.name}, {view.journal_length} step(s)")
        for entry in view.journal:
            print(f"  #{entry.index} {entry.name}: {entry.summary}")
        page = await c.list(handler="greeter/greet", page_size=5)
        rows = [(s.id, s.handler, s.status.name) for s in page.invocations]
        print("ListWorkflows (newest first):")
        print(format_table(("ID", "HANDLER", "STATUS"), rows))
        stats = await c.stats()
        counts = {status.name: n for status, n in stats.by_status.items() if n}
        print(f"Stats: {stats.total} invocations, {counts}")


if __name__ == "__main__":
    main(run)
