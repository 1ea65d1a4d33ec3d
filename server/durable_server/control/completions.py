"""Completing what invocations wait for, from outside: awakeables (ResolveAwakeable,
RejectAwakeable) and workflow promises (ResolvePromise, RejectPromise). Each id or name
says which invocation it belongs to, so nothing is scanned; the first completion stands.
"""

from __future__ import annotations

from durable.contract import (
    MAX_KEY_CHARS,
    MAX_NAME_CHARS,
    AlreadyCompleted,
    NotAnAwakeable,
    TooFarAhead,
    TooManyPromises,
    Waker,
    is_terminal,
    parse_awakeable_id,
    quote,
    status_name,
    token,
    workflow_run_id,
)
from durable.internal.v1 import storage_pb2
from durable.v1 import types_pb2
from durable_server.control.invocations import Invocations
from durable_server.control.validation import E, RequestError, check_text, invalid

S = types_pb2


class Completions:
    """Resolving and rejecting awakeables and workflow promises."""

    def __init__(self, invocations: Invocations, waker: Waker) -> None:
        self._invocations = invocations
        self._waker = waker

    async def complete_awakeable(
        self, awakeable_id: str, outcome: storage_pb2.JournalRecord
    ) -> str:
        """Resolve or reject an awakeable; the id names its invocation, so nothing is
        scanned. Returns the invocation id."""
        parsed = parse_awakeable_id(awakeable_id)
        if parsed is None:
            raise invalid(
                f"awakeable_id {quote(awakeable_id)} is not an awakeable id; they look like "
                "awk_<26 characters>_<step>, as ctx.awakeable() returned it",
                E.ERROR_REASON_AWAKEABLE_ID_MALFORMED,
                awakeable_id=awakeable_id[:80],
            )
        invocation_id, index = parsed
        try:
            record = await self._invocations.view_record(invocation_id)
        except RequestError:
            raise RequestError(
                f"no awakeable {awakeable_id}: its invocation {invocation_id} does not exist "
                "(never created, or purged)",
                E.ERROR_REASON_INVOCATION_NOT_FOUND,
                invocation_id=invocation_id,
            ) from None
        status = await self._invocations.status_of(record)
        if is_terminal(status):
            raise RequestError(
                f"awakeable {awakeable_id} belongs to invocation {invocation_id}, which "
                f"already ended ({status_name(status)}); nothing waits for it any more",
                E.ERROR_REASON_INVOCATION_ENDED,
                invocation_id=invocation_id,
                status=status_name(status),
            )
        try:
            await self._waker.complete_awakeable(
                invocation_id, index, outcome, waiting_for=record.waiting_for
            )
        except NotAnAwakeable as err:
            raise RequestError(
                str(err),
                E.ERROR_REASON_AWAKEABLE_NOT_FOUND,
                awakeable_id=awakeable_id,
            ) from None
        except TooFarAhead as err:
            raise RequestError(
                str(err),
                E.ERROR_REASON_AWAKEABLE_OUT_OF_RANGE,
                awakeable_id=awakeable_id,
            ) from None
        except AlreadyCompleted:
            raise RequestError(
                f"awakeable {awakeable_id} was already resolved or rejected; the first "
                "completion stands",
                E.ERROR_REASON_ALREADY_COMPLETED,
                awakeable_id=awakeable_id,
            ) from None
        return invocation_id

    async def complete_promise(
        self, handler: str, key: str, promise: str, outcome: storage_pb2.JournalRecord
    ) -> str:
        info = self._invocations.handler_info(handler)
        if info.kind not in (S.HANDLER_KIND_WORKFLOW_RUN, S.HANDLER_KIND_WORKFLOW_SHARED):
            raise invalid(
                f"{handler} is not a workflow handler; only workflows have promises",
                E.ERROR_REASON_HANDLER_KIND_MISMATCH,
                handler=handler,
            )
        check_text("key", key, MAX_KEY_CHARS, required="the workflow id")
        check_text(
            "promise",
            promise,
            MAX_NAME_CHARS,
            required="the name the handler passed to ctx.promise",
        )
        run_id = workflow_run_id(info.service, key)
        try:
            record = await self._invocations.view_record(run_id)
        except RequestError:
            raise RequestError(
                f"no workflow {info.service} with id {quote(key)} (never started, or purged)",
                E.ERROR_REASON_INVOCATION_NOT_FOUND,
                invocation_id=run_id,
            ) from None
        status = await self._invocations.status_of(record)
        if is_terminal(status):
            raise RequestError(
                f"workflow {info.service} {quote(key)} already ended "
                f"({status_name(status)}); nothing awaits its promises",
                E.ERROR_REASON_INVOCATION_ENDED,
                invocation_id=run_id,
                status=status_name(status),
            )
        try:
            await self._waker.complete_promise(run_id, token(promise), outcome)
        except TooManyPromises as err:
            raise RequestError(str(err), E.ERROR_REASON_TOO_MANY_PROMISES) from None
        except AlreadyCompleted:
            raise RequestError(
                f"promise {quote(promise)} of workflow {info.service} {quote(key)} was "
                "already resolved or rejected; the first completion stands",
                E.ERROR_REASON_ALREADY_COMPLETED,
            ) from None
        return run_id
