"""Every DurableControl RPC against every kind of caller: no credentials, a wrong token, a
key of each role, and a key limited to another service. Refused calls get UNAUTHENTICATED
or PERMISSION_DENIED (naming the role) and change nothing in the store; allowed ones pass
the gate; operate calls are audited; health stays open."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc

from durable import (
    Client,
    Context,
    ObjectContext,
    PermissionDeniedError,
    Service,
    VirtualObject,
    Workflow,
    WorkflowContext,
)
from durable.contract import awakeable_id
from durable.testing import start_engine
from durable.v1 import control_pb2, control_pb2_grpc, types_pb2
from durable_server.control.auth import ROLE_OF, KeyFile, token_digest
from durable_server.control.server import ControlServer
from durable_server.natsd import EmbeddedNats
from tests.engine_support import wait_status

C = control_pb2
orders = Service("orders")
payments = Service("payments")
cart = VirtualObject("cart")
wf = Workflow("wf")


@orders.handler()
async def hold(ctx: Context, n: int) -> int:
    _, woken = ctx.awakeable(int)
    got: int = await woken
    return n + got


@payments.handler()
async def pay(ctx: Context, n: int) -> int:
    return n


@cart.handler()
async def add(ctx: ObjectContext, item: str) -> None:
    ctx.set("item", item)


@wf.main()
async def run(ctx: WorkflowContext, n: int) -> int:
    return n


KEYS = {
    "invoker": ("invoke", None),
    "reader": ("read", None),
    "operator": ("operate", None),
    "payments-only": ("invoke read operate", ["payments"]),
}


def _key_file(path: Path) -> dict[str, str]:
    tokens, lines = {}, []
    for name, (roles, services) in KEYS.items():
        token = f"dk_test_{name}"
        tokens[name] = token
        lines += ["[[key]]", f'name = "{name}"']
        lines.append("roles = [" + ", ".join(f'"{r}"' for r in roles.split()) + "]")
        if services:
            lines.append("services = [" + ", ".join(f'"{s}"' for s in services) + "]")
        lines.append(f'sha256 = "{token_digest(token)}"')
    path.write_text("\n".join(lines) + "\n")
    return tokens


def _json(value: Any) -> types_pb2.Payload:
    v = struct_pb2.Value()
    v.number_value = value
    return types_pb2.Payload(json=v)


def _requests(inv: str) -> dict[str, Callable[[control_pb2_grpc.DurableControlStub], Any]]:
    awk = awakeable_id(inv, 0)
    return {
        "Invoke": lambda s: s.Invoke(C.InvokeRequest(handler="orders/hold", input=_json(1))),
        "AwaitResult": lambda s: s.AwaitResult(
            C.AwaitResultRequest(invocation_id=inv, timeout=Duration(nanos=10_000_000))
        ),
        "GetWorkflow": lambda s: s.GetWorkflow(C.GetWorkflowRequest(invocation_id=inv)),
        "ListWorkflows": lambda s: s.ListWorkflows(C.ListWorkflowsRequest(handler="orders/hold")),
        "Stats": lambda s: s.Stats(C.StatsRequest()),
        "Pause": lambda s: s.Pause(C.PauseRequest(invocation_id=inv)),
        "Resume": lambda s: s.Resume(C.ResumeRequest(invocation_id=inv)),
        "Cancel": lambda s: s.Cancel(C.CancelRequest(invocation_id=inv)),
        "ListHandlers": lambda s: s.ListHandlers(C.ListHandlersRequest()),
        "ResolveAwakeable": lambda s: s.ResolveAwakeable(
            C.ResolveAwakeableRequest(awakeable_id=awk, value=_json(5))
        ),
        "RejectAwakeable": lambda s: s.RejectAwakeable(
            C.RejectAwakeableRequest(awakeable_id=awk, reason="no")
        ),
        "WatchWorkflow": lambda s: _first(
            s.WatchWorkflow(C.WatchWorkflowRequest(invocation_id=inv))
        ),
        "ResolvePromise": lambda s: s.ResolvePromise(
            C.ResolvePromiseRequest(handler="wf/run", key="w1", promise="p", value=_json(1))
        ),
        "RejectPromise": lambda s: s.RejectPromise(
            C.RejectPromiseRequest(handler="wf/run", key="w1", promise="p", reason="no")
        ),
        "GetObjectState": lambda s: s.GetObjectState(
            C.GetObjectStateRequest(object="cart", key="k")
        ),
        "SetObjectState": lambda s: s.SetObjectState(
            C.SetObjectStateRequest(object="cart", key="k", clear_all=True)
        ),
        "Kill": lambda s: s.Kill(C.KillRequest(invocation_id=inv)),
        "Purge": lambda s: s.Purge(C.PurgeRequest(invocation_id=inv)),
        "GetServerInfo": lambda s: s.GetServerInfo(C.GetServerInfoRequest()),
    }


async def _first(call: Any) -> Any:
    async for response in call:
        call.cancel()
        return response
    return None


#: RPCs that name no service: a key limited to some services may still call them.
_UNSCOPED = {"Stats", "ListHandlers", "GetServerInfo"}


def _expected(caller: str, rpc: str) -> grpc.StatusCode | None:
    """The refusal ``caller`` must get for ``rpc``; None when the gate lets it through."""
    if caller in ("nobody", "wrong-token"):
        return grpc.StatusCode.UNAUTHENTICATED
    roles, services = KEYS[caller]
    if ROLE_OF[rpc] not in roles.split():
        return grpc.StatusCode.PERMISSION_DENIED
    if services is not None and rpc not in _UNSCOPED:
        return grpc.StatusCode.PERMISSION_DENIED
    return None


async def _call(
    target: str, token: str | None, rpc: str, request: Callable[..., Any]
) -> grpc.StatusCode:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()

    # grpc.aio files an interceptor under its first matching kind only: one class each.
    class _Unary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
        async def intercept_unary_unary(self, cont: Any, details: Any, req: Any) -> Any:
            return await cont(details._replace(metadata=list(metadata)), req)

    class _Stream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
        async def intercept_unary_stream(self, cont: Any, details: Any, req: Any) -> Any:
            return await cont(details._replace(metadata=list(metadata)), req)

    async with grpc.aio.insecure_channel(target, interceptors=[_Unary(), _Stream()]) as channel:
        stub = control_pb2_grpc.DurableControlStub(channel)
        try:
            await request(stub)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.PERMISSION_DENIED:
                # It names the role needed, or the service the key may not touch.
                assert ROLE_OF[rpc] in (err.details() or "") or "may" in (err.details() or "")
            return err.code()
        return grpc.StatusCode.OK


async def test_every_rpc_against_every_caller(
    nats_server: EmbeddedNats, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="durable.audit")
    tokens = _key_file(tmp_path / "keys.toml")
    tokens["wrong-token"] = "dk_not_a_key"
    tokens["nobody"] = ""
    async with (
        start_engine([orders, payments, cart, wf], nats_url=nats_server.url) as engine,
        ControlServer(
            engine.config, "127.0.0.1:0", authenticators=[KeyFile(tmp_path / "keys.toml")]
        ) as server,
    ):
        admin = engine.client  # the unauthenticated in-process control plane: for setup
        handle = await admin.invoke("orders/hold", 1, wait=False)
        await wait_status(engine, handle.id, types_pb2.INVOCATION_STATUS_SUSPENDED)
        await admin.execute("cart/add", "book", key="k", timeout=30)
        before = (await admin.stats()).by_status
        requests = _requests(handle.id)
        assert set(requests) == set(ROLE_OF)  # every RPC of the service is in the matrix

        refused_order = [c for c in ("nobody", "wrong-token", *KEYS)]
        outcomes: dict[tuple[str, str], grpc.StatusCode] = {}
        for caller in refused_order:
            for rpc, request in requests.items():
                if _expected(caller, rpc) is not None:
                    outcomes[caller, rpc] = await _call(server.target, tokens[caller], rpc, request)
        wrong = {k: v for k, v in outcomes.items() if v != _expected(*k)}
        assert not wrong, wrong
        # Nothing a refused call asked for happened.
        view = await admin.get(handle.id)
        assert view.status == types_pb2.INVOCATION_STATUS_SUSPENDED and not view.pause_requested
        assert await admin.get_state("cart", "k") == {"item": "book"}
        assert (await admin.stats()).by_status == before
        assert not [r for r in caplog.records if r.name == "durable.audit"]

        # Allowed ones pass the gate (whatever the engine then answers).
        for caller in KEYS:
            for rpc, request in requests.items():
                if _expected(caller, rpc) is None:
                    code = await _call(server.target, tokens[caller], rpc, request)
                    assert code not in (
                        grpc.StatusCode.UNAUTHENTICATED,
                        grpc.StatusCode.PERMISSION_DENIED,
                    ), (caller, rpc, code)
        audited = [r.getMessage() for r in caplog.records if r.name == "durable.audit"]
        assert f"Pause by operator: invocation_id={handle.id}" in audited
        assert "SetObjectState by operator: object=cart key=k" in audited

        # A key limited to payments sees only payments in Stats and ListHandlers.
        async with Client(server.target, token=tokens["payments-only"]) as scoped:
            assert {h.service for h in await scoped.handlers()} == {"payments"}
            assert set((await scoped.stats()).by_service) <= {"payments"}
            # It may list its service's invocations by service as by handler, not others'.
            await scoped.list(service="payments")
            with pytest.raises(PermissionDeniedError):
                await scoped.list(service="orders")
            with pytest.raises(PermissionDeniedError):
                await scoped.list()
        # Health needs no credentials.
        async with grpc.aio.insecure_channel(server.target) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_an_auth_plugin_is_asked_after_the_key_file(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    from durable_server.control.auth import load_plugin
    from tests.auth_plugin import sign

    tokens = _key_file(tmp_path / "keys.toml")
    authenticators = [KeyFile(tmp_path / "keys.toml"), load_plugin("tests.auth_plugin:plugin")]
    async with (
        start_engine([payments], nats_url=nats_server.url) as engine,
        ControlServer(engine.config, "127.0.0.1:0", authenticators=authenticators) as server,
    ):

        async def stats(authorization: str) -> grpc.StatusCode:
            async with grpc.aio.insecure_channel(server.target) as channel:
                stub = control_pb2_grpc.DurableControlStub(channel)
                try:
                    await stub.Stats(C.StatsRequest(), metadata=(("authorization", authorization),))
                except grpc.aio.AioRpcError as err:
                    return err.code()
                return grpc.StatusCode.OK

        assert await stats(sign("ada")) == grpc.StatusCode.OK
        assert await stats(sign("ada")[:-1] + "0") == grpc.StatusCode.UNAUTHENTICATED
        assert await stats(f"Bearer {tokens['reader']}") == grpc.StatusCode.OK
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = control_pb2_grpc.DurableControlStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Pause(
                    C.PauseRequest(invocation_id="inv_" + "a" * 26),
                    metadata=(("authorization", sign("ada")),),
                )
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "operate role" in (refused.value.details() or "")
