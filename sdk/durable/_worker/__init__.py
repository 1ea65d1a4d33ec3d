"""The worker runtime: hosts handlers and drives their invocations."""

from durable._worker.runtime import Worker, connect_nats

__all__ = ["Worker", "connect_nats"]
