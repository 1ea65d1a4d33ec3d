"""``durable dev``, what ``make run`` runs: one process with an embedded nats-server, the control
plane and a worker hosting ``examples.hello``.

Started as a real subprocess on free ports and a temporary data directory, driven with the
real ``durable`` CLI (also a subprocess), stopped with SIGTERM as Ctrl-C / ``docker stop``
would, then started again on the same data directory: what was invoked before is still there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.procs import free_port

pytestmark = pytest.mark.slow  # real processes or long waits: not in make test-fast

REPO = Path(__file__).resolve().parent.parent
DURABLE = REPO / ".venv" / "bin" / "durable"
BANNER_TIMEOUT = 60.0  # start-up: nats-server, JetStream streams, control plane, worker
CLI_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0  # SIGTERM to exit; a clean stop takes well under this
BANNER_END = "Ctrl-C stops everything"

EXAMPLE_HANDLERS = [
    "cart/add_ticket",
    "cart/checkout",
    "cart/contents",
    "cart/expire_ticket",
    "concierge/welcome",
    "expenses/submit",
    "greeter/greet",
    "notifications/mark_read",
    "notifications/notify",
    "notifications/unread",
    "orders/checkout",
    "payments/charge",
    "scheduler/schedule",
    "signup/run",
    "signup/status",
    "signup/verify",
    "ticket/mark_sold",
    "ticket/release",
    "ticket/reserve",
    "ticket/status",
    "travel/book",
]


@dataclass
class Ran:
    argv: tuple[str, ...]
    code: int
    out: str
    err: str

    def field(self, label: str) -> str:
        for line in self.out.splitlines():
            if line.startswith(label + "  "):
                return line[len(label) :].strip()
        raise AssertionError(f"no {label!r} line in:\n{self.out}")


async def durable(target: str, *argv: str) -> Ran:
    """``durable --target TARGET ARGV...`` as a subprocess, bounded by CLI_TIMEOUT."""
    proc = await asyncio.create_subprocess_exec(
        str(DURABLE),
        "--target",
        target,
        *argv,
        cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT)
    except TimeoutError:
        raise AssertionError(f"durable {' '.join(argv)} did not finish in {CLI_TIMEOUT}s") from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Ran(argv, proc.returncode, out.decode(), err.decode())


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc), e.g. the dev process's nats-server."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found.extend(int(c) for c in (task / "children").read_text().split())
    return found


def _nats_children(pid: int) -> list[int]:
    out = []
    for child in _children(pid):
        with contextlib.suppress(OSError):
            if b"nats-server" in Path(f"/proc/{child}/cmdline").read_bytes():
                out.append(child)
    return out


def _alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class DevProc:
    """One run of ``durable dev``: stdout (the banner) read by a task, stderr (logs) to a file.

    ``close`` always leaves nothing behind: SIGTERM, then SIGKILL for the dev process and the
    nats-server it started (by pid; nats-server runs in its own session, so a SIGKILL of the
    dev process would orphan it)."""

    def __init__(self, data: Path, listen: str, nats_port: int, log_path: Path) -> None:
        self.argv = [
            str(DURABLE),
            "dev",
            "--data",
            str(data),
            "--listen",
            listen,
            "--nats-port",
            str(nats_port),
            # Not the fixed defaults: engines of other tests may hold those.
            "--metrics-listen",
            f"127.0.0.1:{free_port()}",
            "--console-listen",
            f"127.0.0.1:{free_port()}",
        ]
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.stdout: list[str] = []
        self.nats_pids: list[int] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> DevProc:
        with self.log_path.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.stdout.append(raw.decode(errors="replace").rstrip("\n"))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def tail(self, lines: int = 40) -> str:
        log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(
            ["--- stdout ---", *self.stdout, "--- stderr ---", *log.splitlines()][-lines:]
        )

    async def wait_banner(self) -> str:
        """The banner, once it is complete; fails if the process exits first."""
        assert self.proc is not None
        deadline = time.monotonic() + BANNER_TIMEOUT
        while not any(BANNER_END in line for line in self.stdout):
            if self.proc.returncode is not None:
                raise AssertionError(
                    f"durable dev exited with {self.proc.returncode} before its banner:\n"
                    f"{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no banner within {BANNER_TIMEOUT}s:\n{self.tail()}")
            await asyncio.sleep(0.05)
        self.nats_pids = _nats_children(self.pid)
        return "\n".join(self.stdout)

    async def terminate(self) -> int:
        """SIGTERM; the exit code (fails after STOP_TIMEOUT)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            raise AssertionError(
                f"durable dev did not exit within {STOP_TIMEOUT}s of SIGTERM:\n{self.tail()}"
            ) from None
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)
        return code

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        for pid in self.nats_pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


def _program_as_typed() -> str:
    """`durable` as the banner should show it from the repo: bare when PATH finds this
    venv's (as under `make`, which puts .venv/bin first), else the relative venv path."""
    on_path = shutil.which("durable")
    venv_durable = (REPO / ".venv/bin/durable").resolve()
    if on_path and Path(on_path).resolve() == venv_durable:
        return "durable"
    return ".venv/bin/durable"


async def _run_banner_commands(banner: str, program: str) -> None:
    """Run every `durable` command the banner shows, exactly as printed (from the
    repository, where `make run` prints it), with a real id for `<invocation id>`."""
    commands = [
        shlex.split(line.strip())
        for line in banner.splitlines()
        if line.startswith(f"  {program} ")  # the "Try it:" lines, indented by two
    ]
    assert len(commands) >= 4, banner
    last_id = ""
    for argv in commands:
        argv = [last_id if a == "<invocation-id>" else a for a in argv]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=REPO,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT)
        assert proc.returncode == 0, (argv, out.decode(), err.decode())
        for line in out.decode().splitlines():
            if line.startswith("invocation  "):
                last_id = line.split()[1]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def _jetstream_files(data: Path) -> list[Path]:
    return [p for p in (data / "jetstream").rglob("*") if p.is_file() and p.stat().st_size > 0]


async def test_dev_serves_the_examples_and_keeps_them_across_restarts(tmp_path: Path) -> None:
    data = tmp_path / "data"  # dev creates it
    grpc_port, nats_port = free_port(), free_port()
    target = f"127.0.0.1:{grpc_port}"
    runs: list[DevProc] = []

    async def start(n: int) -> tuple[DevProc, str]:
        dev = DevProc(data, target, nats_port, tmp_path / f"dev.{n}.log")
        runs.append(dev)
        await dev.start()
        return dev, await dev.wait_banner()

    try:
        dev, banner = await start(0)
        assert "durable dev is running" in banner
        assert re.search(rf"gRPC DurableControl\s+{re.escape(target)}\b", banner), banner
        assert f"nats://127.0.0.1:{nats_port}" in banner
        assert str(data.resolve()) in banner
        worker_line = next(line for line in banner.splitlines() if "serving" in line)
        assert "greeter/greet" in worker_line and "orders/checkout" in worker_line
        program = _program_as_typed()
        assert f"\n  {program} invoke greeter/greet --target {target} '\"World\"'\n" in banner
        await _run_banner_commands(banner, program)
        assert f"grpcurl -plaintext {target} list" in banner
        assert len(dev.nats_pids) == 1, f"expected one nats-server child: {dev.nats_pids}"

        ran = await durable(target, "handlers")
        assert (ran.code, ran.err) == (0, ""), ran
        names = [line.split()[0] for line in ran.out.splitlines()[2:]]
        assert names == EXAMPLE_HANDLERS, ran.out

        ran = await durable(target, "invoke", "greeter/greet", '"World"')
        assert (ran.code, ran.err) == (0, ""), ran
        assert ran.field("status") == "COMPLETED"
        assert json.loads(ran.field("result")) == "Hello, World!"
        greet_id = ran.field("invocation")

        order = '{"order_id": "o-1", "items": ["book"], "amount": 12.5}'
        ran = await durable(target, "invoke", "orders/checkout", order)
        assert (ran.code, ran.err) == (0, ""), ran
        assert ran.field("status") == "COMPLETED"
        receipt = json.loads(ran.field("result"))
        assert receipt["order_id"] == "o-1"
        assert receipt["reservation"] == "rsv-o-1"
        assert re.fullmatch(r"pay-[0-9a-f]{8}", receipt["payment"]), receipt
        assert re.fullmatch(r"shp-[0-9a-f]{8}", receipt["shipment"]), receipt
        checkout_id = ran.field("invocation")

        # The web console and the metrics endpoint, at the addresses the banner prints.
        console = re.search(r"web console\s+(http://\S+)", banner)
        metrics = re.search(r"Prometheus metrics\s+(http://\S+)", banner)
        assert console and metrics, banner
        page = await asyncio.to_thread(_get, console[1])
        assert "<title>durable console</title>" in page
        scraped = await asyncio.to_thread(_get, metrics[1])
        assert 'durable_invocations_ended_total{handler="checkout",service="orders"' in scraped
        assert "durable_rpc_requests_total" in scraped

        code = await dev.terminate()
        assert code == 0, dev.tail()
        assert "Traceback" not in dev.tail(400), dev.tail(400)
        assert not any(_alive(pid) for pid in dev.nats_pids), "nats-server outlived durable dev"
        assert _jetstream_files(data), f"no JetStream data under {data}"

        # Same data directory, same ports: the earlier invocations are still there.
        dev, banner = await start(1)
        assert "durable dev is running" in banner
        ran = await durable(target, "list")
        assert (ran.code, ran.err) == (0, ""), ran
        rows = {line.split()[0]: line.split() for line in ran.out.splitlines()[2:-1]}
        assert rows[greet_id][1:3] == ["greeter/greet", "COMPLETED"], ran.out
        assert rows[checkout_id][1:3] == ["orders/checkout", "COMPLETED"], ran.out
        # The two above, and those the banner's commands started.
        assert re.fullmatch(r"(\d+) of \1 matching invocations", ran.out.splitlines()[-1])

        ran = await durable(target, "get", checkout_id)
        assert ran.field("status") == "COMPLETED"
        assert json.loads(ran.field("result")) == receipt
        assert ran.field("journal") == "3 steps"  # reserve, charge, ship

        # The stopped worker deregistered: only the new one serves the handlers.
        ran = await durable(target, "--json", "handlers")
        assert ran.code == 0, ran
        live = {h["name"]: h.get("liveWorkers", 0) for h in json.loads(ran.out)["handlers"]}
        assert live == {name: 1 for name in EXAMPLE_HANDLERS}, ran.out

        # And it still works.
        ran = await durable(target, "invoke", "greeter/greet", '"again"')
        assert (ran.code, json.loads(ran.field("result"))) == (0, "Hello, again!"), ran
        code = await dev.terminate()
        assert code == 0, dev.tail()
    finally:
        for run in runs:
            await run.close()
