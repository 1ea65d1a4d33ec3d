"""The examples tour: every `make example-<name>` script, run against an engine hosting what
`make run` hosts (the examples' handlers and their gRPC services)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from durable.contract import load_modules
from durable.testing import LocalEngine, start_engine
from durable_server.natsd import EmbeddedNats
from durable_server.process import DEFAULT_MODULES

pytestmark = pytest.mark.slow  # real processes or long waits: not in make test-fast

REPO = Path(__file__).resolve().parents[1]
TOUR = {
    "simple": ["Hello, World!"],
    "async_start": ["started inv_", "receipt: {"],
    "typed": ["typed receipt: Receipt(", "refused before it started"],
    "local": ["Hello, local engine!", "1 invocation(s)"],
    "multi_service": ["Ada: {", "rsv-seat-", "Bo:  {", "not reserved"],
    "concurrent_workflows": ["30 workflows in", "latency ms: p50"],
    "retry_failures": ["3 failed invocation(s) retried"],
    "pause_cancel": [
        "pause  -> PAUSED",
        "resume -> ",
        "ended CANCELLED: cancelled (trip called off)",
    ],
    "ticket_cart": ["ada adds seat-", ": True", "bo adds seat-", ":  False", "is SOLD"],
    "delayed_execution": ["is SCHEDULED", "Hello, Ada!"],
    "approval_workflow": ["waits for awk_", "'approved': True"],
    "query_api": ["GetWorkflow inv_", "ListWorkflows", "Stats: "],
    "direct_grpc_call": ["Hello, NATS!", "empty name: INVALID_ARGUMENT: name is required"],
    "restate_style": ["add_ticket: True", "RESERVED", "expiry scheduled: ['inv_", "AVAILABLE"],
}


@pytest.fixture(scope="module")
async def engine(nats_server: EmbeddedNats) -> AsyncIterator[LocalEngine]:
    services, servicers = load_modules(DEFAULT_MODULES)
    async with start_engine(services, nats_url=nats_server.url, servicers=servicers) as e:
        yield e


def _env(engine: LocalEngine, nats_server: EmbeddedNats) -> dict[str, str]:
    return {
        **os.environ,
        "DURABLE_TARGET": engine.target,
        "DURABLE_NATS": nats_server.url,
        "DURABLE_PREFIX": engine.config.prefix,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "N": "30",
        "DELAY": "1.5",
        "EXPIRY": "1.5",
        "BUF": str(Path(sys.executable).parent / "buf"),
    }


async def _run(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("name", sorted(TOUR))
async def test_tour_script(name: str, engine: LocalEngine, nats_server: EmbeddedNats) -> None:
    code, out, err = await _run(
        [sys.executable, "-m", f"examples.tour.{name}"], _env(engine, nats_server)
    )
    assert code == 0, f"{name} failed:\n{out}\n{err}"
    for expected in TOUR[name]:
        assert expected in out, f"{name}: {expected!r} not in:\n{out}"


async def test_grpcurl_invocation(engine: LocalEngine, nats_server: EmbeddedNats) -> None:
    env = _env(engine, nats_server)
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not (Path(p) / "grpcurl").exists()
    )  # the buf curl path, whatever this machine has
    code, out, err = await _run(["bash", "examples/tour/grpcurl_invocation.sh"], env)
    assert code == 0, f"{out}\n{err}"
    for expected in ("INVOCATION_STATUS_COMPLETED", "Hello, grpcurl!", '"done": true', "byStatus"):
        assert expected in out, f"{expected!r} not in:\n{out}"
