"""Checks ``durable dev`` makes before it touches anything: its ports are free, and nobody
else uses its data directory.

Two engines on one store would both run JetStream recovery on the same files; two on one
gRPC port would share calls at random (grpcio binds a taken port by default). Each check
ends the start with one line naming what is taken and the flag that changes it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from pathlib import Path
from typing import IO

LOCK_FILE = ".durable.lock"


class Refused(ConnectionError):
    """A start that must not go on; its message is the one line the user sees."""


def check_port_free(host: str, port: int, what: str, flag: str) -> None:
    """Refuse when something listens on ``host:port`` already."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host.strip("[]") or "0.0.0.0", port))
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                raise
            raise Refused(
                f"port {port} ({what}) is taken, by another engine or program; choose "
                f"another with {flag}"
            ) from None


def lock_data_dir(data: Path) -> IO[str]:
    """Hold ``data`` for this process (an advisory lock on a file in it, released when the
    process ends, however it ends); refuse when another process holds it."""
    data.mkdir(parents=True, exist_ok=True)
    path = data / LOCK_FILE
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise Refused(
            f"{data} is in use by another engine (pid {holder}); stop it first, or choose "
            "another directory with --data"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def release(handle: IO[str]) -> None:
    with contextlib.suppress(OSError):
        handle.close()
