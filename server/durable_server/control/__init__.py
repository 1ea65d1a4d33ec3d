"""The control plane: DurableControl over gRPC, answering from an index of the records."""

from durable_server.control.plane import ControlPlane
from durable_server.control.server import ControlServer

__all__ = ["ControlPlane", "ControlServer"]
