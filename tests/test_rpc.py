"""gRPC services over NATS: the adapter (queue groups, statuses, deadlines), durable calls
from handlers (journaled, idempotency key, non-determinism, terminal and retried codes), and
the plain-gRPC transport chosen by configuration."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import grpc
import pytest
from nats.aio.client import Client as NATS

from durable import Context, NatsChannel, NatsServer, RetryPolicy, RpcStatusError, Service
from durable.v1 import types_pb2
from examples.grpc_services import HelloServicer, TicketServicer
from examples.multi_service import concierge
from examples.v1 import hello_pb2, hello_pb2_grpc, ticket_pb2_grpc
from tests.engine_support import EngineFactory, start_ready, wait_status

S = types_pb2
ATTEMPTS: collections.Counter[str] = collections.Counter()
rpc_svc = Service("rpcs", retry=RetryPolicy(initial_interval=0.05, maximum_attempts=5))


class SlowHello(hello_pb2_grpc.HelloServiceServicer):
    def SayHello(self, request: Any, context: Any) -> Any:
        import time

        time.sleep(0.5)
        return hello_pb2.SayHelloResponse(greeting="late")


@rpc_svc.handler()
async def greet_then_flake(ctx: Context, name: str) -> str:
    reply = await ctx.stub(hello_pb2_grpc.HelloServiceStub).SayHello(
        hello_pb2.SayHelloRequest(name=name)
    )
    ATTEMPTS[name] += 1
    if ATTEMPTS[name] == 1:
        raise ConnectionError("transient, after the call")  # the call must not run again
    return str(reply.greeting)


@rpc_svc.handler()
async def changing_request(ctx: Context, name: str) -> str:
    ATTEMPTS[name] += 1
    reply = await ctx.stub(hello_pb2_grpc.HelloServiceStub).SayHello(
        hello_pb2.SayHelloRequest(name=f"{name}{ATTEMPTS[name]}")
    )
    if ATTEMPTS[name] == 1:
        raise ConnectionError("retry with a different request")
    return str(reply.greeting)


async def test_adapter_serves_a_servicer_in_a_queue_group(nc: NATS, unique: str) -> None:
    first, second = HelloServicer(), HelloServicer()
    servers = [NatsServer(nc, prefix=unique), NatsServer(nc, prefix=unique)]
    servers[0].add(hello_pb2_grpc.add_HelloServiceServicer_to_server, first)
    servers[1].add(hello_pb2_grpc.add_HelloServiceServicer_to_server, second)
    for s in servers:
        await s.start()
    try:
        stub = hello_pb2_grpc.HelloServiceStub(NatsChannel(nc, prefix=unique))
        replies = [await stub.SayHello(hello_pb2.SayHelloRequest(name=f"n{i}")) for i in range(40)]
        assert all(r.greeting.startswith("Hello, n") for r in replies)
        assert len(first.calls) + len(second.calls) == 40
        assert first.calls and second.calls, "the queue group should share the calls"
        with pytest.raises(RpcStatusError) as bad:
            await stub.SayHello(hello_pb2.SayHelloRequest(name=""))
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert bad.value.status == "INVALID_ARGUMENT"  # the shape of RPCError
        assert (bad.value.reason, bad.value.metadata) == ("", {})  # the service sent none
        assert bad.value.message == "name is required"
        with pytest.raises(RpcStatusError) as none:
            await hello_pb2_grpc.HelloServiceStub(NatsChannel(nc, prefix=unique + "x")).SayHello(
                hello_pb2.SayHelloRequest(name="a")
            )
        assert none.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        for s in servers:
            await s.stop()


async def test_adapter_deadline(nc: NATS, unique: str) -> None:
    async with NatsServer(nc, prefix=unique) as server:
        server.add(hello_pb2_grpc.add_HelloServiceServicer_to_server, SlowHello())
        await server.stop()
        await server.start()
        stub = hello_pb2_grpc.HelloServiceStub(NatsChannel(nc, prefix=unique))
        with pytest.raises(RpcStatusError) as late:
            await stub.SayHello(hello_pb2.SayHelloRequest(name="a"), timeout=0.1)
        assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert (await stub.SayHello(hello_pb2.SayHelloRequest(name="a"), timeout=5)).greeting


async def test_durable_calls_are_journaled_once_with_an_idempotency_key(
    engine_factory: EngineFactory,
) -> None:
    hello, tickets = HelloServicer(), TicketServicer()
    servicers = [
        (hello_pb2_grpc.add_HelloServiceServicer_to_server, hello),
        (ticket_pb2_grpc.add_TicketServiceServicer_to_server, tickets),
    ]
    engine = await start_ready(engine_factory, [rpc_svc, concierge], servicers=servicers)
    out = await engine.client.execute("rpcs/greet_then_flake", "ada", timeout=20)
    assert out.startswith("Hello, ada!")
    assert [name for name, _ in hello.calls] == ["ada"], "replay must not call again"
    (handle,) = (await engine.client.list(handler="rpcs/greet_then_flake")).invocations
    view = await engine.client.get(handle.id)
    assert view.journal[0].name.startswith("rpc /examples.v1.HelloService/SayHello #")
    assert hello.calls[0][1] == f"{handle.id}:0"

    welcome = await engine.client.execute(
        "concierge/welcome", {"name": "bo", "seat": "s1"}, timeout=20
    )
    assert welcome["seat"] == "rsv-s1-bo"
    taken = await engine.client.execute(
        "concierge/welcome", {"name": "cy", "seat": "s1"}, timeout=20
    )
    assert taken["seat"].startswith("not reserved: /examples.v1.TicketService/Reserve failed")
    assert "FAILED_PRECONDITION" in taken["seat"]


async def test_a_different_request_on_replay_is_non_determinism(
    engine_factory: EngineFactory,
) -> None:
    servicers = [(hello_pb2_grpc.add_HelloServiceServicer_to_server, HelloServicer())]
    engine = await start_ready(engine_factory, [rpc_svc], servicers=servicers)
    handle = await engine.client.start("rpcs/changing_request", "zed")
    view = await wait_status(engine, handle.id, S.INVOCATION_STATUS_PAUSED, timeout=15)
    assert "non-deterministic" in view.status_reason
    assert "rpc /examples.v1.HelloService/SayHello" in view.status_reason


async def test_unavailable_is_retried_until_the_service_comes(
    engine_factory: EngineFactory,
) -> None:
    engine = await start_ready(engine_factory, [rpc_svc])
    handle = await engine.client.start("rpcs/greet_then_flake", "late-service")
    await asyncio.sleep(0.3)  # NATS says no responders: UNAVAILABLE, retried
    view = await engine.client.get(handle.id)
    assert view.status in (
        S.INVOCATION_STATUS_BACKING_OFF,
        S.INVOCATION_STATUS_RUNNING,
        S.INVOCATION_STATUS_PENDING,
    )
    async with NatsServer(engine.worker.nc, prefix=engine.config.prefix) as server:
        server.add(hello_pb2_grpc.add_HelloServiceServicer_to_server, HelloServicer())
        await server.stop()
        await server.start()
        assert (await handle.result(timeout=20)).startswith("Hello, late-service!")


async def test_plain_grpc_transport_by_configuration(engine_factory: EngineFactory) -> None:
    hello = HelloServicer()
    server = grpc.aio.server()
    hello_pb2_grpc.add_HelloServiceServicer_to_server(hello, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        engine = await start_ready(
            engine_factory,
            [rpc_svc],
            grpc_endpoints={"examples.v1.HelloService": f"127.0.0.1:{port}"},
        )
        out = await engine.client.execute("rpcs/greet_then_flake", "grpc-ada", timeout=20)
        assert out.startswith("Hello, grpc-ada!")
        assert [name for name, _ in hello.calls] == ["grpc-ada"]
        assert hello.calls[0][1].endswith(":0")  # the idempotency key crossed as metadata
    finally:
        await server.stop(None)
