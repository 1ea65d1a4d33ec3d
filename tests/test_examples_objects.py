"""The object and workflow examples, as `make run` hosts them (shorter waits)."""

from __future__ import annotations

import asyncio

import pytest

from durable.errors import InvocationFailedError
from durable.v1 import types_pb2
from examples.signup import signup
from examples.ticket_cart import cart, ticket
from examples.travel_booking import travel
from examples.user_notifications import notifications
from tests.engine_support import EngineFactory, start_ready, wait_status

S = types_pb2
SERVICES = [ticket, cart, signup, notifications, travel]


@pytest.mark.slow
async def test_ticket_cart_reserves_expires_and_sells(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, SERVICES)
    c = engine.client
    add = {"ticket_id": "seat-1", "expiry_seconds": 1.5}
    assert await c.execute("cart/add_ticket", add, key="ada", timeout=10) is True
    assert await c.execute("cart/add_ticket", add, key="bo", timeout=10) is False  # taken
    assert await c.execute("ticket/status", None, key="seat-1", timeout=10) == "RESERVED"
    assert await c.execute("cart/contents", None, key="ada", timeout=10) == ["seat-1"]
    # Fifteen minutes, here 1.5 s, later the expiry releases it.
    for _ in range(100):
        if await c.execute("ticket/status", None, key="seat-1", timeout=10) == "AVAILABLE":
            break
        await asyncio.sleep(0.1)
    assert await c.execute("cart/contents", None, key="ada", timeout=10) == []
    assert await c.execute("cart/add_ticket", add | {"expiry_seconds": 60}, key="bo", timeout=10)
    assert await c.execute("cart/checkout", None, key="bo", timeout=10) == ["seat-1"]
    assert await c.execute("ticket/status", None, key="seat-1", timeout=10) == "SOLD"
    with pytest.raises(InvocationFailedError, match="cart is empty"):
        await c.execute("cart/checkout", None, key="bo", timeout=10)


@pytest.mark.slow
async def test_signup_workflow(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, SERVICES)
    c = engine.client
    user = {"email": "ada@example.com", "name": "Ada"}
    run = await c.start("signup/run", user, key="ada@example.com")
    await wait_status(engine, run.id, S.INVOCATION_STATUS_SUSPENDED)
    assert await c.execute("signup/status", None, key="ada@example.com", timeout=10) == {
        "stage": "verification sent",
        "email": "ada@example.com",
    }
    again = await c.start("signup/run", user, key="ada@example.com")
    assert again.already_existed and again.id == run.id
    await c.execute("signup/verify", "s3cret", key="ada@example.com", timeout=10)
    assert await run.result(timeout=10) == ("acct-ada@example.com for Ada (verified with s3cret)")
    late = await c.start("signup/run", user | {"verify_within_seconds": 1.2}, key="bo")
    with pytest.raises(InvocationFailedError, match="not verified in time"):
        await late.result(timeout=10)
    assert (await c.get_state("signup", "bo"))["stage"] == "expired"


async def test_user_notifications(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, SERVICES)
    c = engine.client
    counts = await asyncio.gather(
        *[c.execute("notifications/notify", f"m{i}", key="u1", timeout=20) for i in range(10)]
    )
    assert sorted(counts) == list(range(1, 11))
    assert sorted(await c.execute("notifications/unread", None, key="u1", timeout=10)) == sorted(
        f"m{i}" for i in range(10)
    )
    assert await c.execute("notifications/mark_read", None, key="u1", timeout=10) == 10
    assert await c.execute("notifications/unread", None, key="u1", timeout=10) == []


async def test_travel_booking_saga(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, SERVICES)
    c = engine.client
    result = await c.execute("travel/book", {"trip_id": "t1"}, timeout=20)
    assert result == {
        "booked": [],
        "undone": ["cancelled car-t1", "cancelled flight-t1"],
        "failure": "the hotel has no rooms left",
    }
    view = await c.get((await c.list(handler="travel/book")).invocations[0].id)
    names = [e.name for e in view.journal]
    assert names == ["book flight", "book car", "book hotel", "cancel car", "cancel flight"]
    ok = await c.execute("travel/book", {"trip_id": "t2", "hotel_has_rooms": True}, timeout=20)
    assert ok == {"booked": ["flight-t2", "car-t2", "hotel-t2"], "undone": []}
