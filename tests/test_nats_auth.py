"""The engine against a nats-server that wants TLS and credentials, with the documented
permission sets: the control plane as a user that may manage the engine's streams, the
worker as one that may only publish and subscribe on its own subjects. Workflows with
sleeps, awakeables, calls and object state run end to end; the worker's user cannot create
or delete a stream; wrong credentials end a process with one clear line."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import nats
import nats.errors
import pytest

from durable import Context, ObjectContext, Service, VirtualObject
from durable._store.config import EngineConfig
from durable._worker.runtime import Worker
from durable.contract import awakeable_id
from durable_server.control.server import ControlServer
from durable_server.nats_permissions import permissions_config
from durable_server.natsd import EmbeddedNats
from tests.certs import CertificateAuthority
from tests.procs import REPO

pytestmark = pytest.mark.slow

guarded = Service("guarded")
ledger = VirtualObject("ledger")


@ledger.handler()
async def credit(ctx: ObjectContext, amount: int) -> int:
    total = (await ctx.get("total", int) or 0) + amount
    ctx.set("total", total)
    return total


@guarded.handler()
async def flow(ctx: Context, n: int) -> int:
    await ctx.sleep(0.2)
    _, woken = ctx.awakeable(int)
    got: int = await woken
    total: int = await ctx.call(credit, n + got, key="acct")
    return total


@pytest.fixture
async def secured_nats(tmp_path: Path) -> tuple[EmbeddedNats, CertificateAuthority, str]:
    ca = CertificateAuthority(tmp_path / "ca")
    server = ca.issue("nats", "localhost", server=True)
    prefix = f"sec{uuid.uuid4().hex[:6]}"
    extra = (
        "tls {\n"
        f'  cert_file: "{server.cert}"\n'
        f'  key_file: "{server.key}"\n'
        "}\n"
        + permissions_config(
            prefix, control=("control", "cp-secret"), worker=("worker", "wk-secret")
        )
    )
    natsd = EmbeddedNats(tmp_path / "store", extra_config=extra)
    await natsd.astart()
    try:
        yield natsd, ca, prefix
    finally:
        await natsd.astop()


async def test_the_engine_runs_with_tls_credentials_and_least_privilege(
    secured_nats: tuple[EmbeddedNats, CertificateAuthority, str],
) -> None:
    natsd, ca, prefix = secured_nats
    host = f"localhost:{natsd.port}"

    def cfg(user: str, password: str) -> EngineConfig:
        return EngineConfig(
            nats_url=f"tls://{user}:{password}@{host}", prefix=prefix, nats_ca=str(ca.pem.cert)
        )

    async with (
        ControlServer(cfg("control", "cp-secret"), "127.0.0.1:0") as server,
        Worker(cfg("worker", "wk-secret"), [guarded, ledger], slots=8),
    ):
        from durable import Client

        async with Client(server.target) as client:
            handles = [await client.invoke("guarded/flow", i, wait=False) for i in range(3)]
            for handle in handles:
                for _ in range(200):
                    view = await client.get(handle.id)
                    if view.status.name == "SUSPENDED" and view.journal_length >= 3:
                        break
                    await asyncio.sleep(0.05)
                await client.resolve_awakeable(awakeable_id(handle.id, 2), 10)
            results = [await h.result(timeout=30) for h in handles]
            assert sorted(results)[-1] == sum(i + 10 for i in range(3))
            assert await client.get_state("ledger", "acct") == {"total": sum(results[-1:])}

    # The worker's user may not manage streams: the server refuses, and says so.
    errors: list[str] = []

    async def seen(err: Exception) -> None:
        errors.append(str(err))

    nc = await nats.connect(
        f"tls://worker:wk-secret@{host}", tls=_context(ca), error_cb=seen, max_reconnect_attempts=0
    )
    try:
        js = nc.jetstream(timeout=1.0)
        for attempt in (
            js.add_stream(name=f"{prefix.upper()}_EVIL", subjects=["evil.>"]),
            js.delete_stream(f"{prefix.upper()}_WORK"),
        ):
            with pytest.raises(
                (nats.errors.TimeoutError, nats.errors.NoRespondersError, TimeoutError)
            ):
                await attempt
        await asyncio.sleep(0.2)
        assert any("permissions violation" in e.lower() for e in errors), errors
    finally:
        await nc.close()


def _context(ca: CertificateAuthority):  # type: ignore[no-untyped-def]
    import ssl

    return ssl.create_default_context(cafile=str(ca.pem.cert))


async def test_wrong_nats_credentials_end_a_process_in_one_line(
    secured_nats: tuple[EmbeddedNats, CertificateAuthority, str],
) -> None:
    natsd, ca, prefix = secured_nats
    url = f"tls://worker:not-the-password@localhost:{natsd.port}"
    for command in (
        ["server", "--listen", "127.0.0.1:0"],
        ["worker", "--module", "examples.hello"],
    ):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "durable_server.cli", *command,
            "--nats", url, "--nats-ca", str(ca.pem.cert), "--prefix", prefix,
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 1, (command, out, err)
        line = err.decode().strip().splitlines()[-1]
        assert line.startswith("error: NATS at tls://worker:***@localhost"), line
        assert "refused this process's credentials" in line
        assert "not-the-password" not in err.decode() + out.decode()


async def test_durable_dev_can_start_its_nats_with_users(tmp_path: Path) -> None:
    """``durable dev --nats-auth``: the embedded nats-server wants users; the engine runs
    with the two permission sets, and names the worker URL for workers of one's own."""
    from durable import Client
    from tests.procs import free_port
    from tests.test_dev import DevProc

    grpc_port, nats_port = free_port(), free_port()
    dev = DevProc(tmp_path / "data", f"127.0.0.1:{grpc_port}", nats_port, tmp_path / "dev.log")
    dev.argv.append("--nats-auth")
    await dev.start()
    try:
        banner = await dev.wait_banner()
        line = next(x for x in banner.splitlines() if "durable worker --module" in x)
        worker_url = line.split("DURABLE_NATS=", 1)[1].split()[0]
        async with Client(f"127.0.0.1:{grpc_port}") as client:
            assert await client.execute("greeter/greet", "auth", timeout=30) == "Hello, auth!"
        # Anonymous connections are refused; the worker user cannot manage streams.
        anonymous = nats.connect(f"nats://127.0.0.1:{nats_port}", allow_reconnect=False)
        with pytest.raises(Exception):  # noqa: B017 - nats-py raises several kinds here
            nc = await asyncio.wait_for(anonymous, 5)
            await nc.close()
        errors: list[str] = []

        async def seen(err: Exception) -> None:
            errors.append(str(err))

        nc = await nats.connect(worker_url, error_cb=seen, max_reconnect_attempts=0)
        try:
            with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
                await nc.jetstream(timeout=1.0).delete_stream("DURABLE_WORK")
            await asyncio.sleep(0.2)
            assert any("permissions violation" in e.lower() for e in errors), errors
        finally:
            await nc.close()
    finally:
        await dev.close()


async def test_the_engine_runs_with_jwt_creds_files(tmp_path: Path) -> None:
    """Decentralized auth (an operator, an account with JetStream, users as .creds files
    whose JWTs carry the two permission sets): the control plane and a worker connect with
    --nats-creds and run a workflow; a creds file of another operator is refused in one
    line."""
    from durable import Client
    from durable_server.nats_permissions import control_permissions, worker_permissions
    from tests.nats_jwt import Operator

    operator = Operator()
    prefix = f"jwt{uuid.uuid4().hex[:6]}"
    natsd = EmbeddedNats(tmp_path / "store", extra_config=operator.server_config())
    await natsd.astart()
    try:
        control = operator.creds(tmp_path / "control.creds", "control", control_permissions(prefix))
        worker = operator.creds(tmp_path / "worker.creds", "worker", worker_permissions(prefix))

        def cfg(creds: Path) -> EngineConfig:
            return EngineConfig(nats_url=natsd.url, prefix=prefix, nats_creds=str(creds))

        async with (
            ControlServer(cfg(control), "127.0.0.1:0") as server,
            Worker(cfg(worker), [guarded, ledger], slots=8),
            Client(server.target) as client,
        ):
            handle = await client.invoke("guarded/flow", 5, wait=False)
            for _ in range(200):
                view = await client.get(handle.id)
                if view.status.name == "SUSPENDED" and view.journal_length >= 3:
                    break
                await asyncio.sleep(0.05)
            await client.resolve_awakeable(awakeable_id(handle.id, 2), 1)
            assert await handle.result(timeout=30) == 6

        stranger = Operator().creds(tmp_path / "other.creds", "x", worker_permissions(prefix))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "durable_server.cli", "worker", "--module", "examples.hello",
            "--nats", natsd.url, "--nats-creds", str(stranger), "--prefix", prefix,
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 1, (out, err)
        assert "refused this process's credentials" in err.decode().strip().splitlines()[-1]
    finally:
        await natsd.astop()
