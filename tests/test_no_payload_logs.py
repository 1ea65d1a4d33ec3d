"""The engine never logs a payload: a run whose input, step result, state, awakeable value
and output all carry a marker leaves no trace of it in the control plane's or the worker's
log, even at DEBUG."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from durable import Client, InvocationStatus
from durable.contract import awakeable_id
from durable_server.natsd import EmbeddedNats
from tests.procs import ProcGroup, free_port, wait_healthy
from tests.secret_handlers import MARK

pytestmark = pytest.mark.slow


async def test_no_payload_reaches_a_log(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    group = ProcGroup(
        tmp_path / "logs",
        nats_server.url,
        f"s{uuid.uuid4().hex[:8]}",
        ack_wait=5.0,
        ledger=tmp_path / "ledger",
        module="tests.secret_handlers",
    )
    port = free_port()
    target = f"127.0.0.1:{port}"
    try:
        server = group.server(port)
        server.args += ["--log-level", "DEBUG"]
        server.start()
        await wait_healthy(target, proc=server)
        worker = group.worker(extra=["--log-level", "DEBUG"]).start()
        async with Client(target) as client:
            for _ in range(200):
                if any(h.name == "vault/keep" for h in await client.handlers()):
                    break
                await asyncio.sleep(0.05)
            handle = await client.invoke("vault/keep", f"{MARK}-in", key="k", wait=False)
            for _ in range(200):
                if (await client.get(handle.id)).status == InvocationStatus.SUSPENDED:
                    break
                await asyncio.sleep(0.05)
            await client.resolve_awakeable(awakeable_id(handle.id, 2), f"{MARK}-awk")
            output = await handle.result(timeout=30)
            assert output == f"{MARK}-in-{MARK}-awk-out"
            assert MARK in str(await client.get_state("vault", "k"))
            view = await client.get(handle.id)
            assert any(MARK in str(e.output) for e in view.journal)
        logs = server.all_logs() + worker.all_logs()
        assert "DEBUG" in logs  # the logs were written at DEBUG
        assert MARK not in logs
    finally:
        group.close()
