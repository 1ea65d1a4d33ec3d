"""signup workflow: an account waits for its email to be verified, however long it takes.

``signup/run`` keeps the user's details in state, sends a verification link (a ``ctx.run``
step) and waits on the durable promise ``email-verified``. ``signup/verify`` (a shared
handler, what the link calls) resolves it; ``signup/status`` reads the state while ``run``
waits. The workflow runs once per id: signing up twice with one email returns the first.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import timedelta

from durable import TerminalError, Workflow, WorkflowContext, WorkflowSharedContext

log = logging.getLogger("examples.signup")
signup = Workflow("signup", description="Account creation with email verification")


@dataclasses.dataclass
class Signup:
    email: str
    name: str
    verify_within_seconds: float = 24 * 3600


def _send_link(email: str, workflow_id: str) -> str:
    log.warning(
        "verification link for %s: durable invoke signup/verify --key %s '\"<secret>\"'",
        email,
        workflow_id,
    )
    return f"sent to {email}"


@signup.main()
async def run(ctx: WorkflowContext, user: Signup) -> str:
    """Creates the account once its email is verified (or gives up after the deadline)."""
    ctx.set("user", user)
    ctx.set("stage", "verification sent")
    await ctx.run("send link", _send_link, user.email, ctx.key)
    verified = ctx.promise("email-verified", str)
    which, secret = await ctx.select(
        verified,
        ctx.sleep(timedelta(seconds=user.verify_within_seconds)),
    )
    if which == 1:
        ctx.set("stage", "expired")
        raise TerminalError(f"{user.email} was not verified in time")
    ctx.set("stage", "verified")
    account = await ctx.run("create account", lambda: f"acct-{ctx.key}")
    return f"{account} for {user.name} (verified with {secret})"


@signup.handler()
async def verify(ctx: WorkflowSharedContext, secret: str) -> None:
    """What the emailed link calls: resolves the promise run waits on."""
    await ctx.promise("email-verified").resolve(secret)


@signup.handler()
async def status(ctx: WorkflowSharedContext) -> dict[str, str]:
    """Where the signup is, read from its state while run waits."""
    user = await ctx.get("user", Signup)
    return {
        "stage": await ctx.get("stage", str) or "not started",
        "email": user.email if user else "",
    }
