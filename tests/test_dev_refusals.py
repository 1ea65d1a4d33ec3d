"""One store, one engine; one port, one engine. A second ``durable dev`` on the data
directory, the gRPC port or the NATS port of a running one stops before it touches anything,
with one line naming what is taken and the flag that changes it, and no traceback; the first
keeps serving. ``durable server`` on a taken gRPC port does the same."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.procs import free_port
from tests.test_dev import CLI_TIMEOUT, DURABLE, REPO, DevProc, durable

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


async def _second(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(DURABLE),
        *argv,
        cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT * 2)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


async def test_a_second_engine_is_refused_on_what_the_first_holds(tmp_path: Path) -> None:
    data = tmp_path / "data"
    grpc_port, nats_port = free_port(), free_port()
    target = f"127.0.0.1:{grpc_port}"
    first = DevProc(data, target, nats_port, tmp_path / "first.log")
    try:
        await first.start()
        await first.wait_banner()

        code, err = await _second(
            "dev", "--data", str(data), "--listen", f"127.0.0.1:{free_port()}",
            "--nats-port", str(free_port()),
        )  # fmt: skip
        line = _one_error_line(err)
        assert code == 1 and "in use by another engine" in line and "--data" in line, err
        assert f"pid {first.pid}" in line, line

        code, err = await _second(
            "dev", "--data", str(tmp_path / "other"), "--listen", target,
            "--nats-port", str(free_port()),
        )  # fmt: skip
        line = _one_error_line(err)
        assert code == 1 and f"port {grpc_port}" in line and "--listen" in line, err

        code, err = await _second(
            "dev", "--data", str(tmp_path / "third"), "--listen", f"127.0.0.1:{free_port()}",
            "--nats-port", str(nats_port),
        )  # fmt: skip
        line = _one_error_line(err)
        assert code == 1 and f"port {nats_port}" in line and "--nats-port" in line, err

        code, err = await _second(
            "server", "--listen", target, "--nats", f"nats://127.0.0.1:{nats_port}"
        )
        line = _one_error_line(err)
        assert code == 1 and "--listen" in line, err

        # The first engine never noticed.
        ran = await durable(target, "invoke", "greeter/greet", '"again"')
        assert ran.code == 0, ran
    finally:
        await first.close()
