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
from tests.certs import CertificateAuthority

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
