"""user-notifications: a virtual object per user holding their unread notifications.

``notifications/notify`` appends to the user's state (exclusive: concurrent notifications
for one user never lose each other), ``notifications/unread`` reads it concurrently with
everything (shared), ``notifications/mark_read`` empties it.
"""

from __future__ import annotations

from durable import ObjectContext, ObjectSharedContext, VirtualObject

notifications = VirtualObject("notifications", description="Unread notifications per user")

KEEP = 100  # the newest ones kept


@notifications.handler()
async def notify(ctx: ObjectContext, message: str) -> int:
    """Adds a notification; returns how many are unread."""
    unread = await ctx.get("unread", list[str]) or []
    unread = [*unread, message][-KEEP:]
    ctx.set("unread", unread)
    return len(unread)


@notifications.handler(shared=True)
async def unread(ctx: ObjectSharedContext) -> list[str]:
    """The unread notifications, oldest first."""
    return list(await ctx.get("unread", list[str]) or [])


@notifications.handler()
async def mark_read(ctx: ObjectContext) -> int:
    """Marks everything read; returns how many were unread."""
    count = len(await ctx.get("unread", list[str]) or [])
    ctx.clear("unread")
    return count
