"""The engine's version, as installed (the ``durable-nats-server`` distribution's metadata)."""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "durable-nats-server"


def engine_version() -> str:
    """E.g. "0.1.0"; "unknown" when run from a tree that was never installed."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"
