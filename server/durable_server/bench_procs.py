"""Processes of the benchmark: the engine started as `durable` subprocesses, with logs.

Split from :mod:`durable_server.bench` to keep each module to one concern.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2

from durable import Client
from durable_server.bench_handlers import HANDLER

CONTROL_SERVICE = "durable.v1.DurableControl"
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_START_TIMEOUT = 60.0  # seconds for a process to come up / the handler to register
_STOP_TIMEOUT = 10.0  # seconds for a process to exit on SIGTERM before SIGKILL


class BenchError(RuntimeError):
    """The benchmark could not run (a process died, a workflow failed or timed out)."""


def log_progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def repo_root() -> Path:
    """The checkout this module lives in (``<root>/server/durable_server/bench.py``)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else Path.cwd()


def _child_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(root), str(root / "server"), str(root / "sdk")]
    paths += [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in paths]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class Proc:
    """One engine process (``durable server`` / ``durable worker``) with its log file."""

    _live: set[Proc] = set()

    def __init__(
        self,
        name: str,
        args: list[str],
        log_path: Path,
        root: Path,
        *,
        module: str = "durable_server.cli",
    ) -> None:
        """``module``: what ``python -m`` runs with ``args`` (the durable CLI, or
        ``durable_server.bench_tracing``, the same CLI with tracing on)."""
        self.name = name
        self.log_path = log_path
        self.log_progress: IO[bytes] = log_path.open("wb")
        cmd = [sys.executable, "-m", module, *args]
        try:
            self.popen = subprocess.Popen(
                cmd,
                cwd=root,
                env=_child_env(root),
                stdin=subprocess.DEVNULL,
                stdout=self.log_progress,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # we stop it ourselves, in order, on Ctrl-C too
            )
        except BaseException:
            self.log_progress.close()
            raise
        Proc._live.add(self)

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive:
            raise BenchError(
                f"{self.name} exited with code {self.popen.returncode}\n"
                f"--- {self.name} log tail ---\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """SIGTERM (the engine shuts down gracefully), SIGKILL if it does not exit in time."""
        try:
            if self.popen.poll() is None:
                self.popen.send_signal(signal.SIGTERM)
                try:
                    self.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait()
        finally:
            self.log_progress.close()
            Proc._live.discard(self)

    @classmethod
    def kill_all(cls) -> None:
        """Last resort at interpreter exit: never leave an engine process behind."""
        for proc in list(cls._live):
            with contextlib.suppress(Exception):
                if proc.popen.poll() is None:
                    proc.popen.kill()
                    proc.popen.wait(5)
            cls._live.discard(proc)


atexit.register(Proc.kill_all)


async def wait_healthy(target: str, server: Proc, limit_s: float = _START_TIMEOUT) -> None:
    """Poll the standard gRPC health check until DurableControl reports SERVING."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    async with grpc.aio.insecure_channel(target) as channel:
        check = channel.unary_unary(
            _HEALTH_CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        request = health_pb2.HealthCheckRequest(service=CONTROL_SERVICE)
        while True:
            server.check_alive()
            with contextlib.suppress(grpc.aio.AioRpcError):
                response = await check(request, timeout=1.0)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            if loop.time() > deadline:
                raise BenchError(
                    f"control plane at {target} not healthy within {limit_s:.0f}s\n"
                    f"--- server log tail ---\n{server.log_tail()}"
                )
            await asyncio.sleep(0.1)


async def wait_registered(
    client: Client, procs: Sequence[Proc], limit_s: float = _START_TIMEOUT
) -> None:
    """Poll ListHandlers until the worker has registered the benchmark handler."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while True:
        for proc in procs:
            proc.check_alive()
        with contextlib.suppress(Exception):
            if any(h.name == HANDLER for h in await client.handlers()):
                return
        if loop.time() > deadline:
            tails = "\n".join(f"--- {p.name} log tail ---\n{p.log_tail()}" for p in procs)
            raise BenchError(f"{HANDLER} not registered within {limit_s:.0f}s\n{tails}")
        await asyncio.sleep(0.1)


async def start_server(
    engine: list[str],
    workdir: Path,
    root: Path,
    procs: list[Proc],
    *,
    module: str = "durable_server.cli",
) -> str:
    """Start ``durable server`` on a free port and wait until it is healthy; its target.

    The port is picked by binding port 0 and closing it, so another process may take it
    first: when the server dies during startup, try again on a new port (three attempts).
    """
    attempts = 3
    for attempt in range(1, attempts + 1):
        target = f"127.0.0.1:{free_port()}"
        server = Proc(
            "server",
            ["server", "--listen", target, *engine],
            workdir / f"server-{attempt}.log",
            root,
            module=module,
        )
        procs.append(server)
        try:
            await wait_healthy(target, server)
            return target
        except BenchError:
            if server.alive or attempt == attempts:
                raise
            log_progress(f"server on {target} exited during startup; retrying on another port")
            server.stop()
            procs.remove(server)
    raise AssertionError("unreachable")
