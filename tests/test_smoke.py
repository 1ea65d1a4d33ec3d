"""The shortest path through the engine: invoke a multi-step handler and read its journal."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from durable.testing import LocalEngine
from examples import hello


async def test_checkout_end_to_end(engine_factory: Callable[..., Awaitable[LocalEngine]]) -> None:
    engine = await engine_factory([hello.greeter, hello.orders])
    order = {"order_id": "o-1", "items": ["book"], "amount": 12.5}
    receipt = await engine.client.execute("orders/checkout", order, timeout=10)
    assert receipt["reservation"] == "rsv-o-1"
    assert receipt["payment"].startswith("pay-")
    handle = await engine.client.start("greeter/greet", "Ada")
    assert await handle.result(timeout=10) == "Hello, Ada!"
    view = await engine.client.get(handle.id)
    assert [e.name for e in view.journal] == ["compose"]
