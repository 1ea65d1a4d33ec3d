"""Deploying new code while invocations are in flight, with real worker processes: v1
starts invocations that sleep, v2 is deployed and v1 stopped while they sleep.

- ``pinned`` (pin_version=True) invocations stay on v1: they wait, saying so, while no v1
  worker runs, and finish when one returns; a new one goes to v2, the newest.
- ``loose`` ones continue on v2: ``steady`` (unchanged code) finishes there, ``drifting``
  (a renamed step) stops as non-deterministic, which ``durable replay`` reported before v2
  was deployed.
- GetWorkflow shows the version that started each and the version of each attempt/step.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest

from durable import Client, InvocationStatus
from durable_server.natsd import EmbeddedNats
from tests.procs import DURABLE, REPO, ProcGroup, free_port, wait_healthy

pytestmark = pytest.mark.slow


async def _replay(group: ProcGroup, target: str, module: str, version: str) -> tuple[int, dict]:
    proc = await asyncio.create_subprocess_exec(
        str(DURABLE), "replay", "--module", module, "--code-version", version,
        "--target", target, "--nats", group.nats_url, "--prefix", group.prefix, "--json",
        cwd=REPO, env=group.env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    assert out, err.decode()
    return proc.returncode, json.loads(out)


async def _until(check, what: str, within: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while True:
        got = await check()
        if got:
            return got
        assert time.monotonic() < deadline, f"not within {within}s: {what}"
        await asyncio.sleep(0.1)


async def test_pinned_invocations_stay_on_their_version_and_replay_finds_drift(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    group = ProcGroup(
        tmp_path / "logs",
        nats_server.url,
        f"v{uuid.uuid4().hex[:8]}",
        ack_wait=5.0,
        ledger=tmp_path / "ledger",
        heartbeat_interval=0.5,
    )
    port = free_port()
    target = f"127.0.0.1:{port}"

    def worker(version: str) -> None:
        group.worker(
            f"worker-{version}-{len(group.procs)}",
            modules=[f"tests.versions.{version}"],
            extra=["--code-version", version],
        ).start()

    try:
        server = group.server(port).start()
        await wait_healthy(target, proc=server)
        async with Client(target) as client:
            worker("v1")
            v1 = group.procs[-1]

            async def registered(version: str) -> bool:
                hs = {h.name: h for h in await client.handlers()}
                return "pinned/flow" in hs and version in hs["pinned/flow"].versions

            await _until(lambda: registered("v1"), "v1 registered")
            pinned = [(await client.invoke("pinned/flow", i, wait=False)).id for i in range(3)]
            steady = [(await client.invoke("loose/steady", i, wait=False)).id for i in range(2)]
            drifting = (await client.invoke("loose/drifting", 7, wait=False)).id
            everyone = [*pinned, *steady, drifting]

            async def all_asleep() -> bool:
                views = await asyncio.gather(*(client.get(i) for i in everyone))
                return all(v.status == InvocationStatus.SUSPENDED for v in views)

            await _until(all_asleep, "every invocation asleep on v1")
            for inv in everyone:
                view = await client.get(inv)
                assert (view.version, view.attempt_version) == ("v1", "v1")
                assert view.pinned == (inv in pinned)

            # Before deploying v2: the replay check names the one v2 would break, and only it.
            code, report = await _replay(group, target, "tests.versions.v2", "v2")
            assert code == 1, report
            assert [f["invocation_id"] for f in report["failing"]] == [drifting], report
            assert report["failing"][0]["verdict"] == "non-deterministic"
            assert "first-renamed" in report["failing"][0]["detail"]
            assert report["checked"] == len(everyone)
            code, report = await _replay(group, target, "tests.versions.v1", "v1")
            assert (code, report["failing"]) == (0, []), report

            # Deploy v2, stop v1, while everything sleeps.
            worker("v2")
            await _until(lambda: registered("v2"), "v2 registered")
            v1.stop()
            # New pinned invocations go to the newest version.
            fresh = await client.invoke("pinned/flow", 9, wait=False)
            assert await fresh.result(timeout=60) == "v2:9"
            assert (await client.get(fresh.id)).version == "v2"

            # Unpinned: continued on v2.
            assert await asyncio.gather(*(client.result(i, timeout=60) for i in steady)) == [
                "v2:0",
                "v2:1",
            ]
            view = await client.get(steady[0])
            assert (view.version, view.attempt_version) == ("v1", "v2")
            by_step = {e.name: e.version for e in view.journal if e.name in ("first", "second")}
            assert by_step == {"first": "v1", "second": "v2"}

            # The drifted one stopped, saying why.
            async def drift_paused():  # type: ignore[no-untyped-def]
                v = await client.get(drifting)
                return v if v.status == InvocationStatus.PAUSED else None

            view = await _until(drift_paused, "the drifted invocation paused")
            assert "non-deterministic" in view.status_reason, view.status_reason

            # Pinned: they wait for a v1 worker, and say so.
            async def waiting_for_v1() -> bool:
                views = await asyncio.gather(*(client.get(i) for i in pinned))
                return all(
                    v.status == InvocationStatus.PENDING and v.no_worker_since is not None
                    for v in views
                )

            await _until(waiting_for_v1, "pinned invocations waiting for v1")
            for inv in pinned:
                view = await client.get(inv)
                assert (view.version, view.pinned) == ("v1", True)

            # A v1 worker returns: they finish there.
            worker("v1")
            results = await asyncio.gather(*(client.result(i, timeout=60) for i in pinned))
            assert results == ["v1:0", "v1:1", "v1:2"]
            for inv in pinned:
                view = await client.get(inv)
                assert {e.version for e in view.journal} == {"v1"}
    finally:
        group.close()
