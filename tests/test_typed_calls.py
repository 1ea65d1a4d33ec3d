"""Typed references at run time: ``client.execute(checkout, order)`` and
``ctx.call(checkout, order)`` take the handler function, send a dataclass input as JSON and
hand back the declared dataclass result; strings keep working for dynamic use."""

from __future__ import annotations

from tests.engine_support import EngineFactory, start_ready
from tests.typing_cases.typed_calls import Order, Receipt, checkout, ping, shop


async def test_the_handler_function_types_the_call_and_its_result(
    engine_factory: EngineFactory,
) -> None:
    engine = await start_ready(engine_factory, [shop])
    receipt = await engine.client.execute(checkout, Order("o-1", 9.5), timeout=30)
    assert receipt == Receipt("o-1", 9.5)
    assert await engine.client.execute(ping, timeout=30) == 1
    handle = await engine.client.start(checkout, Order("o-2", 1.0))
    assert await handle.result(30, result_type=Receipt) == Receipt("o-2", 1.0)
    raw = await engine.client.execute("typed_shop/checkout", {"order_id": "o-3", "amount": 2})
    assert raw == {"order_id": "o-3", "charged": 2}
    typed = await engine.client.execute(
        "typed_shop/checkout", Order("o-4", 3.0), result_type=Receipt
    )
    assert typed == Receipt("o-4", 3.0)


async def test_ctx_call_with_the_function_returns_the_dataclass(
    engine_factory: EngineFactory,
) -> None:
    engine = await start_ready(engine_factory, [shop])
    text = await engine.client.execute("typed_shop/orchestrate", Order("o-5", 4.0), timeout=30)
    assert text.startswith("4.0 1 inv_"), text
    assert text.endswith("{'order_id': 'x', 'charged': 1.0}"), text
