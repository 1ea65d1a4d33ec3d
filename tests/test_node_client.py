"""A client in another language drives the engine: Node.js with @grpc/grpc-js and
@grpc/proto-loader (from the npm registry), loading the repository's protos at run time,
invokes a workflow and reads its result and journal through DurableControl, and reads a
refusal's google.rpc.ErrorInfo (decoded with protobufjs)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from durable.testing import start_engine
from durable_server.natsd import EmbeddedNats
from examples.hello import greeter
from tests.certs import secured_control_plane
from tests.engine_support import EngineFactory, start_ready

pytestmark = pytest.mark.slow  # real processes or long waits: not in make test-fast

NODE_DIR = Path(__file__).parent / "node"


async def _run(
    *argv: str, cwd: Path, timeout: float, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture(scope="module")
def node_modules() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "Node.js and npm are needed for this test (the machine image has them)"
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        code, out, err = asyncio.run(
            _run(npm, "ci", "--no-audit", "--no-fund", cwd=NODE_DIR, timeout=300)
        )
        assert code == 0, f"npm ci failed:\n{out}\n{err}"
    return NODE_DIR / "node_modules"


async def test_node_client_invokes_and_reads_the_journal(
    engine_factory: EngineFactory, node_modules: Path
) -> None:
    engine = await start_ready(engine_factory, [greeter])
    code, out, err = await _run(
        "node", "client.mjs", engine.target, "greeter/greet", "Node", cwd=NODE_DIR, timeout=60
    )
    assert code == 0, err
    answer = json.loads(out)
    assert answer["status"] == "INVOCATION_STATUS_COMPLETED"
    assert answer["result"] == "Hello, Node!"
    assert answer["journal"] == [
        {"name": "compose", "kind": "STEP_KIND_RUN", "summary": '"Hello, Node!"'}
    ]
    refusal = json.loads(err.strip().splitlines()[-1])
    assert refusal["code"] == 3 and "malformed" in refusal["details"]
    # The reason for programs, read from grpc-status-details-bin as grpc-js hands it over.
    assert refusal["error_info"] == {
        "reason": "INVOCATION_ID_MALFORMED",
        "domain": "durable.v1",
        "metadata": {"invocation_id": "bogus"},
    }
    view = await engine.client.get(answer["invocation_id"])
    assert view.handler == "greeter/greet"


async def test_node_client_speaks_tls_with_a_token(
    nats_server: EmbeddedNats, node_modules: Path, tmp_path: Path
) -> None:
    async with (
        start_engine([greeter], nats_url=nats_server.url) as engine,
        secured_control_plane(
            engine.config, tmp_path, token="dk_node", roles=["invoke", "read"]
        ) as (server, ca),
    ):
        target = f"localhost:{server.port}"
        env = {"DURABLE_CA": str(ca.pem.cert), "DURABLE_TOKEN": "dk_node"}
        args = ("node", "client.mjs", target, "greeter/greet", "TLS")
        code, out, err = await _run(*args, cwd=NODE_DIR, timeout=60, env=env)
        assert code == 0, err
        assert json.loads(out)["result"] == "Hello, TLS!"
        # Without the token: the first call is refused, UNAUTHENTICATED (16).
        code, out, err = await _run(
            *args, cwd=NODE_DIR, timeout=60, env={"DURABLE_CA": str(ca.pem.cert)}
        )
        assert code != 0 and ("UNAUTHENTICATED" in err or "16" in err), err
