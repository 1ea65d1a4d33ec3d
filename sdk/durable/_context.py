"""The ``ctx`` a handler receives: every step through it is journaled.

Handlers must reach the outside world only through ``ctx`` (or inside ``ctx.run``) so that a
replay after a crash takes the same path and reuses journaled results instead of running the
steps again. The runtime supplies the implementation; this module is the contract.
"""

from __future__ import annotations

import abc
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

from durable._retry import RetryPolicy

T = TypeVar("T")


class Context(abc.ABC):
    """Durable context of one invocation."""

    @property
    @abc.abstractmethod
    def invocation_id(self) -> str:
        """Id of the running invocation."""

    @property
    @abc.abstractmethod
    def handler(self) -> str:
        """Full name of the running handler, ``<service>/<handler>``."""

    @property
    @abc.abstractmethod
    def key(self) -> str:
        """Object key or workflow id; empty for services."""

    @property
    @abc.abstractmethod
    def attempt(self) -> int:
        """Attempt number of this execution (1 for the first)."""

    @overload
    async def run(
        self,
        name: str,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        retry: RetryPolicy | None = None,
        result_type: Any = None,
        **kwargs: Any,
    ) -> T: ...

    @overload
    async def run(
        self,
        name: str,
        fn: Callable[..., T],
        *args: Any,
        retry: RetryPolicy | None = None,
        result_type: Any = None,
        **kwargs: Any,
    ) -> T: ...

    @abc.abstractmethod
    async def run(
        self,
        name: str,
        fn: Callable[..., Any],
        *args: Any,
        retry: RetryPolicy | None = None,
        result_type: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Run a side effect once and journal its result; on replay, return the journaled one.

        ``fn`` may be sync (it runs in a thread, off the event loop) or async. Its result must
        be encodable (JSON-able values, dataclasses, protobuf messages, bytes); it is decoded
        on replay as ``result_type``, or as ``fn``'s return annotation when not given.
        Exceptions other than ``TerminalError`` are retried: in place under ``retry`` when
        given (then journaled as a ``TerminalError`` once the attempts are used up),
        otherwise by retrying the whole invocation under the handler's policy.

        The side effect is at-least-once in one window: if the process dies after ``fn``
        finished but before its result was journaled, ``fn`` runs again on the next attempt.
        """

    @abc.abstractmethod
    async def now(self) -> dt.datetime:
        """The current time (UTC), journaled: a replay sees the same instant."""

    @abc.abstractmethod
    def random(self) -> float:
        """A float in [0, 1) from a generator seeded by the invocation id: same on replay."""

    @abc.abstractmethod
    def uuid(self) -> uuid.UUID:
        """A UUID from the same deterministic generator as :meth:`random`."""
