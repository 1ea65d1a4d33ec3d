"""Handler definitions: services now; virtual objects and workflows share the same shape.

A handler is an ``async def`` taking ``ctx`` and, optionally, one input argument. Its type
hints decide how the input is decoded and checked (see ``_codec``), and its full name,
``<service>/<handler>``, is what clients pass to Invoke.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import pathlib
import re
import sys
import typing
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar, overload

from durable import _codec
from durable._context import (
    Context,
    ObjectContext,
    ObjectSharedContext,
    WorkflowContext,
    WorkflowSharedContext,
)
from durable._retry import RetryPolicy
from durable.v1 import types_pb2

# fullmatch: "$" would also match before a final newline.
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]{0,63}")

HandlerFn = Callable[..., Awaitable[Any]]
F = TypeVar("F", bound=HandlerFn)
# What each kind of handler may be: an ``async def`` of (ctx) or (ctx, input) whose ctx is
# (a supertype of) that kind's context, so a handler written against a richer context
# than its kind gets (``ctx.set`` in a shared handler) is a type error where it is
# registered.
ServiceFn = TypeVar(
    "ServiceFn",
    bound=Callable[[Context], Awaitable[Any]] | Callable[[Context, Any], Awaitable[Any]],
)
ObjectFn = TypeVar(
    "ObjectFn",
    bound=Callable[[ObjectContext], Awaitable[Any]]
    | Callable[[ObjectContext, Any], Awaitable[Any]],
)
ObjectSharedFn = TypeVar(
    "ObjectSharedFn",
    bound=Callable[[ObjectSharedContext], Awaitable[Any]]
    | Callable[[ObjectSharedContext, Any], Awaitable[Any]],
)
WorkflowFn = TypeVar(
    "WorkflowFn",
    bound=Callable[[WorkflowContext], Awaitable[Any]]
    | Callable[[WorkflowContext, Any], Awaitable[Any]],
)
WorkflowSharedFn = TypeVar(
    "WorkflowSharedFn",
    bound=Callable[[WorkflowSharedContext], Awaitable[Any]]
    | Callable[[WorkflowSharedContext, Any], Awaitable[Any]],
)


@dataclasses.dataclass(frozen=True)
class HandlerDef:
    """Everything the runtime needs to know about one handler."""

    service: str
    name: str
    kind: int
    fn: HandlerFn
    input_type: Any
    output_type: Any
    takes_input: bool
    retry: RetryPolicy | None
    description: str
    pinned: bool = False

    @property
    def full_name(self) -> str:
        return f"{self.service}/{self.name}"

    def info(self) -> types_pb2.HandlerInfo:
        """The handler as announced to the control plane."""
        import json

        schema = _codec.json_schema(self.input_type) if self.takes_input else {"type": "null"}
        is_message = _codec.is_message_type(self.input_type)
        return types_pb2.HandlerInfo(
            name=self.full_name,
            service=self.service,
            handler=self.name,
            kind=self.kind,  # type: ignore[arg-type]
            input_type=_codec.type_name(self.input_type) if self.takes_input else "none",
            output_type=_codec.type_name(self.output_type),
            input_schema=json.dumps(schema, sort_keys=True) if schema is not None else "",
            input_message=self.input_type.DESCRIPTOR.full_name if is_message else "",
            input_descriptor_set=_descriptor_set(self.input_type) if is_message else b"",
            description=self.description,
            pinned=self.pinned,
        )


def _descriptor_set(message_type: Any) -> bytes:
    """The FileDescriptorSet of a message's file and everything it imports."""
    from google.protobuf import descriptor_pb2

    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def add(fd: Any) -> None:
        if fd.name in files:
            return
        for dep in fd.dependencies:
            add(dep)
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        files[fd.name] = proto

    add(message_type.DESCRIPTOR.file)
    return descriptor_pb2.FileDescriptorSet(file=list(files.values())).SerializeToString()


def _check_name(what: str, name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"{what} name {name!r} must start with a letter or '_' and contain only letters, "
            "digits, '_' or '-' (at most 64 characters)"
        )
    return name


class Service:
    """A stateless service: a named group of handlers, each invocation independent.

    Example::

        greeter = Service("greeter")

        @greeter.handler()
        async def greet(ctx: Context, name: str) -> str:
            return await ctx.run("format", lambda: f"Hello, {name}!")
    """

    kind_label = "service"

    def __init__(
        self,
        name: str,
        *,
        retry: RetryPolicy | None = None,
        description: str = "",
        pin_version: bool = False,
    ) -> None:
        """``pin_version=True`` keeps each invocation on workers running the code version
        that started it (``durable worker --version``), as Restate keeps an invocation on
        its deployment: a deploy then never replays an in-flight invocation on changed
        code, and new invocations go to the newest version. Without it, any version may
        continue an invocation, and a replay that meets changed steps fails it as
        non-deterministic (check with ``durable replay`` before deploying)."""
        self.name = _check_name("service", name)
        self.retry = retry
        self.description = description
        self.pin_version = pin_version
        self._handlers: dict[str, HandlerDef] = {}

    @property
    def handlers(self) -> list[HandlerDef]:
        return list(self._handlers.values())

    def _handler_kind(self, shared: bool) -> int:
        return types_pb2.HANDLER_KIND_SERVICE

    def handler(
        self,
        name: str | None = None,
        *,
        retry: RetryPolicy | None = None,
    ) -> Callable[[ServiceFn], ServiceFn]:
        """Register an ``async def handler(ctx: Context[, input])`` under this service."""

        def register(fn: ServiceFn) -> ServiceFn:
            self._register(fn, name, retry, shared=False)
            return fn

        return register

    def _register(
        self, fn: HandlerFn, name: str | None, retry: RetryPolicy | None, *, shared: bool
    ) -> HandlerDef:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"handler {fn.__qualname__} must be an async def")
        hname = _check_name("handler", name or fn.__name__)
        if hname in self._handlers:
            raise ValueError(f"{self.name}/{hname} is defined twice")
        params = list(inspect.signature(fn).parameters.values())
        if not params or len(params) > 2:
            raise TypeError(
                f"handler {fn.__qualname__} must take (ctx) or (ctx, input), "
                f"not {len(params)} parameters"
            )
        hints = typing.get_type_hints(fn)
        takes_input = len(params) == 2
        input_type = hints.get(params[1].name, Any) if takes_input else type(None)
        doc = inspect.getdoc(fn) or ""
        hdef = HandlerDef(
            service=self.name,
            name=hname,
            kind=self._handler_kind(shared),
            fn=fn,
            input_type=input_type,
            output_type=hints.get("return", Any),
            takes_input=takes_input,
            retry=retry or self.retry,
            description=doc.split("\n\n", 1)[0],
            pinned=self.pin_version,
        )
        self._handlers[hname] = hdef
        # ctx.call and ctx.send accept the function itself in place of its name.
        with contextlib.suppress(AttributeError, TypeError):
            fn.__durable_handler__ = hdef.full_name  # type: ignore[attr-defined]
        return hdef

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, handlers={list(self._handlers)})"


def declared_result_type(fn: Callable[..., Any]) -> Any:
    """What a handler function declares it returns (its return annotation), to decode its
    result as; None when it declares nothing a value can be decoded as."""
    try:
        declared = typing.get_type_hints(fn).get("return")
    except (NameError, TypeError):
        return None
    if declared is None or declared is Any or declared is type(None):
        return None
    return declared


def handler_name(target: Any) -> str:
    """The full name of a handler given as ``"<service>/<handler>"`` or as the registered
    function itself."""
    if isinstance(target, str):
        if "/" not in target:
            raise ValueError(f"handler {target!r} must be '<service>/<handler>'")
        return target
    name = getattr(target, "__durable_handler__", None)
    if not isinstance(name, str):
        raise TypeError(
            f"{target!r} is not a registered handler; pass '<service>/<handler>' or a "
            "function decorated with @service.handler()"
        )
    return name


class VirtualObject(Service):
    """Keyed entities with durable state: a cart per user, an account per id.

    Handlers are addressed by (object, key). Exclusive handlers (the default) of one key run
    one at a time, in arrival order, and may read and write the key's state with
    ``ctx.get``/``ctx.set``/``ctx.clear``/``ctx.clear_all``/``ctx.state_keys``. Different
    keys run in parallel. ``shared=True`` handlers run concurrently with everything and may
    only read state. An exclusive handler keeps its key while it waits (sleep, awakeable,
    call), as in Restate: invocations behind it wait too, so keep waits in exclusive
    handlers short, or move them to a shared handler or another service.

    Example::

        counter = VirtualObject("counter")

        @counter.handler()
        async def add(ctx: ObjectContext, n: int) -> int:
            total = (await ctx.get("total", int) or 0) + n
            ctx.set("total", total)
            return total
    """

    kind_label = "virtual object"

    @overload
    def handler(
        self,
        name: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        shared: Literal[False] = False,
    ) -> Callable[[ObjectFn], ObjectFn]: ...

    @overload
    def handler(
        self,
        name: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        shared: Literal[True],
    ) -> Callable[[ObjectSharedFn], ObjectSharedFn]: ...

    def handler(
        self,
        name: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        shared: bool = False,
    ) -> Callable[[F], F]:
        """Register an exclusive handler (``ctx: ObjectContext``), or with ``shared=True`` a
        read-only concurrent one (``ctx: ObjectSharedContext``)."""

        def register(fn: F) -> F:
            self._register(fn, name, retry, shared=shared)
            return fn

        return register

    def _handler_kind(self, shared: bool) -> int:
        return (
            types_pb2.HANDLER_KIND_OBJECT_SHARED
            if shared
            else types_pb2.HANDLER_KIND_OBJECT_EXCLUSIVE
        )


class Workflow(Service):
    """A ``run`` handler that executes exactly once per workflow id, plus shared handlers
    that read its state and resolve its durable promises while it runs.

    Invoking ``run`` again with the same id (the key) returns the existing invocation.
    ``ctx.promise(name)`` is a durable promise of the workflow id: ``run`` awaits it, a
    shared handler (or ``DurableControl.ResolvePromise``) resolves it, in either order.

    Example::

        signup = Workflow("signup")

        @signup.main()
        async def run(ctx: WorkflowContext, email: str) -> bool:
            ctx.set("email", email)
            await ctx.run("send link", send_link, email, ctx.key)
            return await ctx.promise("clicked", bool)

        @signup.handler()
        async def click(ctx: WorkflowSharedContext, ok: bool) -> None:
            await ctx.promise("clicked").resolve(ok)
    """

    kind_label = "workflow"

    def main(
        self, name: str | None = None, *, retry: RetryPolicy | None = None
    ) -> Callable[[WorkflowFn], WorkflowFn]:
        """Register the workflow's run handler (``ctx: WorkflowContext``; one per workflow)."""

        def register(fn: WorkflowFn) -> WorkflowFn:
            if any(h.kind == types_pb2.HANDLER_KIND_WORKFLOW_RUN for h in self.handlers):
                raise ValueError(f"workflow {self.name} already has a main handler")
            self._register(fn, name, retry, shared=False)
            return fn

        return register

    def handler(
        self,
        name: str | None = None,
        *,
        retry: RetryPolicy | None = None,
    ) -> Callable[[WorkflowSharedFn], WorkflowSharedFn]:
        """Register a shared handler (``ctx: WorkflowSharedContext``): runs concurrently with
        ``run``, reads its state and resolves its promises."""

        def register(fn: WorkflowSharedFn) -> WorkflowSharedFn:
            self._register(fn, name, retry, shared=True)
            return fn

        return register

    def _handler_kind(self, shared: bool) -> int:
        return (
            types_pb2.HANDLER_KIND_WORKFLOW_SHARED
            if shared
            else types_pb2.HANDLER_KIND_WORKFLOW_RUN
        )


class Registry:
    """The handlers a worker serves, by full name."""

    def __init__(self, services: typing.Iterable[Service] = ()) -> None:
        self._by_name: dict[str, HandlerDef] = {}
        for svc in services:
            self.add(svc)

    def add(self, service: Service) -> None:
        for h in service.handlers:
            if h.full_name in self._by_name:
                raise ValueError(f"handler {h.full_name} is registered twice")
            self._by_name[h.full_name] = h

    def get(self, full_name: str) -> HandlerDef | None:
        return self._by_name.get(full_name)

    @property
    def services(self) -> list[str]:
        """The services (objects, workflows) of its handlers, sorted."""
        return sorted({h.service for h in self._by_name.values()})

    @property
    def pinned_services(self) -> list[str]:
        """The services that keep each invocation on the version that started it."""
        return sorted({h.service for h in self._by_name.values() if h.pinned})

    def code_version(self) -> str:
        """A version derived from the code itself: a digest of the source files that define
        the handlers (``src-`` and 12 hex digits), so a deploy that changes any of them is
        a new version without anyone naming it. A handler whose source cannot be read adds
        its qualified name instead."""
        digest = hashlib.sha256()
        files: set[str] = set()
        for h in self:
            module = sys.modules.get(getattr(h.fn, "__module__", "") or "")
            path = getattr(module, "__file__", None)
            if path:
                files.add(path)
            else:
                digest.update(f"{h.full_name}:{getattr(h.fn, '__qualname__', '')}".encode())
        for path in sorted(files):
            try:
                digest.update(pathlib.Path(path).read_bytes())
            except OSError:
                digest.update(path.encode())
        return f"src-{digest.hexdigest()[:12]}"

    def __iter__(self) -> typing.Iterator[HandlerDef]:
        return iter(sorted(self._by_name.values(), key=lambda h: h.full_name))

    def __len__(self) -> int:
        return len(self._by_name)
