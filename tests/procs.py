"""Real engine processes for crash tests: ``durable server`` and ``durable worker`` as
subprocesses with their own log files, plus a gRPC health wait, a free-port finder and a
reader for the ledger that ``tests/crash_handlers.py`` writes.

Every process is started in its own session, so a SIGKILL hits exactly that process and no
signal meant for pytest reaches it. ``ProcGroup.close`` kills whatever is still running (by
pid, only processes it started) and prints each log's tail, which pytest shows on failure.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.crash_handlers import LEDGER_ENV

REPO = Path(__file__).resolve().parent.parent
DURABLE = REPO / ".venv" / "bin" / "durable"
HANDLER_MODULE = "tests.crash_handlers"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EngineProc:
    """One ``durable server`` or ``durable worker`` process; restartable with the same args."""

    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.args = args
        self.log_dir = log_dir
        self.env = env
        #: The program run with ``args``: the repository venv's ``durable`` unless changed.
        self.command = [str(DURABLE)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.log_path = log_dir / f"{name}.0.log"
        #: Pids of every run, and those we SIGKILLed.
        self.pids: list[int] = []
        self.killed_pids: list[int] = []

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status of the current run (negative: killed by that signal); None while
        it runs or before it started."""
        return None if self.proc is None else self.proc.poll()

    def start(self) -> EngineProc:
        assert not self.running, f"{self.name} is already running"
        self.log_path = self.log_dir / f"{self.name}.{self.runs}.log"
        self.runs += 1
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [*self.command, *self.args],
                cwd=REPO,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pids.append(self.proc.pid)
        return self

    def kill(self) -> int:
        """SIGKILL (a crash: no cleanup, no nak); returns the pid killed."""
        assert self.proc is not None
        pid = self.proc.pid
        if self.proc.poll() is None:
            os.kill(pid, signal.SIGKILL)
            self.proc.wait(10)
            self.killed_pids.append(pid)
        return pid

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Resumes a stopped process."""
        if not self.running:
            return
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def all_logs(self) -> str:
        parts = []
        for i in range(self.runs):
            path = self.log_dir / f"{self.name}.{i}.log"
            with contextlib.suppress(FileNotFoundError):
                parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')}")
        return "\n".join(parts)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    async def wait_for_log(self, text: str, within: float = 20.0) -> None:
        """Until ``text`` appears in the current run's log; fails if the process exits."""
        deadline = time.monotonic() + within
        while text not in self.log():
            if not self.running:
                raise AssertionError(f"{self.name} exited before logging {text!r}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name} did not log {text!r} in {within}s:\n{self.tail()}"
                )
            await asyncio.sleep(0.05)


class ProcGroup:
    """Starts engine processes for one test against one NATS URL and prefix."""

    def __init__(
        self,
        log_dir: Path,
        nats_url: str,
        prefix: str,
        *,
        ack_wait: float,
        ledger: Path,
        module: str = HANDLER_MODULE,
        replicas: int = 1,
        heartbeat_interval: float | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.nats_url = nats_url
        self.prefix = prefix
        self.ack_wait = ack_wait
        self.ledger = ledger
        self.module = module
        self.replicas = replicas
        self.heartbeat_interval = heartbeat_interval
        self.procs: list[EngineProc] = []
        log_dir.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
            ),
            "PYTHONUNBUFFERED": "1",
            LEDGER_ENV: str(ledger),
        }

    def _common(self) -> list[str]:
        beat = self.heartbeat_interval
        return [
            *(["--heartbeat-interval", str(beat)] if beat else []),
            "--nats",
            self.nats_url,
            "--prefix",
            self.prefix,
            "--ack-wait",
            str(self.ack_wait),
            "--replicas",
            str(self.replicas),
            "--log-level",
            "INFO",
        ]

    def server(self, port: int, name: str = "server") -> EngineProc:
        args = ["server", "--listen", f"127.0.0.1:{port}", *self._common()]
        proc = EngineProc(name, args, self.log_dir, self.env)
        self.procs.append(proc)
        return proc

    def worker(
        self,
        name: str = "worker",
        *,
        slots: int = 64,
        worker_id: str | None = None,
        modules: list[str] | None = None,
        extra: list[str] | None = None,
    ) -> EngineProc:
        hosted = [arg for m in modules or [self.module] for arg in ("--module", m)]
        args = ["worker", *hosted, "--slots", str(slots), *self._common(), *(extra or [])]
        if worker_id:
            args += ["--worker-id", worker_id]
        proc = EngineProc(name, args, self.log_dir, self.env)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for p in self.procs:
            p.stop(timeout=5)
        for p in self.procs:
            print(f"===== {p.name}: {p.runs} run(s), killed {p.killed_pids} =====")
            print("\n".join(p.all_logs().splitlines()[-80:]))


async def wait_healthy(target: str, within: float = 20.0, proc: EngineProc | None = None) -> None:
    """Until the gRPC health service at ``target`` answers SERVING."""
    deadline = time.monotonic() + within
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if proc is not None and not proc.running:
                raise AssertionError(f"{proc.name} exited while starting:\n{proc.tail()}")
            if time.monotonic() > deadline:
                detail = f":\n{proc.tail()}" if proc is not None else ""
                raise AssertionError(f"{target} not healthy within {within}s{detail}")
            await asyncio.sleep(0.05)


# Options for clients that must come back quickly after the server restarts: grpc's default
# reconnect backoff grows to minutes.
FAST_RECONNECT = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
)


@dataclass(frozen=True)
class Execution:
    """One execution of one step body, as the ledger recorded it."""

    invocation_id: str
    step: int
    attempt: int
    pid: int
    prev: int
    value: int
    line: int


def read_ledger(path: Path) -> dict[tuple[str, int], list[Execution]]:
    """Executions by (invocation, step), in the order they were written."""
    out: dict[tuple[str, int], list[Execution]] = collections.defaultdict(list)
    if not path.exists():
        return out
    for n, raw in enumerate(path.read_text().splitlines()):
        fields = raw.split()
        assert len(fields) == 6, f"torn ledger line {n}: {raw!r}"
        inv, step, attempt, pid, prev, value = fields
        ex = Execution(inv, int(step), int(attempt), int(pid), int(prev), int(value), n)
        out[(inv, ex.step)].append(ex)
    return out
