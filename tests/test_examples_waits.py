"""The waiting examples, run as `make run` hosts them (shorter delays)."""

from __future__ import annotations

import time

import pytest

from durable.v1 import types_pb2
from examples.approval_workflow import expenses
from examples.delayed_execution import scheduler
from examples.hello import greeter
from examples.payment_webhook import payments
from tests.engine_support import EngineFactory, start_ready, wait_status

S = types_pb2
SERVICES = [greeter, scheduler, expenses, payments]


@pytest.mark.slow
async def test_delayed_execution(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, SERVICES)
    started = time.monotonic()
    greeting = await engine.client.execute(
        "scheduler/schedule", {"name": "Ada", "delay_seconds": 2}, timeout=10
    )
    view = await engine.client.get(greeting)
    assert view.status == S.INVOCATION_STATUS_SCHEDULED
    assert await engine.client.result(greeting, timeout=20) == "Hello, Ada!"
    assert time.monotonic() - started >= 2.0


async def test_approval_workflow(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, SERVICES)
    expense = {"employee": "bo", "amount": 120.0, "reason": "train"}
    approved = await engine.client.start("expenses/submit", expense)
    view = await wait_status(engine, approved.id, S.INVOCATION_STATUS_SUSPENDED)
    await engine.client.resolve_awakeable(view.waiting_for[0].awakeable_id, True)
    assert await approved.result(timeout=10) == {
        "employee": "bo",
        "amount": 120.0,
        "approved": True,
        "note": "approved",
    }
    rejected = await engine.client.start("expenses/submit", expense)
    view = await wait_status(engine, rejected.id, S.INVOCATION_STATUS_SUSPENDED)
    await engine.client.reject_awakeable(view.waiting_for[0].awakeable_id, "no")
    assert (await rejected.result(timeout=10))["note"] == "rejected: no"


@pytest.mark.slow
async def test_payment_webhook_race(engine_factory: EngineFactory) -> None:
    engine = await start_ready(engine_factory, SERVICES)
    paid = await engine.client.start("payments/charge", {"order_id": "o1", "amount": 5})
    view = await wait_status(engine, paid.id, S.INVOCATION_STATUS_SUSPENDED)
    callback = next(w.awakeable_id for w in view.waiting_for if w.awakeable_id)
    await engine.client.resolve_awakeable(callback, "tx-1")
    assert await paid.result(timeout=10) == {
        "order_id": "o1",
        "status": "paid",
        "transaction": "tx-1",
    }
    late = await engine.client.start(
        "payments/charge", {"order_id": "o2", "amount": 5, "timeout_seconds": 1.5}
    )
    assert (await late.result(timeout=15))["status"] == "timed out"
