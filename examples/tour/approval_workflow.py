"""approval-workflow: an expense waits for a manager; here the "manager" approves it
through ResolveAwakeable after reading the awakeable id from GetWorkflow.

    make example-approval-workflow
"""

from __future__ import annotations

import asyncio

from examples.tour._common import client, main


async def run() -> None:
    async with client() as c:
        expense = {"employee": "ada", "amount": 120.0, "reason": "train"}
        handle = await c.start("expenses/submit", expense)
        awakeable = ""
        for _ in range(200):
            view = await c.get(handle.id, skip_journal=True)
            waits = [w.awakeable_id for w in view.waiting_for if w.awakeable_id]
            if waits:
                awakeable = waits[0]
                break
            await asyncio.sleep(0.05)
        print(f"{handle.id} waits for {awakeable}")
        print(f"  durable resolve {awakeable} true     # what a manager would run")
        await c.resolve_awakeable(awakeable, True)
        print(f"decision: {await handle.result(timeout=30)}")


if __name__ == "__main__":
    main(run)
