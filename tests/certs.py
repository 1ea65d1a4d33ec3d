"""Real X.509 certificates for the security tests, made with the cryptography package: a CA,
server certificates for 127.0.0.1/localhost and client certificates signed by it."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from durable._store.config import EngineConfig
from durable_server.control.auth import KeyFile, token_digest
from durable_server.control.server import ControlServer
from durable_server.control.tls import TlsFiles


@dataclasses.dataclass(frozen=True)
class Pem:
    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(
    directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> Pem:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Pem(cert_path, key_path)


class CertificateAuthority:
    """A CA that signs server and client certificates into ``directory``."""

    def __init__(self, directory: Path, name: str = "durable test CA") -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = _write(directory, name.replace(" ", "-"), self.cert, self.key)

    def issue(self, stem: str, common_name: str, *, server: bool) -> Pem:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            ).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        return _write(self.directory, stem, builder.sign(self.key, hashes.SHA256()), key)


@contextlib.asynccontextmanager
async def secured_control_plane(
    cfg: EngineConfig, directory: Path, *, token: str, roles: list[str]
) -> AsyncIterator[tuple[ControlServer, CertificateAuthority]]:
    """A second control plane on ``cfg``'s store serving TLS (a fresh CA's certificate for
    localhost and 127.0.0.1) and accepting one key, ``token``, with ``roles``."""
    ca = CertificateAuthority(directory / "ca")
    served = ca.issue("server", "localhost", server=True)
    keys = directory / "keys.toml"
    listed = ", ".join(f'"{r}"' for r in roles)
    keys.write_text(
        f'[[key]]\nname = "test"\nroles = [{listed}]\nsha256 = "{token_digest(token)}"\n'
    )
    async with ControlServer(
        cfg,
        "127.0.0.1:0",
        tls=TlsFiles(served.cert, served.key),
        authenticators=[KeyFile(keys)],
    ) as server:
        yield server, ca
