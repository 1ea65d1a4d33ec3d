"""The engine's processes as CLI commands: ``durable dev``, ``durable server``, ``durable worker``.

``dev`` runs everything in one process for a laptop: an embedded nats-server with JetStream
under ``--data``, the control plane and a worker hosting the given modules.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from durable._handlers import Service
from durable._store.config import EngineConfig, redact_url
from durable._store.patience import at_start_up
from durable._worker.rpc import parse_endpoints
from durable._worker.runtime import Servicer, Worker, connect_nats
from durable_server.banner import banner
from durable_server.control.server import ControlServer
from durable_server.natsd import EmbeddedNats
from durable_server.preflight import check_port_free, lock_data_dir, release
from durable_server.provision import provision

log = logging.getLogger("durable")

DEFAULT_MODULES = [
    "examples.hello",
    "examples.delayed_execution",
    "examples.approval_workflow",
    "examples.payment_webhook",
    "examples.ticket_cart",
    "examples.signup",
    "examples.user_notifications",
    "examples.travel_booking",
    "examples.grpc_services",
    "examples.multi_service",
]


def load_services(modules: list[str]) -> list[Service]:
    """Import each module and collect the Service objects defined at its top level."""
    return load_modules(modules)[0]


def load_modules(modules: list[str]) -> tuple[list[Service], list[Servicer]]:
    """Import each module; collect the Services (and VirtualObjects, Workflows) defined at
    its top level, and the gRPC servicers it lists in ``GRPC_SERVICERS`` as
    ``(add_<Service>Servicer_to_server, servicer)`` pairs, which the worker serves on NATS."""
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    services: list[Service] = []
    servicers: list[Servicer] = []
    for name in modules:
        module = importlib.import_module(name)
        found = [v for v in vars(module).values() if isinstance(v, Service)]
        listed = list(getattr(module, "GRPC_SERVICERS", ()))
        if not found and not listed:
            raise SystemExit(f"error: module {name} defines no durable Service or GRPC_SERVICERS")
        services.extend(found)
        servicers.extend(listed)
    return services, servicers


def _config(args: argparse.Namespace, nats_url: str | None = None) -> EngineConfig:
    return EngineConfig(
        nats_url=nats_url or args.nats,
        prefix=args.prefix,
        replicas=args.replicas,
        ack_wait=args.ack_wait,
        max_payload_bytes=args.max_payload_bytes,
        max_state_bytes=args.max_state_bytes,
        retention=args.retention,
        # Control-plane settings: `durable worker` has no such flags.
        max_waiters=getattr(args, "max_waiters", EngineConfig.max_waiters),
        max_wait=getattr(args, "max_wait", EngineConfig.max_wait),
    )


def _control_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-waiters",
        type=int,
        default=EngineConfig.max_waiters,
        help="most requests held open at once while waiting (Invoke with wait, AwaitResult, "
        "WatchWorkflow); more get RESOURCE_EXHAUSTED",
    )
    p.add_argument(
        "--max-wait",
        type=float,
        default=EngineConfig.max_wait,
        help="seconds one Invoke with wait or AwaitResult holds at most before answering "
        "'not done yet'",
    )


def _engine_flags(p: argparse.ArgumentParser, *, with_nats: bool = True) -> None:
    if with_nats:
        p.add_argument(
            "--nats",
            default="nats://127.0.0.1:4222",
            help="NATS URL, or a comma-separated list for a cluster",
        )
    p.add_argument("--prefix", default="durable", help="namespace of streams and buckets")
    p.add_argument("--replicas", type=int, default=1, help="JetStream replicas; 3 on a cluster")
    p.add_argument(
        "--ack-wait", type=float, default=30.0, help="seconds before a silent worker's work moves"
    )
    p.add_argument(
        "--max-payload-bytes", type=int, default=1024 * 1024, help="largest input/output"
    )
    p.add_argument(
        "--max-state-bytes",
        type=int,
        default=4 * 1024 * 1024,
        help="largest state of one object key or workflow id",
    )
    p.add_argument(
        "--retention",
        type=float,
        default=7 * 24 * 3600.0,
        help="seconds an ended invocation is kept before it is purged; 0 keeps it forever",
    )
    p.add_argument(
        "--grpc-endpoint",
        action="append",
        metavar="SERVICE=ADDRESS",
        help="call this gRPC service at a plain gRPC address instead of over NATS "
        "(repeatable; e.g. examples.v1.HelloService=localhost:9000)",
    )
    p.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (Python logging)"
    )


class _ShowDefaults(argparse.HelpFormatter):
    """``--help`` names every flag's default, except where there is none to name (None,
    False), so nobody has to read the source to learn what an omitted flag means."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or default in (None, False, argparse.SUPPRESS)
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


def add_engine_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Register dev, server and worker on the ``durable`` CLI."""
    dev = sub.add_parser(
        "dev",
        help="embedded nats-server + control plane + worker, one process",
        description="Run an embedded nats-server, the control plane and a worker in one "
        "process: what `make run` starts.",
        formatter_class=_ShowDefaults,
    )
    dev.add_argument("--data", default="./data", help="JetStream store directory")
    dev.add_argument("--listen", default="127.0.0.1:50051", help="gRPC address")
    dev.add_argument("--nats-port", type=int, default=4222, help="embedded nats-server port")
    dev.add_argument(
        "--sync", default="always", help="nats-server sync_interval: 'always' or e.g. '2m'"
    )
    dev.add_argument(
        "--module",
        action="append",
        help="module with handlers (repeatable; default: every example: "
        + ", ".join(DEFAULT_MODULES)
        + ")",
    )
    dev.add_argument("--slots", type=int, default=64, help="concurrent invocations")
    _engine_flags(dev, with_nats=False)
    _control_flags(dev)
    dev.set_defaults(func=lambda a: _run(_dev(a), a), parser=dev)

    server = sub.add_parser(
        "server",
        help="run the control plane (gRPC DurableControl)",
        description="Run the control plane (gRPC DurableControl) against a NATS server.",
        formatter_class=_ShowDefaults,
    )
    server.add_argument("--listen", default="127.0.0.1:50051", help="gRPC address")
    server.add_argument(
        "--module",
        action="append",
        help="also host a worker for this handler module in the same process (repeatable)",
    )
    server.add_argument("--slots", type=int, default=64, help="concurrent invocations")
    _engine_flags(server)
    _control_flags(server)
    server.set_defaults(func=lambda a: _run(_server(a), a), parser=server)

    worker = sub.add_parser(
        "worker",
        help="run a worker hosting handler modules",
        description="Run a worker that hosts the handlers of the given modules.",
        formatter_class=_ShowDefaults,
    )
    worker.add_argument("--module", action="append", required=True, help="module with handlers")
    worker.add_argument("--slots", type=int, default=64, help="concurrent invocations")
    worker.add_argument("--worker-id", default=None, help="stable id (default: random)")
    _engine_flags(worker)
    worker.set_defaults(func=lambda a: _run(_worker(a), a), parser=worker)

    setup = sub.add_parser(
        "setup",
        help="create the engine's streams, work consumer and buckets, then exit",
        description="Create whatever of the engine's streams, work consumer and KV buckets is "
        "missing, and exit. The control plane does this at start too; workers never do, so "
        "they can run with publish/subscribe rights only (see durable._store).",
        formatter_class=_ShowDefaults,
    )
    _engine_flags(setup)
    setup.set_defaults(func=lambda a: _run(_setup(a), a), parser=setup)


def _run(main: Coroutine[Any, Any, None], args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if os.environ.get("DURABLE_EVENT_LOOP", "uvloop") == "uvloop":
            # libuv's loop costs noticeably less CPU per message than asyncio's own; the
            # engine is I/O-bound Python, so that is throughput. DURABLE_EVENT_LOOP=asyncio
            # opts out.
            import uvloop

            uvloop.run(main)
        else:
            asyncio.run(main)
    except KeyboardInterrupt:
        pass
    except ConnectionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _server(args: argparse.Namespace) -> None:
    cfg = _config(args)
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(ControlServer(cfg, args.listen))
        print(f"durable control plane on {server.target}", flush=True)
        if args.module:
            services, servicers = load_modules(args.module)
            worker = Worker(
                cfg,
                services,
                slots=args.slots,
                servicers=servicers,
                grpc_endpoints=_endpoints(args),
            )
            await stack.enter_async_context(worker)
            print(f"durable worker {worker.worker_id}: {_handler_names(worker)}", flush=True)
        await _until_signalled()


async def _setup(args: argparse.Namespace) -> None:
    cfg = _config(args)
    nc = await connect_nats(cfg, "durable-setup")
    try:
        await at_start_up(nc, lambda: provision(nc, cfg), "creating the engine's streams")
    finally:
        await nc.drain()
    streams = ", ".join((cfg.journal_stream, cfg.work_stream, cfg.inbox_stream))
    buckets = ", ".join(
        (cfg.invocations_bucket, cfg.workers_bucket, cfg.locks_bucket, cfg.state_bucket)
    )
    print(
        f"ready on {redact_url(cfg.nats_url)} (replicas {cfg.replicas}): streams {streams}; "
        f"consumer {cfg.work_consumer}; buckets {buckets}",
        flush=True,
    )


async def _worker(args: argparse.Namespace) -> None:
    services, servicers = load_modules(args.module)
    async with Worker(
        _config(args),
        services,
        slots=args.slots,
        worker_id=args.worker_id,
        servicers=servicers,
        grpc_endpoints=_endpoints(args),
    ) as w:
        print(f"durable worker {w.worker_id}: {_handler_names(w)}", flush=True)
        await _until_signalled()


async def _dev(args: argparse.Namespace) -> None:
    services, servicers = load_modules(args.module or DEFAULT_MODULES)
    data = _prepare_data_dir(args.data)
    # Before the store is touched or a server started: one store, one engine, one port each.
    lock = lock_data_dir(data)
    host, _, port = args.listen.rpartition(":")
    check_port_free(host or "127.0.0.1", int(port or 0), "gRPC", "--listen")
    check_port_free("127.0.0.1", args.nats_port, "NATS", "--nats-port")
    natsd = EmbeddedNats(data, port=args.nats_port, sync_interval=args.sync)
    try:
        await natsd.astart()
    except BaseException:
        release(lock)
        raise
    try:
        cfg = _config(args, natsd.url)
        async with (
            ControlServer(cfg, args.listen) as server,
            Worker(
                cfg,
                services,
                slots=args.slots,
                servicers=servicers,
                grpc_endpoints=_endpoints(args),
            ) as worker,
        ):
            print(
                banner(
                    server.target,
                    redact_url(natsd.url),
                    args.sync,
                    data,
                    worker.worker_id,
                    list(worker.registry),
                ),
                flush=True,
            )
            await _until_signalled()
    finally:
        await natsd.astop()
        release(lock)


def _endpoints(args: argparse.Namespace) -> dict[str, str]:
    try:
        return parse_endpoints(args.grpc_endpoint or [])
    except ValueError as err:
        raise SystemExit(f"error: --grpc-endpoint {err}") from None


def _handler_names(worker: Worker) -> str:
    return ", ".join(h.full_name for h in worker.registry)


def _prepare_data_dir(path: str) -> Path:
    data = Path(path).resolve()
    data.mkdir(parents=True, exist_ok=True)
    return data
