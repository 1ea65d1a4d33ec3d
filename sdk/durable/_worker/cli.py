"""``durable-worker``: run a worker hosting handler modules, from the sdk alone.

The engine's CLI (``durable worker``, ``durable dev``, ``durable server --module``) runs the
same worker with the same flags, through ``durable.contract``; this module is where those
flags, the module loader and the process's run loop live, so a deployment that installs only
``durable-nats[worker]`` runs workers with the same command line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from durable import _metrics as metrics
from durable import _tracing as tracing
from durable._handlers import Service
from durable._logs import configure as configure_logs
from durable._store.config import EngineConfig
from durable._worker.rpc import parse_endpoints
from durable._worker.runtime import Servicer, Worker


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


def engine_config(args: argparse.Namespace, nats_url: str | None = None) -> EngineConfig:
    return EngineConfig(
        nats_url=nats_url or args.nats,
        prefix=args.prefix,
        replicas=args.replicas,
        ack_wait=args.ack_wait,
        max_payload_bytes=args.max_payload_bytes,
        max_state_bytes=args.max_state_bytes,
        retention=args.retention,
        heartbeat_interval=args.heartbeat_interval,
        nats_creds=getattr(args, "nats_creds", "") or "",
        nats_ca=getattr(args, "nats_ca", "") or "",
        nats_cert=getattr(args, "nats_cert", "") or "",
        nats_key=getattr(args, "nats_key", "") or "",
        # Control-plane settings: a worker has no such flags.
        max_waiters=getattr(args, "max_waiters", EngineConfig.max_waiters),
        max_wait=getattr(args, "max_wait", EngineConfig.max_wait),
    )


def add_nats_auth_flags(p: argparse.ArgumentParser) -> None:
    """How to authenticate to NATS and verify it, beyond what the URL carries (each also
    from the environment: DURABLE_NATS_CREDS, DURABLE_NATS_CA, DURABLE_NATS_CERT,
    DURABLE_NATS_KEY)."""
    env = os.environ.get
    p.add_argument(
        "--nats-creds",
        default=env("DURABLE_NATS_CREDS", ""),
        metavar="FILE",
        help="NATS credentials file (a user JWT and its nkey seed, as nsc makes them)",
    )
    p.add_argument(
        "--nats-ca",
        default=env("DURABLE_NATS_CA", ""),
        metavar="PEM",
        help="CA of the NATS servers",
    )
    p.add_argument(
        "--nats-cert",
        default=env("DURABLE_NATS_CERT", ""),
        metavar="PEM",
        help="client certificate for NATS servers that verify clients",
    )
    p.add_argument(
        "--nats-key",
        default=env("DURABLE_NATS_KEY", ""),
        metavar="PEM",
        help="the NATS client certificate's private key",
    )


def add_engine_flags(p: argparse.ArgumentParser, *, with_nats: bool = True) -> None:
    if with_nats:
        p.add_argument(
            "--nats",
            default=os.environ.get("DURABLE_NATS", "nats://127.0.0.1:4222"),
            help="NATS URL, or a comma-separated list for a cluster; may carry user:password@ "
            "or token@ (env DURABLE_NATS, which keeps a password out of ps)",
        )
        add_nats_auth_flags(p)
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
        "--heartbeat-interval",
        type=float,
        default=EngineConfig.heartbeat_interval,
        help="seconds between a worker's heartbeats; the control plane counts a worker "
        "silent for three of them (plus a second) as gone",
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
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=os.environ.get("DURABLE_LOG_FORMAT", "text"),
        help="text for people, or one JSON object per line naming the invocation, handler, "
        "attempt and step a line concerns (env DURABLE_LOG_FORMAT)",
    )


def add_telemetry_flags(p: argparse.ArgumentParser, *, metrics_default: str = "") -> None:
    """``--metrics-listen``; tracing is configured by the standard OTEL_* variables."""
    p.add_argument(
        "--metrics-listen",
        default=os.environ.get("DURABLE_METRICS_LISTEN", metrics_default),
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (env "
        "DURABLE_METRICS_LISTEN; empty: off). Traces: set OTEL_EXPORTER_OTLP_ENDPOINT or "
        "OTEL_TRACES_EXPORTER (needs the otel extra)",
    )


class ShowDefaults(argparse.HelpFormatter):
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


def add_worker_flags(p: argparse.ArgumentParser) -> None:
    """The flags of a worker process: its modules, slots, id and the engine's."""
    p.add_argument("--module", action="append", required=True, help="module with handlers")
    p.add_argument("--slots", type=int, default=64, help="concurrent invocations")
    p.add_argument("--worker-id", default=None, help="stable id (default: random)")
    p.add_argument(
        "--code-version",
        default=None,
        help="the version of the handler code this worker runs, shown per attempt and kept "
        "by pinned services (default: a digest of the handler modules' source files)",
    )
    add_engine_flags(p)
    add_telemetry_flags(p)


def run(main: Coroutine[Any, Any, None], args: argparse.Namespace) -> int:
    configure_logs(args.log_level, getattr(args, "log_format", "text"))
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


async def until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def run_worker(args: argparse.Namespace) -> None:
    tracing.configure_from_env("durable-worker")
    services, servicers = load_modules(args.module)
    async with (
        Worker(
            engine_config(args),
            services,
            slots=args.slots,
            worker_id=args.worker_id,
            servicers=servicers,
            grpc_endpoints=grpc_endpoints(args),
            version=args.code_version,
        ) as w,
        metrics.serving(args.metrics_listen) as endpoint,
    ):
        print(f"durable worker {w.worker_id} ({w.version}): {handler_names(w)}", flush=True)
        if endpoint is not None:
            print(f"metrics on http://{endpoint.address}/metrics", flush=True)
        await until_signalled()


def grpc_endpoints(args: argparse.Namespace) -> dict[str, str]:
    try:
        return parse_endpoints(args.grpc_endpoint or [])
    except ValueError as err:
        raise SystemExit(f"error: --grpc-endpoint {err}") from None


def handler_names(worker: Worker) -> str:
    return ", ".join(h.full_name for h in worker.registry)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``durable-worker``."""
    parser = argparse.ArgumentParser(
        prog="durable-worker",
        description="Run a worker that hosts the handlers of the given modules.",
        formatter_class=ShowDefaults,
    )
    add_worker_flags(parser)
    args = parser.parse_args(argv)
    return run(run_worker(args), args)


if __name__ == "__main__":
    sys.exit(main())
