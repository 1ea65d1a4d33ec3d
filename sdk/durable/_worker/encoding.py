"""Turning handler values and errors into what the journal stores, and back."""

from __future__ import annotations

import asyncio
import functools
import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import Any

from durable import _codec
from durable._codec.jsonrules import JsonRuleError
from durable._retry import RetryPolicy
from durable._worker.signals import RetryAttempt
from durable.errors import CancelledError, TerminalError
from durable.internal.v1 import storage_pb2
from durable.v1 import types_pb2

CANCELLED_ERROR_TYPE = "CancelledError"


def failure_of(err: BaseException) -> types_pb2.Failure:
    code = err.code if isinstance(err, TerminalError) else 0
    message = err.message if isinstance(err, TerminalError) else str(err)
    return types_pb2.Failure(
        message=message or type(err).__name__, error_type=type(err).__name__, code=code
    )


def encode_bounded(value: Any, limit: int, what: str) -> storage_pb2.StoredPayload:
    """Encode a step result or handler output; a TerminalError when it cannot be stored:
    not encodable, breaking the JSON rules (``durable._codec.jsonrules``: what the API could not
    hand back unchanged), or over the size limit. Retrying cannot change any of these."""
    try:
        data, content_type = _codec.encode(value)
    except TypeError as err:
        raise TerminalError(f"{what}: {err}") from err
    except JsonRuleError as err:
        raise TerminalError(f"{what} cannot be stored as JSON: {err}") from err
    if len(data) > limit:
        raise TerminalError(
            f"{what} is {len(data)} bytes encoded; the limit is {limit} bytes "
            "(--max-payload-bytes). Store large data elsewhere and return a reference."
        )
    return storage_pb2.StoredPayload(data=data, content_type=content_type)


def error_from_failure(failure: types_pb2.Failure) -> TerminalError:
    if failure.error_type == CANCELLED_ERROR_TYPE:
        return CancelledError(failure.message, failure.code)
    return TerminalError(failure.message, failure.code)


def declared_return_type(fn: Callable[..., Any]) -> Any:
    """``fn``'s return annotation, evaluated once per function (lambdas have none)."""
    if not getattr(fn, "__annotations__", None):
        return Any
    try:
        return _return_type_cached(fn)
    except TypeError:  # unhashable callable
        return _return_type(fn)


def _return_type(fn: Callable[..., Any]) -> Any:
    try:
        return typing.get_type_hints(fn).get("return", Any)
    except Exception:
        return Any


_return_type_cached = functools.lru_cache(maxsize=1024)(_return_type)


_KIND_NAMES: dict[int, str] = {
    types_pb2.STEP_KIND_RUN: "run",
    types_pb2.STEP_KIND_NOW: "now",
    types_pb2.STEP_KIND_SLEEP: "sleep",
    types_pb2.STEP_KIND_CALL: "call",
    types_pb2.STEP_KIND_SEND: "send",
    types_pb2.STEP_KIND_AWAKEABLE: "awakeable",
    types_pb2.STEP_KIND_AWAIT: "await",
    types_pb2.STEP_KIND_SELECT: "select",
    types_pb2.STEP_KIND_RESOLVE_AWAKEABLE: "resolve awakeable",
}


def describe_step(kind: int, name: str) -> str:
    label = _KIND_NAMES.get(kind) or types_pb2.StepKind.Name(kind)  # type: ignore[arg-type]
    return f"{label} {name!r}"


async def execute(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    retry: RetryPolicy | None,
    before_try: Callable[[], Awaitable[None]] | None = None,
    *,
    on_retry: Callable[[BaseException], None] | None = None,
) -> Any:
    """Run a ``ctx.run`` body: sync ones in a thread. Exceptions other than TerminalError
    are retried in place under ``retry`` (then a TerminalError once it gives up), or end
    the attempt (RetryAttempt) for the handler's policy to retry the invocation.
    ``before_try`` runs before every try (the claim check)."""
    attempt = 0
    while True:
        attempt += 1
        if before_try is not None:
            await before_try()
        try:
            if inspect.iscoroutinefunction(fn):
                return await fn(*args, **kwargs)
            result = await asyncio.to_thread(fn, *args, **kwargs)
            if inspect.isawaitable(result):
                return await result
            return result
        except TerminalError:
            raise
        except Exception as err:
            if retry is None:
                raise RetryAttempt(err) from err
            if retry.gives_up_after(attempt):
                raise TerminalError(
                    f"gave up after {attempt} attempts: {type(err).__name__}: {err}"
                ) from err
            if on_retry is not None:
                on_retry(err)
            await asyncio.sleep(retry.delay(attempt))
