"""The durable execution engine: control plane, worker runtime and embedded nats-server."""

from durable.contract import EngineConfig, Worker
from durable_server.control.server import ControlServer
from durable_server.natsd import EmbeddedNats

__all__ = ["ControlServer", "EmbeddedNats", "EngineConfig", "Worker"]
