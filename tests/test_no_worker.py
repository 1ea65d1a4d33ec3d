"""An invocation that waits for a worker none hosts says so, and since when (as Temporal
shows "no pollers"): GetWorkflow's ``no_worker_since`` and the "no worker" line of
``durable get``; both go away once a worker for its handler runs again."""

from __future__ import annotations

import asyncio
import time

import pytest

from durable import Context, InvocationStatus, Service
from durable._worker.runtime import Worker
from durable.testing import start_engine
from durable.v1 import types_pb2
from durable_server.natsd import EmbeddedNats
from tests.test_cli_format import durable

lonely = Service("lonely")


@lonely.handler()
async def hello(ctx: Context, name: str) -> str:
    return f"hello {name}"


async def _live_workers(client: object, name: str) -> int:
    handlers = await client.handlers()  # type: ignore[attr-defined]
    return next((h.live_workers for h in handlers if h.name == name), -1)


@pytest.mark.slow
async def test_pending_with_no_worker_says_since_when(nats_server: EmbeddedNats) -> None:
    async with start_engine([lonely], nats_url=nats_server.url, heartbeat_interval=0.2) as engine:
        client = engine.client
        await engine.worker.stop(graceful=False)  # gone, its registration left behind
        deadline = time.monotonic() + 30
        while await _live_workers(client, "lonely/hello") != 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)

        handle = await client.invoke("lonely/hello", "ada", wait=False)
        # Invoke accepted it, and said nobody serves it right now.
        assert handle.no_worker_since is not None
        view = await client.get(handle.id)
        assert view.status == types_pb2.INVOCATION_STATUS_PENDING
        assert view.no_worker_since is not None
        # Stats: the service's backlog beside the workers serving it (none, since when).
        served = (await client.stats()).by_service["lonely"]
        assert served.live_workers == 0 and served.no_worker_since is not None
        assert served.by_status == {InvocationStatus.PENDING: 1}
        stats = await durable(engine.target, "stats")
        [row] = [r for r in stats.table("SERVICE") if r[0] == "lonely"]
        assert row[1:5] == ["1", "1", "0", "0"] and row[5].startswith("0 (none since"), row
        # The worker was last heard from before the invocation existed: since its creation.
        assert view.no_worker_since == view.created_at

        ran = await durable(engine.target, "get", handle.id)
        assert ran.code == 0, ran
        line = ran.field("no worker")
        assert line.startswith("no running worker hosts lonely/hello (since 20"), line
        assert "durable worker --module" in line

        async with Worker(engine.config, [lonely], slots=2):
            assert await handle.result(timeout=30) == "hello ada"
            view = await client.get(handle.id)
            assert view.no_worker_since is None
            assert (await client.stats()).by_service["lonely"].live_workers == 1
            ran = await durable(engine.target, "get", handle.id)
            assert "no worker" not in ran.out


async def test_a_hosted_pending_invocation_has_no_such_line(nats_server: EmbeddedNats) -> None:
    async with start_engine([lonely], nats_url=nats_server.url) as engine:
        handle = await engine.client.invoke("lonely/hello", "bo", wait=False)
        assert handle.no_worker_since is None
        view = await engine.client.get(handle.id)
        assert view.no_worker_since is None
        assert await handle.result(timeout=30) == "hello bo"
