"""Only the control plane (or `durable setup`) creates the engine's streams, consumer and
buckets; a worker opens what exists. A worker started first waits, saying why, and creates
nothing; once `durable setup` has run, it comes up and serves."""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid

import nats
import pytest

from durable import Context, Service
from durable._store.config import EngineConfig
from durable._worker.runtime import Worker
from durable.testing import start_engine
from durable_server.natsd import EmbeddedNats
from tests.procs import REPO

early = Service("early")


@early.handler()
async def hello(ctx: Context, name: str) -> str:
    return f"hello {name}"


async def _stream_names(url: str) -> list[str]:
    nc = await nats.connect(url)
    try:
        return [s.config.name for s in await nc.jetstream().streams_info()]
    finally:
        await nc.close()


async def test_a_worker_waits_for_the_store_and_never_creates_it(
    isolated_nats: EmbeddedNats, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="durable.patience")
    prefix = f"p{uuid.uuid4().hex[:8]}"
    cfg = EngineConfig(nats_url=isolated_nats.url, prefix=prefix)
    worker = Worker(cfg, [early], slots=2)
    starting = asyncio.create_task(worker.start())
    try:
        for _ in range(600):  # the log line is the event: it has looked and found nothing
            if "do not exist yet" in caplog.text:
                break
            await asyncio.sleep(0.05)
        assert "the control plane creates them (durable server), or `durable setup`" in (
            caplog.text
        )
        assert not starting.done()
        assert await _stream_names(isolated_nats.url) == []  # it created nothing

        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "durable_server.cli", "setup",
            "--nats", isolated_nats.url, "--prefix", prefix,
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert out.decode().startswith(f"ready on {isolated_nats.url} (replicas 1)")
        assert sorted(await _stream_names(isolated_nats.url)) == sorted(
            [cfg.journal_stream, cfg.work_stream, cfg.inbox_stream]
            + [f"KV_{b}" for b in (cfg.invocations_bucket, cfg.workers_bucket,
                                   cfg.locks_bucket, cfg.state_bucket)]
        )  # fmt: skip
        # Registered now, it waits for its service's work consumer, which only a control
        # plane creates (once it has seen the registration).
        for _ in range(600):
            if "the work consumer run_early of service early does not exist yet" in caplog.text:
                break
            await asyncio.sleep(0.05)
        assert "a control plane creates it when it sees this worker's registration" in (caplog.text)
        assert not starting.done()

        async with start_engine([], nats_url=isolated_nats.url, prefix=prefix) as engine:
            await asyncio.wait_for(starting, 30)
            assert await engine.client.execute("early/hello", "ada", timeout=30) == "hello ada"
    finally:
        if not starting.done():
            starting.cancel()
        await worker.stop()
