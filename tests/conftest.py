"""Shared pytest fixtures, chained nats.py-style: store dir -> nats-server -> client.

* `nats_server` is one session-wide embedded server (sync_interval "always"); tests share it,
  so give streams/buckets unique names (see `unique`).
* `isolated_nats` is a private server on the test's own `store_dir`, for tests that kill or
  restart the server (crash tests) and must not disturb the others.
"""

from __future__ import annotations

import contextlib
import os
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from hypothesis import settings
from nats.aio.client import Client as NATS

from durable import Service
from durable.contract import Store, open_store
from durable.testing import LocalEngine, start_engine
from durable_server.natsd import EmbeddedNats
from tests.nats_cluster import Cluster, running_cluster


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """A fresh, empty directory for one test's nats-server store."""
    d = tmp_path / "store"
    d.mkdir()
    return d


@pytest.fixture(scope="session")
def nats_store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The store directory of the session-wide nats-server."""
    return tmp_path_factory.mktemp("nats-session")


@pytest.fixture(scope="session")
def nats_server(nats_store_dir: Path) -> Iterator[EmbeddedNats]:
    """One embedded nats-server (JetStream, fsync always) shared by the whole session."""
    with EmbeddedNats(nats_store_dir, sync_interval="always", server_name="test-session") as srv:
        yield srv


@pytest.fixture
def isolated_nats(store_dir: Path) -> Iterator[EmbeddedNats]:
    """A private embedded nats-server on this test's store_dir; free to kill() and restart()."""
    with EmbeddedNats(store_dir, sync_interval="always", server_name="test-isolated") as srv:
        yield srv


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[NATS]:
    """A nats-py client connected to the session server, closed after the test."""
    client = await nats.connect(nats_server.url, name="pytest", max_reconnect_attempts=-1)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def crash_rng(request: pytest.FixtureRequest) -> Iterator[random.Random]:
    """The random source of a crash test (which victim, when, what load), seeded from
    ``CRASH_SEED`` or afresh. The seed is printed, and named again when the test fails, so
    ``CRASH_SEED=<n> .venv/bin/pytest -q <test>`` replays the same choices."""
    seed = int(os.environ.get("CRASH_SEED") or int.from_bytes(os.urandom(4)) % 10**6)
    print(f"\n[crash] CRASH_SEED={seed} ({request.node.nodeid})")
    yield random.Random(seed)
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"[crash] replay: CRASH_SEED={seed} .venv/bin/pytest -q '{request.node.nodeid}'")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item, so fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def unique() -> str:
    """A short random token for stream/bucket/subject names on the shared server."""
    return uuid.uuid4().hex[:10]


# Property-based tests: `ci` (the default, bounded, for `make test`) and `fuzz` (`make fuzz`:
# FUZZ_EXAMPLES per property). No deadline: this machine is shared, and a slow example is not
# a failure. The example database stays out of the repository (.gitignore).
settings.register_profile("ci", max_examples=40, deadline=None)
settings.register_profile(
    "fuzz", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "2000")), deadline=None
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# --- engine fixtures below are added by the engine team ---


@pytest.fixture
async def engine_store() -> AsyncIterator[Callable[[LocalEngine], Awaitable[Store]]]:
    """Opens the store of a running engine as each of its processes does
    (``durable.contract.open_store``, on a NATS connection of its own): how a test sets up or
    inspects stored state without reaching into the control plane's objects."""
    conns: list[NATS] = []

    async def open_for(engine: LocalEngine) -> Store:
        nc = await nats.connect(engine.nats_url, name="pytest-store")
        conns.append(nc)
        return await open_store(nc, engine.config)

    yield open_for
    for nc in conns:
        await nc.close()


@pytest.fixture
async def engine_factory(
    nats_server: EmbeddedNats,
) -> AsyncIterator[Callable[..., Awaitable[LocalEngine]]]:
    """Start engines (control plane + worker, in this event loop) on the session nats-server,
    each under its own prefix so tests never see each other's invocations."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(services: list[Service], **kwargs: Any) -> LocalEngine:
            return await stack.enter_async_context(
                start_engine(services, nats_url=nats_server.url, **kwargs)
            )

        yield start


@pytest.fixture
async def nats_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """A fresh three-node nats-server cluster (JetStream, R3-capable) for one test."""
    async with running_cluster(tmp_path) as cl:
        yield cl
