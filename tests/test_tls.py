"""TLS and mutual TLS on DurableControl, with real certificates made in the test: the right
CA connects; a wrong CA, plaintext against TLS, and no client certificate under mTLS all
fail; a renewed certificate is served to new connections without a restart."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import grpc
import pytest

from durable import Client, Context, RPCError, Service
from durable.testing import start_engine
from durable_server.control.auth import KeyFile
from durable_server.control.server import ControlServer
from durable_server.control.tls import TlsFiles
from durable_server.natsd import EmbeddedNats
from tests.certs import CertificateAuthority, secured_control_plane

secure = Service("secure")


@secure.handler()
async def hello(ctx: Context, name: str) -> str:
    return f"hello {name}"


def _tls(ca: Path, cert: Path | None = None, key: Path | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        ca.read_bytes(),
        key.read_bytes() if key else None,
        cert.read_bytes() if cert else None,
    )


async def _refused(client: Client) -> grpc.StatusCode:
    with pytest.raises(RPCError) as refused:
        await client.handlers()
    await client.close()
    return refused.value.code


def _client(target: str, **kwargs: object) -> Client:
    return Client(target, unavailable_retry=None, rpc_timeout=5.0, **kwargs)  # type: ignore[arg-type]


async def test_tls_connects_only_with_the_right_ca_and_reloads_its_certificate(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    ca, other = (
        CertificateAuthority(tmp_path / "ca"),
        CertificateAuthority(tmp_path / "other", "other CA"),
    )
    served = ca.issue("server", "localhost", server=True)
    files = TlsFiles(tmp_path / "live.pem", tmp_path / "live-key.pem")
    shutil.copy(served.cert, files.cert)
    shutil.copy(served.key, files.key)
    async with (
        start_engine([secure], nats_url=nats_server.url) as engine,
        ControlServer(engine.config, "127.0.0.1:0", tls=files) as server,
    ):
        async with _client(server.target, credentials=_tls(ca.pem.cert)) as good:
            assert await good.execute("secure/hello", "tls", timeout=30) == "hello tls"
        assert await _refused(_client(server.target, credentials=_tls(other.pem.cert))) == (
            grpc.StatusCode.UNAVAILABLE
        )
        assert await _refused(_client(server.target)) == grpc.StatusCode.UNAVAILABLE

        # Renewed, by another CA: new connections get the new certificate, no restart.
        renewed = other.issue("renewed", "localhost", server=True)
        shutil.copy(renewed.key, files.key)
        shutil.copy(renewed.cert, files.cert)
        for _ in range(50):
            try:
                async with _client(server.target, credentials=_tls(other.pem.cert)) as fresh:
                    await fresh.handlers()
                break
            except RPCError:
                await asyncio.sleep(0.1)  # the files may be read between the two copies
        else:
            raise AssertionError("the renewed certificate was never served")
        assert await _refused(_client(server.target, credentials=_tls(ca.pem.cert))) == (
            grpc.StatusCode.UNAVAILABLE
        )


async def test_mutual_tls_wants_a_client_certificate_from_its_ca(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    ca, other = (
        CertificateAuthority(tmp_path / "ca"),
        CertificateAuthority(tmp_path / "other", "other CA"),
    )
    served = ca.issue("server", "localhost", server=True)
    client_cert = ca.issue("client", "billing", server=False)
    stranger = other.issue("stranger", "mallory", server=False)
    files = TlsFiles(served.cert, served.key, client_ca=ca.pem.cert)
    async with (
        start_engine([secure], nats_url=nats_server.url) as engine,
        ControlServer(
            engine.config,
            "127.0.0.1:0",
            tls=files,
            authenticators=[KeyFile(None, trust_any_client_cert=True)],
        ) as server,
    ):
        mine = _tls(ca.pem.cert, client_cert.cert, client_cert.key)
        async with _client(server.target, credentials=mine) as good:
            assert await good.execute("secure/hello", "mtls", timeout=30) == "hello mtls"
        assert await _refused(_client(server.target, credentials=_tls(ca.pem.cert))) == (
            grpc.StatusCode.UNAVAILABLE
        )
        theirs = _tls(ca.pem.cert, stranger.cert, stranger.key)
        assert await _refused(_client(server.target, credentials=theirs)) == (
            grpc.StatusCode.UNAVAILABLE
        )


async def _cli(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    import os
    import sys

    from tests.procs import REPO

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "durable_server.cli", *argv,
        cwd=REPO, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_cli_speaks_tls_with_a_token(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    async with (
        start_engine([secure], nats_url=nats_server.url) as engine,
        secured_control_plane(engine.config, tmp_path, token="dk_cli", roles=["read"]) as (
            server,
            ca,
        ),
    ):
        flags = ["--target", server.target, "--ca", str(ca.pem.cert)]
        code, out, err = await _cli(*flags, "--token", "dk_cli", "handlers")
        assert code == 0 and "secure/hello" in out, err
        # The token from the environment, TLS from the environment too.
        env = {"DURABLE_TOKEN": "dk_cli", "DURABLE_CA": str(ca.pem.cert)}
        code, out, err = await _cli("--target", server.target, "--json", "stats", env=env)
        assert code == 0, err
        code, out, err = await _cli(*flags, "handlers")
        assert code == 1 and "UNAUTHENTICATED" in err, err
        code, out, err = await _cli(*flags, "--token", "dk_cli", "invoke", "secure/hello", '"x"')
        assert code == 1 and "PERMISSION_DENIED" in err and "invoke role" in err, err


async def test_grpcurl_and_buf_curl_speak_tls_with_a_token(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    """The standard tools reach a secured control plane with nothing but the CA and token
    (reflection open, as by default)."""
    from tests.test_grpcurl import BUF, GRPCURL

    async with (
        start_engine([secure], nats_url=nats_server.url) as engine,
        secured_control_plane(engine.config, tmp_path, token="dk_t", roles=["read"]) as (
            server,
            ca,
        ),
    ):
        target = f"localhost:{server.port}"
        method = "durable.v1.DurableControl/ListHandlers"
        proc = await asyncio.create_subprocess_exec(
            str(GRPCURL), "-cacert", str(ca.pem.cert), "-H", "authorization: Bearer dk_t",
            target, method,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0 and b"secure/hello" in out, err
        proc = await asyncio.create_subprocess_exec(
            str(BUF), "curl", "--cacert", str(ca.pem.cert), "-H", "authorization: Bearer dk_t",
            "--protocol", "grpc", "--http2-prior-knowledge=false",
            f"https://{target}/{method}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0 and b"secure/hello" in out, err
        # Without the token grpcurl gets the status, as any client does.
        proc = await asyncio.create_subprocess_exec(
            str(GRPCURL), "-cacert", str(ca.pem.cert), target, method,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode != 0 and b"Unauthenticated" in err, err


async def test_reflection_can_be_turned_off(nats_server: EmbeddedNats) -> None:
    from tests.test_grpcurl import GRPCURL

    async with (
        start_engine([secure], nats_url=nats_server.url) as engine,
        ControlServer(engine.config, "127.0.0.1:0", reflection=False) as server,
    ):
        proc = await asyncio.create_subprocess_exec(
            str(GRPCURL), "-plaintext", server.target, "list",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode != 0 and b"does not support the reflection API" in err, err


async def test_a_control_plane_beyond_loopback_wants_tls_and_auth_or_insecure(
    nats_server: EmbeddedNats,
) -> None:
    from tests.procs import free_port

    port = free_port()
    code, out, err = await _cli(
        "server", "--listen", f"0.0.0.0:{port}", "--nats", nats_server.url, "--prefix", "bind"
    )
    assert code == 1, (out, err)
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(f"error: refusing to listen on 0.0.0.0:{port} without TLS and authentication")
    ), err
