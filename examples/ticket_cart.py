"""restate-style: the ticket cart Restate was built for, on our API.

``cart/add_ticket`` (keyed by user) reserves a ticket through a durable call to the
``ticket`` object (keyed by ticket id), adds it to the user's cart state, and schedules its
expiry with a delayed send to the same cart: 15 minutes later ``cart/expire_ticket`` releases
the ticket if it is still in the cart. Each key's exclusive handlers run one at a time, so two
users racing for one ticket cannot both reserve it, and a crash anywhere resumes without
reserving twice or losing the expiry.
"""

from __future__ import annotations

import dataclasses

from durable import ObjectContext, ObjectSharedContext, TerminalError, VirtualObject

ticket = VirtualObject("ticket", description="One ticket: AVAILABLE, RESERVED or SOLD")
cart = VirtualObject("cart", description="A user's cart of reserved tickets")

EXPIRY_SECONDS = 15 * 60


@ticket.handler()
async def reserve(ctx: ObjectContext) -> bool:
    """Reserves the ticket if it is available."""
    if (await ctx.get("status", str) or "AVAILABLE") != "AVAILABLE":
        return False
    ctx.set("status", "RESERVED")
    return True


@ticket.handler()
async def release(ctx: ObjectContext) -> None:
    """Makes a reserved ticket available again."""
    if await ctx.get("status", str) == "RESERVED":
        ctx.set("status", "AVAILABLE")


@ticket.handler()
async def mark_sold(ctx: ObjectContext) -> None:
    """Sells a reserved ticket."""
    if await ctx.get("status", str) != "RESERVED":
        raise TerminalError(f"ticket {ctx.key} is not reserved")
    ctx.set("status", "SOLD")


@ticket.handler(shared=True)
async def status(ctx: ObjectSharedContext) -> str:
    """The ticket's status."""
    return str(await ctx.get("status", str) or "AVAILABLE")


@dataclasses.dataclass
class AddTicket:
    ticket_id: str
    expiry_seconds: float = EXPIRY_SECONDS


@cart.handler()
async def add_ticket(ctx: ObjectContext, request: AddTicket) -> bool:
    """Reserves a ticket, puts it in the cart and schedules its expiry."""
    reserved = await ctx.call(reserve, key=request.ticket_id)
    if reserved:
        tickets = await ctx.get("tickets", list[str]) or []
        ctx.set("tickets", [*tickets, request.ticket_id])
        await ctx.send(expire_ticket, request.ticket_id, key=ctx.key, delay=request.expiry_seconds)
    return bool(reserved)


@cart.handler()
async def expire_ticket(ctx: ObjectContext, ticket_id: str) -> bool:
    """Releases the ticket if it is still in the cart; True when it was."""
    tickets = await ctx.get("tickets", list[str]) or []
    if ticket_id not in tickets:
        return False
    ctx.set("tickets", [t for t in tickets if t != ticket_id])
    await ctx.send(release, key=ticket_id)
    return True


@cart.handler()
async def checkout(ctx: ObjectContext) -> list[str]:
    """Pays for the tickets in the cart and marks them sold."""
    tickets = await ctx.get("tickets", list[str]) or []
    if not tickets:
        raise TerminalError("the cart is empty")
    await ctx.run("pay", lambda: f"paid for {len(tickets)} tickets")
    for ticket_id in tickets:
        await ctx.call(mark_sold, key=ticket_id)
    ctx.clear("tickets")
    return tickets


@cart.handler(shared=True)
async def contents(ctx: ObjectSharedContext) -> list[str]:
    """The tickets in the cart."""
    return list(await ctx.get("tickets", list[str]) or [])
