"""``--log-format json``: every log line of an engine process is one JSON object, and the
lines about an invocation name it, its handler, the attempt and the step."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from durable import Client
from durable_server.natsd import EmbeddedNats
from tests.procs import ProcGroup, free_port, wait_healthy

pytestmark = pytest.mark.slow


async def test_json_log_lines_name_their_invocation(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    group = ProcGroup(
        tmp_path / "logs",
        nats_server.url,
        f"l{uuid.uuid4().hex[:8]}",
        ack_wait=5.0,
        ledger=tmp_path / "ledger",
        module="tests.log_handlers",
    )
    port = free_port()
    try:
        server = group.server(port)
        server.args += ["--log-format", "json"]
        server.start()
        await wait_healthy(f"127.0.0.1:{port}", proc=server)
        worker = group.worker(extra=["--log-format", "json", "--log-level", "DEBUG"]).start()
        async with Client(f"127.0.0.1:{port}") as client:
            await worker.wait_for_log("serving")
            handle = await client.invoke("shaky/once", 41, wait=False)
            assert await handle.result(timeout=30) == 42
        lines = [
            json.loads(line)
            for proc in (server, worker)
            for line in proc.all_logs().splitlines()
            if line.startswith("{")
        ]
        assert {"time", "level", "logger", "message"} <= set(lines[0])
        failed = [x for x in lines if "attempt 1 failed" in x["message"]]
        assert failed, [x["message"] for x in lines]
        assert failed[0]["invocation_id"] == handle.id
        assert (failed[0]["handler"], failed[0]["attempt"], failed[0]["step"]) == (
            "shaky/once",
            1,
            0,
        )
        # Every other line of the processes' logs is JSON too (the "durable ..." line each
        # prints on stdout is not a log line; "---" heads each run's file).
        for proc in (server, worker):
            logged = [
                x
                for x in proc.all_logs().splitlines()
                if x and not x.startswith(("durable ", "---"))
            ]
            assert all(x.startswith("{") for x in logged), logged[:5]
    finally:
        group.close()
