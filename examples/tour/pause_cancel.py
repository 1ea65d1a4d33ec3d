"""pause-cancel: steer a running invocation. An expense waits for approval; it is paused
(it then holds nothing and ignores what happens until resumed), resumed, and cancelled, which
the handler sees at its await and turns into a decision; the invocation ends CANCELLED.

    make example-pause-cancel
"""

from __future__ import annotations

import asyncio

from durable import Client
from durable.errors import InvocationCancelledError
from examples.tour._common import client, main


async def wait_for(c: Client, invocation_id: str, status: str) -> None:
    for _ in range(200):
        view = await c.get(invocation_id, skip_journal=True)
        if view.status.name == status:
            return
        await asyncio.sleep(0.05)
    raise SystemExit(f"{invocation_id} never became {status}")


async def run() -> None:
    async with client() as c:
        expense = {"employee": "ada", "amount": 99.0, "reason": "conference"}
        handle = await c.start("expenses/submit", expense)
        await wait_for(c, handle.id, "SUSPENDED")
        print(f"{handle.id}: SUSPENDED, waiting for a manager")
        print(f"pause  -> {(await c.pause(handle.id, 'audit')).status.name}")
        print(f"resume -> {(await c.resume(handle.id)).status.name}")
        await wait_for(c, handle.id, "SUSPENDED")
        print(f"cancel -> {(await c.cancel(handle.id, 'trip called off')).status.name}")
        try:
            await handle.result(timeout=30)
        except InvocationCancelledError as err:
            print(f"ended CANCELLED: {err.failure_message}")


if __name__ == "__main__":
    main(run)
