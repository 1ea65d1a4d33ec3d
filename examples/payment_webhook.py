"""payment-webhook race: wait for the payment provider's webhook, or give up after N seconds.

``payments/charge`` registers an awakeable as the webhook's callback and races it against a
durable timer with ``ctx.select``. Whichever completes first wins, and the winner is
journaled, so a replay after a crash takes the same branch. The webhook (here: you, with
``durable resolve <id> '"tx-123"'``) may arrive before the handler even awaits it.
"""

from __future__ import annotations

import dataclasses
import logging

from durable import Context, Service

log = logging.getLogger("examples.payments")
payments = Service("payments", description="A charge that waits for its webhook, with a timeout")


@dataclasses.dataclass
class Charge:
    order_id: str
    amount: float
    timeout_seconds: float = 60.0


@dataclasses.dataclass
class ChargeResult:
    order_id: str
    status: str
    transaction: str


def _register_webhook(charge: Charge, callback: str) -> str:
    log.warning(
        "payment for %s pending; its webhook: durable resolve %s '\"tx-...\"'",
        charge.order_id,
        callback,
    )
    return callback


@payments.handler()
async def charge(ctx: Context, charge: Charge) -> ChargeResult:
    """Charges and waits for the confirmation webhook, at most timeout_seconds."""
    callback, webhook = ctx.awakeable(str)
    await ctx.run("register webhook", _register_webhook, charge, callback)
    which, transaction = await ctx.select(webhook, ctx.sleep(charge.timeout_seconds))
    if which == 0:
        return ChargeResult(charge.order_id, "paid", str(transaction))
    await ctx.run("void", lambda: f"voided {charge.order_id}")
    return ChargeResult(charge.order_id, "timed out", "")
