"""The ``ctx`` a handler receives: every step through it is journaled.

Handlers must reach the outside world only through ``ctx`` (or inside ``ctx.run``) so that a
replay after a crash takes the same path and reuses journaled results instead of running the
steps again. The runtime supplies the implementation; this module is the contract.
"""

from __future__ import annotations

import abc
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Generic, TypeVar, overload

import grpc.aio

from durable._retry import RetryPolicy

T = TypeVar("T")
StubT = TypeVar("StubT")
I = TypeVar("I")  # noqa: E741 (a called handler's input type)
O = TypeVar("O")  # noqa: E741 (a called handler's output type)

Duration = float | dt.timedelta
"""Seconds, or a ``timedelta``."""


class DurableFuture(abc.ABC, Generic[T]):
    """Something that completes outside the handler: a timer (``ctx.sleep``), an awakeable
    (``ctx.awakeable``) or another invocation's result (``ctx.call``).

    Await it to get its value. While it has not completed, the invocation suspends: it holds
    no worker slot and no task, and it is replayed from its journal once the completion
    arrives, however long that takes and whatever restarted meanwhile. Combine several with
    ``ctx.select`` (the first to complete: timeouts and races) or ``ctx.gather`` (all).
    Awaiting it again returns the same value.
    """

    @abc.abstractmethod
    def __await__(self) -> Generator[Any, None, T]: ...


class DurablePromise(DurableFuture[T]):
    """A workflow's durable promise (``ctx.promise(name)``): resolved once, by a shared
    handler of the workflow or by ``DurableControl.ResolvePromise``, before or after the run
    handler awaits it. Awaiting it in ``run`` suspends the workflow until it is resolved; a
    rejection is raised as a ``TerminalError``. It is a :class:`DurableFuture`, so
    ``ctx.select`` can race it against a timer."""

    @abc.abstractmethod
    async def peek(self) -> T | None:
        """Its value if it was resolved, else None (a rejection is raised). Journaled."""

    @abc.abstractmethod
    async def resolve(self, value: Any = None) -> None:
        """Resolve it; a second, different completion raises ``TerminalError``."""

    @abc.abstractmethod
    async def reject(self, reason: str) -> None:
        """Reject it: whoever awaits it sees a ``TerminalError`` with ``reason``."""


class Context(abc.ABC):
    """Durable context of one invocation: what every handler can do (a service's handlers
    get exactly this). Object and workflow handlers get a subclass that adds what their kind
    may do with the key's state, so a misuse (``set`` in a shared handler) is a type error:

    * :class:`ObjectContext`: an exclusive object handler; reads and writes state.
    * :class:`ObjectSharedContext`: a shared object handler; reads state.
    * :class:`WorkflowContext`: a workflow's run; reads and writes state, and promises.
    * :class:`WorkflowSharedContext`: a workflow's other handlers; reads state, promises.
    """

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

    # -- waiting without holding anything --------------------------------------------------

    @abc.abstractmethod
    def sleep(self, duration: Duration) -> DurableFuture[None]:
        """A durable timer: completes ``duration`` after this call, never earlier.

        ``await ctx.sleep(timedelta(days=7))`` suspends the invocation; a restart of any
        process in between neither resets nor loses the timer.
        """

    @abc.abstractmethod
    def awakeable(self, result_type: Any = None) -> tuple[str, DurableFuture[Any]]:
        """An id and a future that completes when someone resolves that id: a client with
        ``DurableControl.ResolveAwakeable`` (or RejectAwakeable, which the handler sees as a
        ``TerminalError``), or another handler with :meth:`resolve_awakeable`. Hand the id
        out through a ``ctx.run`` step (an email, a webhook registration). A resolution that
        arrives before the handler awaits the future is kept. The value is decoded as
        ``result_type`` when given.
        """

    @overload
    def call(
        self, handler: Callable[[Any, I], Awaitable[O]], input: I, *, key: str = ""
    ) -> DurableFuture[O]: ...

    @overload
    def call(
        self, handler: Callable[[Any], Awaitable[O]], *, key: str = ""
    ) -> DurableFuture[O]: ...

    @overload
    def call(
        self, handler: str, input: Any = None, *, key: str = "", result_type: Any = None
    ) -> DurableFuture[Any]: ...

    @abc.abstractmethod
    def call(
        self, handler: Any, input: Any = None, *, key: str = "", result_type: Any = None
    ) -> DurableFuture[Any]:
        """Invoke another handler and get a future of its result.

        ``handler`` is ``"<service>/<handler>"`` or the registered function. The call is
        journaled: a replay never starts it twice. A terminal failure of the callee
        reaches the caller as a ``TerminalError``. The result is decoded as ``result_type``,
        or as the function's return annotation when the function was passed.
        """

    @overload
    async def send(
        self,
        handler: Callable[[Any, I], Awaitable[Any]],
        input: I,
        *,
        key: str = "",
        delay: Duration | None = None,
    ) -> str: ...

    @overload
    async def send(
        self,
        handler: Callable[[Any], Awaitable[Any]],
        *,
        key: str = "",
        delay: Duration | None = None,
    ) -> str: ...

    @overload
    async def send(
        self, handler: str, input: Any = None, *, key: str = "", delay: Duration | None = None
    ) -> str: ...

    @abc.abstractmethod
    async def send(
        self, handler: Any, input: Any = None, *, key: str = "", delay: Duration | None = None
    ) -> str:
        """Invoke another handler one-way and return its invocation id. With ``delay`` it is a
        durable scheduled invocation: it starts that much later, across any restart.
        Journaled: a replay never sends twice."""

    @abc.abstractmethod
    async def select(self, *futures: DurableFuture[Any]) -> tuple[int, Any]:
        """Wait for the first of ``futures`` to complete; returns its position and value (or
        raises its ``TerminalError``). The winner is journaled, so a replay picks the same
        one. A timeout is a race against ``ctx.sleep``::

            which, value = await ctx.select(payment, ctx.sleep(timedelta(minutes=5)))
        """

    @abc.abstractmethod
    async def gather(self, *futures: DurableFuture[Any]) -> list[Any]:
        """Wait for all ``futures``; their values in order. The first failure, in argument
        order, is raised."""

    @abc.abstractmethod
    async def resolve_awakeable(self, awakeable_id: str, value: Any = None) -> None:
        """Resolve another invocation's awakeable (journaled; the first resolution wins)."""

    @abc.abstractmethod
    async def reject_awakeable(self, awakeable_id: str, reason: str) -> None:
        """Reject another invocation's awakeable: its handler sees a ``TerminalError``."""

    # -- gRPC services --------------------------------------------------------------------

    @abc.abstractmethod
    def stub(
        self,
        stub_class: Callable[[grpc.aio.Channel], StubT],
        *,
        retry: RetryPolicy | None = None,
        terminal_codes: Any = None,
    ) -> StubT:
        """A generated gRPC stub (e.g. ``HelloServiceStub``) whose calls are durable steps.

        ``await ctx.stub(HelloServiceStub).SayHello(SayHelloRequest(name="Ada"))`` calls
        the service over NATS (or at the address the worker maps it to), journals the
        response, and returns it on replay without calling again; a replay that sends a
        different request is a non-determinism error. Each call carries
        ``durable-idempotency-key`` metadata, the same across retries. Transport errors and
        codes such as UNAVAILABLE are retried (in place under ``retry``, else by the
        handler's policy); INVALID_ARGUMENT, FAILED_PRECONDITION, NOT_FOUND and the like
        raise ``TerminalError`` (with the code), unless ``terminal_codes`` says otherwise.
        Stub methods accept ``timeout=`` (the deadline) and ``metadata=``.
        """


class ObjectSharedContext(Context):
    """Context of a virtual object's shared handler (and base of every keyed context): it
    runs concurrently with the key's other handlers and may read, not write, its state."""

    @abc.abstractmethod
    async def get(self, name: str, result_type: Any = None) -> Any:
        """The value of state entry ``name`` of this object key or workflow id, or None.
        Decoded as ``result_type`` when given. Journaled: a replay reads the same value."""

    @abc.abstractmethod
    async def state_keys(self) -> list[str]:
        """The names of the state entries, sorted. Journaled."""


class ObjectContext(ObjectSharedContext):
    """Context of a virtual object's exclusive handler: one at a time per key, in arrival
    order; reads and writes the key's state."""

    @abc.abstractmethod
    def set(self, name: str, value: Any) -> None:
        """Set state entry ``name`` (JSON-able values, dataclasses, protobuf messages,
        bytes). The change is journaled and becomes visible to others with the
        invocation's journal, all changes at once."""

    @abc.abstractmethod
    def clear(self, name: str) -> None:
        """Remove state entry ``name``."""

    @abc.abstractmethod
    def clear_all(self) -> None:
        """Remove every state entry of this key."""


class WorkflowSharedContext(ObjectSharedContext):
    """Context of a workflow's shared handlers (queries, signals): reads the workflow's
    state and resolves or reads its durable promises."""

    @abc.abstractmethod
    def promise(self, name: str, result_type: Any = None) -> DurablePromise[Any]:
        """The workflow's durable promise ``name``: await it (in the run), or resolve or
        reject it (from any of the workflow's handlers, or a client)."""


class WorkflowContext(WorkflowSharedContext, ObjectContext):
    """Context of a workflow's run handler: once per workflow id; reads and writes the
    workflow's state and awaits its promises."""
