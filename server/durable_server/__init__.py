"""The durable execution engine: control plane, worker runtime and embedded nats-server."""

from durable_server.config import EngineConfig
from durable_server.control.server import ControlServer
from durable_server.natsd import EmbeddedNats
from durable_server.worker.runtime import Worker

__all__ = ["ControlServer", "EmbeddedNats", "EngineConfig", "Worker"]
