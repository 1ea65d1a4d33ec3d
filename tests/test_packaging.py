"""The two distributions, installed as users install them: the sdk (``sdk/``, durable-nats)
into fresh virtual environments of its own, the engine (``server/``) already installed in
the repository's venv. A client-only install holds grpcio and protobuf and nothing else and
imports no NATS code; a worker installed with the sdk's ``worker`` extra alone runs handlers
for an engine running from the other install.

Needs the package index (or pip's cache) for grpcio, protobuf and nats-py, as ``make setup``
does. Prints what each install holds and its size.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from durable_server.natsd import EmbeddedNats
from tests.procs import REPO, ProcGroup, free_port, wait_healthy

pytestmark = pytest.mark.slow

#: What a client-only install may hold besides the sdk: grpcio (and what grpcio itself
#: requires), protobuf, and the OpenTelemetry API (spans are no-ops without an SDK).
CLIENT_ONLY = {"durable-nats", "grpcio", "protobuf", "typing-extensions", "opentelemetry-api"}

_SIZES = textwrap.dedent(
    """
    import importlib.metadata as md, json, os
    out = {}
    for d in md.distributions():
        name = d.metadata["Name"].lower().replace("_", "-")
        if name in ("pip", "setuptools"):
            continue
        size = 0
        for f in d.files or []:
            try:
                size += os.path.getsize(d.locate_file(f))
            except OSError:
                pass
        out[name] = size
    print(json.dumps(out))
    """
)

_CLIENT = textwrap.dedent(
    """
    import asyncio, sys
    import durable
    from examples.hello import greet

    async def main(target: str) -> None:
        async with durable.Client(target) as client:
            by_name = await client.execute("greeter/greet", "Ada")
            by_function = await client.execute(greet, "Grace")
            print(by_name, "|", by_function)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("nats", "durable_server"))
        print("loaded:", loaded)

    asyncio.run(main(sys.argv[1]))
    """
)


def _run(*args: str | Path, cwd: Path | None = None, timeout: float = 300) -> str:
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


def _venv(path: Path) -> Path:
    _run(sys.executable, "-m", "venv", path)
    return path / "bin" / "python"


def _sizes(python: Path) -> dict[str, int]:
    import json

    sizes: dict[str, int] = json.loads(_run(python, "-c", _SIZES, cwd=python.parent))
    total = sum(sizes.values()) / 1e6
    listing = ", ".join(f"{n} {s / 1e6:.1f}" for n, s in sorted(sizes.items()))
    print(f"{python.parent.parent.name}: {len(sizes)} packages, {total:.1f} MB ({listing})")
    return sizes


@pytest.fixture(scope="module")
def sdk_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdk built as a wheel, as a release would publish it."""
    out = tmp_path_factory.mktemp("wheels")
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", out, REPO / "sdk")
    (wheel,) = out.glob("durable_nats-*.whl")
    return wheel


async def test_the_sdk_installs_alone_and_drives_an_engine_installed_separately(
    sdk_wheel: Path, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    client_py = _venv(tmp_path / "client-only")
    _run(client_py, "-m", "pip", "install", "--quiet", sdk_wheel)
    client_sizes = _sizes(client_py)
    assert set(client_sizes) <= CLIENT_ONLY, set(client_sizes) - CLIENT_ONLY

    worker_py = _venv(tmp_path / "worker")
    _run(worker_py, "-m", "pip", "install", "--quiet", f"{sdk_wheel}[worker]")
    worker_sizes = _sizes(worker_py)
    assert "nats-py" in worker_sizes and "durable-nats-server" not in worker_sizes

    procs = ProcGroup(
        tmp_path / "logs",
        nats_server.url,
        f"pk{uuid.uuid4().hex[:8]}",
        ack_wait=5.0,
        ledger=tmp_path / "ledger.jsonl",
    )
    port = free_port()
    try:
        # The engine from the repository's venv; the worker from the sdk-only venv, with the
        # repository as its working directory so that `examples.hello` imports.
        server = procs.server(port).start()
        await wait_healthy(f"127.0.0.1:{port}", proc=server)
        worker = procs.worker("sdk-worker")
        worker.command = [str(worker_py.parent / "durable-worker")]
        worker.args = [
            "--module",
            "examples.hello",
            "--nats",
            nats_server.url,
            "--prefix",
            procs.prefix,
        ]
        worker.start()
        await worker.wait_for_log("durable worker", within=60)

        out = _run(client_py, "-c", _CLIENT, f"127.0.0.1:{port}", cwd=REPO, timeout=60)
        assert "Hello, Ada! | Hello, Grace!" in out, out
        assert "loaded: []" in out, out
    finally:
        procs.close()
