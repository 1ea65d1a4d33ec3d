"""delayed-execution: a scheduler that sends a greeting later, durably.

``scheduler/schedule`` journals a delayed send of ``greeter/greet`` and returns at once; the
greeting is a SCHEDULED invocation that starts when its time comes, whatever restarts in
between (it is a JetStream message schedule, not a timer in some process).
"""

from __future__ import annotations

import dataclasses

from durable import Context, Service
from examples.hello import greet

scheduler = Service("scheduler", description="Sends greetings later")


@dataclasses.dataclass
class Reminder:
    name: str
    delay_seconds: float = 30.0


@scheduler.handler()
async def schedule(ctx: Context, reminder: Reminder) -> str:
    """Schedules a greeting for delay_seconds from now; returns its invocation id."""
    greeting_id = await ctx.send(greet, reminder.name, delay=reminder.delay_seconds)
    return greeting_id
