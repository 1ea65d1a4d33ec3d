"""``ctx`` for virtual objects and workflows: state and durable promises.

State reads and writes are STATE steps (``get <name>``, ``set <name>``, ``clear <name>``,
``clear_all``, ``keys``), so a replay reads what the first run read. Live reads see the
key's stored state (read once per attempt) with this invocation's own changes laid over it
(:class:`StateView`); the executor writes the changes at the end of every attempt, all in
one write. Promises are stored once beside the journal of the workflow's run invocation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any, Protocol

from durable import _codec
from durable._context import DurableFuture, DurablePromise
from durable._limits import MAX_NAME_CHARS, quote, text_problem
from durable._store.completions import CompletionRefused
from durable._store.ids import service_of, token, workflow_run_id
from durable._store.objects import Changes, StateStore
from durable._store.waking import AlreadyCompleted, Waker
from durable._worker.encoding import encode_bounded
from durable._worker.waits import StepFuture
from durable.errors import TerminalError
from durable.internal.v1 import storage_pb2
from durable.v1 import types_pb2

S = types_pb2
Entry = storage_pb2.JournalRecord
StoredPayload = storage_pb2.StoredPayload
_STATEFUL_WRITERS = (S.HANDLER_KIND_OBJECT_EXCLUSIVE, S.HANDLER_KIND_WORKFLOW_RUN)
_WORKFLOW = (S.HANDLER_KIND_WORKFLOW_RUN, S.HANDLER_KIND_WORKFLOW_SHARED)


class Steps(Protocol):
    """What the state and promise steps need of the invocation's context."""

    def _take(self, kind: int, name: str) -> tuple[int, Entry | None]: ...
    def _entry(self, index: int, kind: int, name: str) -> Entry: ...
    def _complete(self, entry: Entry) -> None: ...
    async def _once(self, kind: int, label: str, effect: Callable[[], Awaitable[None]]) -> None: ...
    async def _await(self, fut: StepFuture) -> Any: ...


class StateView:
    """The key's stored state with this invocation's changes laid over it."""

    def __init__(self, load: Callable[[], Awaitable[dict[str, StoredPayload]]]) -> None:
        self._load = load
        self._base: dict[str, StoredPayload] | None = None
        self.changes: Changes = {}
        self.cleared_all = False

    @property
    def touched(self) -> bool:
        return bool(self.changes) or self.cleared_all

    async def _stored(self) -> dict[str, StoredPayload]:
        if self._base is None:
            self._base = await self._load()
        return self._base

    async def get(self, name: str) -> StoredPayload | None:
        if name in self.changes:
            return self.changes[name]
        if self.cleared_all:
            return None
        return (await self._stored()).get(name)

    async def keys(self) -> list[str]:
        names = set() if self.cleared_all else set(await self._stored())
        for name, value in self.changes.items():
            (names.add if value is not None else names.discard)(name)
        return sorted(names)

    def set(self, name: str, value: StoredPayload | None) -> None:
        self.changes[name] = value

    def clear_all(self) -> None:
        self.changes.clear()
        self.cleared_all = True


def changes_in(entries: list[Entry]) -> StateView:
    """The state changes a journal holds (to apply them after a crash)."""

    async def nothing() -> dict[str, StoredPayload]:
        return {}

    view = StateView(nothing)
    for e in entries:
        if e.kind != S.STEP_KIND_STATE:
            continue
        op, _, name = e.name.partition(" ")
        if op == "set":
            view.set(name, e.value)
        elif op == "clear":
            view.set(name, None)
        elif op == "clear_all":
            view.clear_all()
    return view


class KeyedSteps:
    """State and promise steps of one attempt of one invocation."""

    def __init__(
        self,
        steps: Steps,
        *,
        kind: int,
        handler: str,
        key: str,
        invocation_id: str,
        store: StateStore | None,
        waker: Waker,
        max_payload: int,
    ) -> None:
        self._steps = steps
        self._kind = kind
        self._handler = handler
        self._object = service_of(handler)
        self._key = key
        self._invocation_id = invocation_id
        self._waker = waker
        self._max_payload = max_payload
        self._store = store
        self.view = StateView(self._load)

    # -- state ------------------------------------------------------------------------------

    async def _load(self) -> dict[str, StoredPayload]:
        # Only object and workflow handlers get here (_need_state); their worker has a store.
        assert self._store is not None, "a worker with stateful handlers has a state store"
        return await self._store.load(self._object, self._key)

    def _need_state(self, write: bool) -> None:
        if self._kind == S.HANDLER_KIND_SERVICE:
            raise TerminalError(
                f"{self._handler} is a service handler and has no state; state belongs to "
                "virtual objects and workflows"
            )
        if write and self._kind not in _STATEFUL_WRITERS:
            raise TerminalError(
                f"{self._handler} is a shared handler: it may read state but not write it; "
                "write from an exclusive handler (or the workflow's run)"
            )

    async def get(self, name: str, result_type: Any) -> Any:
        self._need_state(write=False)
        index, entry = self._steps._take(S.STEP_KIND_STATE, f"get {name}")
        if entry is None:
            entry = self._steps._entry(index, S.STEP_KIND_STATE, f"get {name}")
            value = await self.view.get(name)
            if value is not None:
                entry.value.CopyFrom(value)
            self._steps._complete(entry)
        if not entry.HasField("value") or not entry.value.content_type:
            return None
        return _codec.decode(entry.value.data, entry.value.content_type, result_type or Any)

    def _write(self, op: str, name: str, value: StoredPayload | None) -> None:
        self._need_state(write=True)
        label = f"{op} {name}".rstrip()
        index, entry = self._steps._take(S.STEP_KIND_STATE, label)
        if entry is None:
            entry = self._steps._entry(index, S.STEP_KIND_STATE, label)
            if value is not None:
                entry.value.CopyFrom(value)
            self._steps._complete(entry)
        if op == "clear_all":
            self.view.clear_all()
        else:
            self.view.set(name, value)

    def set(self, name: str, value: Any) -> None:
        if (problem := text_problem(name, MAX_NAME_CHARS)) is not None:
            raise TerminalError(f"state entry name {quote(name)} {problem}")
        self._write("set", name, encode_bounded(value, self._max_payload, f"state {name!r}"))

    def clear(self, name: str) -> None:
        self._write("clear", name, None)

    def clear_all(self) -> None:
        self._write("clear_all", "", None)

    async def keys(self) -> list[str]:
        self._need_state(write=False)
        index, entry = self._steps._take(S.STEP_KIND_STATE, "keys")
        if entry is None:
            entry = self._steps._entry(index, S.STEP_KIND_STATE, "keys")
            data, ct = _codec.encode(await self.view.keys())
            entry.value.CopyFrom(StoredPayload(data=data, content_type=ct))
            self._steps._complete(entry)
        return list(_codec.decode(entry.value.data, entry.value.content_type, list[str]))

    # -- promises ---------------------------------------------------------------------------

    def promise(self, name: str, result_type: Any) -> DurablePromise[Any]:
        if self._kind not in _WORKFLOW:
            raise TerminalError(f"{self._handler} is not a workflow handler; it has no promises")
        if (problem := text_problem(name, MAX_NAME_CHARS)) is not None:
            # ResolvePromise could never name it.
            raise TerminalError(f"promise name {quote(name)} {problem}")
        return _Promise(self, name, result_type)

    @property
    def run_id(self) -> str:
        return workflow_run_id(self._object, self._key)

    async def await_promise(self, promise: _Promise) -> Any:
        return await self.future_of(promise)

    def future_of(self, promise: _Promise) -> StepFuture:
        """The promise as a future of the run handler (for await, ctx.select, ctx.gather)."""
        if self._kind != S.HANDLER_KIND_WORKFLOW_RUN:
            raise TerminalError(
                f"only the workflow's run handler may await promise {promise.name!r}; shared "
                "handlers can peek at it or resolve it"
            )
        if promise.future is None:
            label = f"await {promise.name}"
            index, entry = self._steps._take(S.STEP_KIND_PROMISE, label)
            if entry is None:
                self._steps._complete(self._steps._entry(index, S.STEP_KIND_PROMISE, label))
            target = S.WaitTarget(kind=S.WAIT_KIND_PROMISE, step_index=index, promise=promise.name)
            promise.future = StepFuture(self._steps._await, target, promise.result_type)
        return promise.future

    def as_future(self, f: DurableFuture[Any]) -> DurableFuture[Any]:
        return self.future_of(f) if isinstance(f, _Promise) else f

    async def peek(self, promise: _Promise) -> Any:
        label = f"peek {promise.name}"
        index, entry = self._steps._take(S.STEP_KIND_PROMISE, label)
        if entry is None:
            entry = self._steps._entry(index, S.STEP_KIND_PROMISE, label)
            stored = await self._waker.promise_outcome(self.run_id, token(promise.name))
            if stored is not None:
                entry.MergeFrom(_outcome_only(stored))
            self._steps._complete(entry)
        if entry.HasField("failure"):
            raise TerminalError(entry.failure.message, entry.failure.code)
        if not entry.HasField("value") or not entry.value.content_type:
            return None
        return _codec.decode(entry.value.data, entry.value.content_type, promise.result_type)

    async def complete(self, promise: _Promise, outcome: Entry, verb: str) -> None:
        name = token(promise.name)

        async def effect() -> None:
            try:
                await self._waker.complete_promise(self.run_id, name, outcome)
            except CompletionRefused as err:
                raise TerminalError(str(err)) from None
            except AlreadyCompleted:
                # A replay finds its own earlier completion: the same one is no conflict.
                stored = await self._waker.promise_outcome(self.run_id, name)
                if stored is None or _outcome_only(stored) != _outcome_only(outcome):
                    raise TerminalError(
                        f"promise {promise.name!r} of workflow {self._object}/{self._key} was "
                        "already completed"
                    ) from None

        await self._steps._once(S.STEP_KIND_PROMISE, f"{verb} {promise.name}", effect)


def _outcome_only(entry: Entry) -> Entry:
    out = Entry()
    if entry.HasField("failure"):
        out.failure.CopyFrom(entry.failure)
    elif entry.HasField("value"):
        out.value.CopyFrom(entry.value)
    return out


class _Promise(DurablePromise[Any]):
    """ctx.promise(name)."""

    def __init__(self, keyed: KeyedSteps, name: str, result_type: Any) -> None:
        self._keyed = keyed
        self.name = name
        self.result_type = Any if result_type is None else result_type
        self.future: StepFuture | None = None

    def __await__(self) -> Generator[Any, None, Any]:
        return self._keyed.await_promise(self).__await__()

    async def peek(self) -> Any:
        return await self._keyed.peek(self)

    async def resolve(self, value: Any = None) -> None:
        out = Entry()
        out.value.CopyFrom(encode_bounded(value, self._keyed._max_payload, "the promise value"))
        await self._keyed.complete(self, out, "resolve")

    async def reject(self, reason: str) -> None:
        out = Entry()
        out.failure.CopyFrom(S.Failure(message=reason, error_type="TerminalError"))
        await self._keyed.complete(self, out, "reject")
