"""The engine's processes as CLI commands: ``durable dev``, ``durable server``, ``durable worker``,
``durable setup``. The worker's flags, module loader and run loop are the sdk's
(``durable._worker.cli``, also ``durable-worker``), reached through ``durable.contract``.

``dev`` runs everything in one process for a laptop: an embedded nats-server with JetStream
under ``--data``, the control plane and a worker hosting the given modules.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from durable.contract import (
    EngineConfig,
    ShowDefaults,
    Worker,
    add_engine_flags,
    add_telemetry_flags,
    add_worker_flags,
    at_start_up,
    connect_nats,
    engine_config,
    grpc_endpoints,
    handler_names,
    load_modules,
    metrics,
    redact_url,
    run,
    run_worker,
    tracing,
    until_signalled,
)
from durable_server.banner import banner
from durable_server.cli_security import (
    add_keys_command,
    add_nats_permissions_command,
    add_security_flags,
    security_options,
)
from durable_server.console import DEFAULT_CONSOLE, Console
from durable_server.control.server import ControlServer
from durable_server.nats_permissions import dev_nats_users
from durable_server.natsd import EmbeddedNats
from durable_server.preflight import check_port_free, lock_data_dir, release
from durable_server.provision import provision

log = logging.getLogger("durable")

#: Where `durable dev` serves Prometheus metrics (the port OpenTelemetry's Prometheus
#: exporter uses by convention).
DEV_METRICS = "127.0.0.1:9464"

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


def add_engine_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Register dev, server and worker on the ``durable`` CLI."""
    dev = sub.add_parser(
        "dev",
        help="embedded nats-server + control plane + worker, one process",
        description="Run an embedded nats-server, the control plane and a worker in one "
        "process: what `make run` starts.",
        formatter_class=ShowDefaults,
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
    add_engine_flags(dev, with_nats=False)
    _control_flags(dev)
    add_security_flags(dev)
    add_telemetry_flags(dev, metrics_default=DEV_METRICS)
    dev.add_argument(
        "--console-listen",
        default=DEFAULT_CONSOLE,
        metavar="HOST:PORT",
        help="serve the web console here (empty: none); it calls this control plane",
    )
    dev.add_argument(
        "--nats-auth",
        action="store_true",
        help="start the embedded nats-server with users: a control-plane user and a "
        "least-privilege worker user, with passwords made for this run",
    )
    dev.set_defaults(func=lambda a: run(_dev(a), a), parser=dev)

    server = sub.add_parser(
        "server",
        help="run the control plane (gRPC DurableControl)",
        description="Run the control plane (gRPC DurableControl) against a NATS server.",
        formatter_class=ShowDefaults,
    )
    server.add_argument("--listen", default="127.0.0.1:50051", help="gRPC address")
    server.add_argument(
        "--module",
        action="append",
        help="also host a worker for this handler module in the same process (repeatable)",
    )
    server.add_argument("--slots", type=int, default=64, help="concurrent invocations")
    add_engine_flags(server)
    _control_flags(server)
    add_security_flags(server)
    add_telemetry_flags(server)
    server.set_defaults(func=lambda a: run(_server(a), a), parser=server)

    worker = sub.add_parser(
        "worker",
        help="run a worker hosting handler modules",
        description="Run a worker that hosts the handlers of the given modules "
        "(the same as durable-worker, which needs only the sdk installed).",
        formatter_class=ShowDefaults,
    )
    add_worker_flags(worker)
    worker.set_defaults(func=lambda a: run(run_worker(a), a), parser=worker)

    setup = sub.add_parser(
        "setup",
        help="create the engine's streams, work consumer and buckets, then exit",
        description="Create whatever of the engine's streams, work consumer and KV buckets is "
        "missing, and exit. The control plane does this at start too; workers never do, so "
        "they can run with publish/subscribe rights only (see durable._store).",
        formatter_class=ShowDefaults,
    )
    add_engine_flags(setup)
    setup.set_defaults(func=lambda a: run(_setup(a), a), parser=setup)
    add_keys_command(sub)
    add_nats_permissions_command(sub)


async def _server(args: argparse.Namespace) -> None:
    tracing.configure_from_env("durable-control")
    cfg = engine_config(args)
    secure = security_options(args)
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(ControlServer(cfg, args.listen, **secure))
        print(f"durable control plane on {server.target}", flush=True)
        endpoint = await stack.enter_async_context(serving_metrics(args.metrics_listen, server))
        if endpoint is not None:
            print(f"metrics on http://{endpoint.address}/metrics", flush=True)
        if args.module:
            services, servicers = load_modules(args.module)
            worker = Worker(
                cfg,
                services,
                slots=args.slots,
                servicers=servicers,
                grpc_endpoints=grpc_endpoints(args),
            )
            await stack.enter_async_context(worker)
            print(f"durable worker {worker.worker_id}: {handler_names(worker)}", flush=True)
        await until_signalled()


async def _setup(args: argparse.Namespace) -> None:
    cfg = engine_config(args)
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
        f"buckets {buckets} (each service's work consumer is created when a worker "
        "hosting it registers with a control plane)",
        flush=True,
    )


async def _dev(args: argparse.Namespace) -> None:
    tracing.configure_from_env("durable-dev")
    services, servicers = load_modules(args.module or DEFAULT_MODULES)
    secure = security_options(args)
    data = _prepare_data_dir(args.data)
    # Before the store is touched or a server started: one store, one engine, one port each.
    lock = lock_data_dir(data)
    for value, what, flag in (
        (args.listen, "gRPC", "--listen"),
        (f"127.0.0.1:{args.nats_port}", "NATS", "--nats-port"),
        (args.metrics_listen, "metrics", "--metrics-listen (empty: off)"),
        (args.console_listen, "console", "--console-listen (empty: off)"),
    ):
        if value:
            host, _, port = value.rpartition(":")
            check_port_free(host or "127.0.0.1", int(port or 0), what, flag)
    users = dev_nats_users(args.prefix) if args.nats_auth else None
    natsd = EmbeddedNats(
        data,
        port=args.nats_port,
        sync_interval=args.sync,
        extra_config=users.config if users else "",
    )
    try:
        await natsd.astart()
    except BaseException:
        release(lock)
        raise
    try:
        cfg = engine_config(args, users.url(natsd.url, "control") if users else natsd.url)
        worker_cfg = engine_config(args, users.url(natsd.url, "worker") if users else natsd.url)
        if users:
            print(
                "embedded NATS requires users; a worker of your own connects with: "
                f"DURABLE_NATS={users.url(natsd.url, 'worker')} durable worker --module M",
                flush=True,
            )
        async with (
            ControlServer(cfg, args.listen, **secure) as server,
            Worker(
                worker_cfg,
                services,
                slots=args.slots,
                servicers=servicers,
                grpc_endpoints=grpc_endpoints(args),
            ) as worker,
            serving_metrics(args.metrics_listen, server) as endpoint,
            dev_console(args, server) as console,
        ):
            print(
                banner(
                    server.target,
                    redact_url(natsd.url),
                    args.sync,
                    data,
                    worker.worker_id,
                    list(worker.registry),
                    metrics=f"http://{endpoint.address}/metrics" if endpoint else "",
                    console=console.address if console else "",
                ),
                flush=True,
            )
            await until_signalled()
    finally:
        await natsd.astop()
        release(lock)


@contextlib.asynccontextmanager
async def serving_metrics(listen: str, server: ControlServer) -> AsyncIterator[Any]:
    """The metrics endpoint of a process hosting a control plane (and maybe a worker):
    the control plane's gauges are refreshed from its index at each scrape."""
    async with metrics.serving(listen) as endpoint:
        if endpoint is not None and server.gauges is not None:
            endpoint.before_scrape.append(server.gauges.refresh)
        yield endpoint


@contextlib.asynccontextmanager
async def dev_console(args: argparse.Namespace, server: ControlServer) -> AsyncIterator[Any]:
    """The web console of ``durable dev``, calling its control plane; none when
    ``--console-listen`` is empty or the control plane serves TLS (then run ``durable
    console --tls --ca ...``)."""
    if not args.console_listen or server.tls is not None:
        yield None
        return
    async with Console(server.target, args.console_listen) as console:
        yield console


def _prepare_data_dir(path: str) -> Path:
    data = Path(path).resolve()
    data.mkdir(parents=True, exist_ok=True)
    return data
