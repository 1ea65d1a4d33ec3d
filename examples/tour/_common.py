"""What every tour script shares: where the engine is, and running a main coroutine.

The scripts talk to `make run` by default (DURABLE_TARGET=localhost:50051, NATS at
nats://127.0.0.1:4222, prefix "durable"); the tests point them at a test engine instead.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from durable import Client


def target() -> str:
    return os.environ.get("DURABLE_TARGET", "localhost:50051")


def nats_url() -> str:
    return os.environ.get("DURABLE_NATS", "nats://127.0.0.1:4222")


def prefix() -> str:
    return os.environ.get("DURABLE_PREFIX", "durable")


def client() -> Client:
    return Client(target())


def main(run: Callable[[], Coroutine[Any, Any, None]]) -> None:
    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        sys.exit(130)
