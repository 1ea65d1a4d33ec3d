"""TLS for DurableControl: the server's certificate and key, and with a client CA, mutual TLS.

The files are read again when they change (checked at each new connection's handshake), so
a renewed certificate is served without a restart; a change that does not load (a key that
does not match, a half-written file) is logged and the last good one stays in use.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import grpc

log = logging.getLogger("durable.control")


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """PEM files: the server's certificate chain and key, and the CA that client
    certificates must chain to (None: no client certificate asked for)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def _stamp(self) -> tuple[tuple[int, int], ...]:
        paths = [self.cert, self.key, *([self.client_ca] if self.client_ca else [])]
        out = []
        for path in paths:
            st = path.stat()
            out.append((st.st_mtime_ns, st.st_size))
        return tuple(out)

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.client_ca.read_bytes() if self.client_ca else None,
        )

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that pick up changed files at the next handshake."""
        stamp = self._stamp()
        first = self._configuration()

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            nonlocal stamp
            try:
                now = self._stamp()
                if now == stamp:
                    return None
                config = self._configuration()
            except (OSError, ValueError) as err:
                log.error("TLS files changed but do not load; keeping the last good ones: %s", err)
                return None
            stamp = now
            log.info("TLS certificate reloaded from %s", self.cert)
            return config

        return grpc.dynamic_ssl_server_credentials(
            first,
            fetch,  # type: ignore[arg-type]  # None keeps the current one, as grpc documents
            require_client_authentication=self.client_ca is not None,
        )
