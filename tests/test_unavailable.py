"""UNAVAILABLE: the engine could not reach JetStream in the call's time. The answer carries a
``google.rpc.RetryInfo`` saying when to try again, and the Python client sends a call that is
safe to repeat again by itself (reads, steering, Invoke with an idempotency key), while an
Invoke without one reaches its caller (sending it twice would start two invocations).

The nats-server under the engine is SIGKILLed and started again; nothing is mocked.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from durable import Client, Context, Service
from durable._retrying import retry_delay
from durable.errors import RPCError, UnavailableError
from durable.testing import LocalEngine, start_engine
from durable.v1 import control_pb2, control_pb2_grpc
from durable_server.natsd import EmbeddedNats
from tests.engine_support import until, wait_for_handlers

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

flaky = Service("flaky")


@flaky.handler()
async def echo(ctx: Context, text: str) -> str:
    return text


@pytest.fixture
async def engine(isolated_nats: EmbeddedNats) -> AsyncIterator[LocalEngine]:
    async with start_engine([flaky], nats_url=isolated_nats.url) as eng:
        await wait_for_handlers(eng, [flaky])
        yield eng


async def test_unavailable_says_when_to_retry(
    engine: LocalEngine, isolated_nats: EmbeddedNats
) -> None:
    done = await engine.client.invoke("flaky/echo", "hi", wait=True, wait_timeout=10)
    isolated_nats.kill()
    try:
        async with grpc.aio.insecure_channel(engine.target) as channel:
            stub = control_pb2_grpc.DurableControlStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.GetWorkflow(
                    control_pb2.GetWorkflowRequest(invocation_id=done.id), timeout=3
                )
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
        assert retry_delay(info.value) == 1.0
        details = info.value.details() or ""
        assert "retry" in details and "Traceback" not in details
    finally:
        await isolated_nats.astart()


async def test_the_client_repeats_what_is_safe_to_repeat(
    engine: LocalEngine, isolated_nats: EmbeddedNats
) -> None:
    done = await engine.client.invoke("flaky/echo", "hi", wait=True, wait_timeout=10)
    async with (
        Client(engine.target, rpc_timeout=60, unavailable_retry=60) as patient,
        Client(engine.target, rpc_timeout=3, unavailable_retry=None) as impatient,
    ):
        isolated_nats.kill()
        try:
            with pytest.raises(UnavailableError) as unavailable:
                await impatient.get(done.id)
            assert unavailable.value.status == "UNAVAILABLE"
            assert unavailable.value.reason == "JETSTREAM_UNAVAILABLE"
            assert unavailable.value.retry_delay == 1.0
            # Not repeated whatever the budget: a second send would be a second invocation.
            async with Client(engine.target, rpc_timeout=3) as hasty:
                with pytest.raises(RPCError) as info:
                    await hasty.invoke("flaky/echo", "no key")
            assert info.value.code == grpc.StatusCode.UNAVAILABLE
            read = asyncio.create_task(patient.get(done.id))
            again = asyncio.create_task(
                patient.invoke("flaky/echo", "keyed", idempotency_key="k1", wait=True)
            )
            # Both reach the control plane, which holds them while JetStream is away.
            servicer = engine.control.servicer
            assert servicer is not None
            for rpc in ("GetWorkflow", "Invoke"):
                await until(lambda r=rpc: servicer.in_flight[r] > 0, f"{rpc} held")  # type: ignore[misc]
            assert not read.done() and not again.done()
        finally:
            await isolated_nats.astart()
        view = await read
        assert view.id == done.id
        handle = await again
        assert await handle.result(timeout=30) == "keyed"
