"""approval-workflow: an expense waits for a manager, for as long as it takes.

``expenses/submit`` creates an awakeable and "emails" its id to the manager (a ``ctx.run``
step). The invocation then suspends: no worker slot, no task, no unacked message. The
manager answers with ``durable resolve <id> true`` (or ``durable reject <id> "reason"``), or
``grpcurl ... DurableControl/ResolveAwakeable``; the handler continues from its journal.
"""

from __future__ import annotations

import dataclasses
import logging

from durable import Context, Service, TerminalError

log = logging.getLogger("examples.approval")
expenses = Service("expenses", description="Expenses that wait for a manager's approval")


@dataclasses.dataclass
class Expense:
    employee: str
    amount: float
    reason: str


@dataclasses.dataclass
class Decision:
    employee: str
    amount: float
    approved: bool
    note: str


def _ask_manager(expense: Expense, awakeable_id: str) -> str:
    # Stands in for an email or a chat message with approve/reject links.
    log.warning(
        "approval needed for %s's %.2f (%s): durable resolve %s true | durable reject %s why",
        expense.employee,
        expense.amount,
        expense.reason,
        awakeable_id,
        awakeable_id,
    )
    return awakeable_id


@expenses.handler()
async def submit(ctx: Context, expense: Expense) -> Decision:
    """Asks a manager and waits for the answer; a rejection is a decision too."""
    awakeable_id, answer = ctx.awakeable(bool)
    await ctx.run("ask manager", _ask_manager, expense, awakeable_id)
    try:
        approved = bool(await answer)
        note = "approved" if approved else "declined"
    except TerminalError as err:
        approved, note = False, f"rejected: {err.message}"
    if approved:
        await ctx.run("pay out", lambda: f"paid {expense.amount:.2f} to {expense.employee}")
    return Decision(expense.employee, expense.amount, approved, note)
