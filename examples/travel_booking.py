"""travel-booking saga: flight, car and hotel, undone in reverse when a step fails for good.

``travel/book`` books a flight, then a car, then a hotel. The hotel fails terminally (no
rooms), so the compensations run in reverse: cancel the car, cancel the flight. Cancelling
the car fails transiently twice; its ``ctx.run`` retries it in place until it succeeds, so a
compensation is never skipped. Each step, compensations included, is journaled: a crash in
the middle resumes the saga without booking or cancelling anything twice.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable

from durable import Context, RetryPolicy, Service, TerminalError

travel = Service("travel", description="A trip booked as a saga with compensations")

# Transient failures of the car cancellation, per trip (in this process).
_CAR_CANCEL_FAILURES: collections.Counter[str] = collections.Counter()
CAR_CANCEL_FLAKES = 2
UNTIL_IT_WORKS = RetryPolicy(initial_interval=0.05, maximum_interval=1.0)


@dataclasses.dataclass
class Trip:
    trip_id: str
    hotel_has_rooms: bool = False


def _book(kind: str, trip_id: str) -> str:
    return f"{kind}-{trip_id}"


def _book_hotel(trip: Trip) -> str:
    if not trip.hotel_has_rooms:
        raise TerminalError("the hotel has no rooms left")
    return f"hotel-{trip.trip_id}"


def _cancel_car(booking: str) -> str:
    if _CAR_CANCEL_FAILURES[booking] < CAR_CANCEL_FLAKES:
        _CAR_CANCEL_FAILURES[booking] += 1
        raise ConnectionError("car rental API unavailable")
    return f"cancelled {booking}"


@travel.handler()
async def book(ctx: Context, trip: Trip) -> dict[str, object]:
    """Books flight, car and hotel; on a terminal failure, undoes what was booked."""
    compensations: list[tuple[str, Callable[[], str]]] = []
    undone: list[str] = []
    try:
        flight = await ctx.run("book flight", _book, "flight", trip.trip_id)
        compensations.append(("cancel flight", lambda: f"cancelled {flight}"))
        car = await ctx.run("book car", _book, "car", trip.trip_id)
        compensations.append(("cancel car", lambda: _cancel_car(car)))
        hotel = await ctx.run("book hotel", _book_hotel, trip)
        return {"booked": [flight, car, hotel], "undone": undone}
    except TerminalError as err:
        for name, undo in reversed(compensations):
            undone.append(await ctx.run(name, undo, retry=UNTIL_IT_WORKS))
        return {"booked": [], "undone": undone, "failure": err.message}
