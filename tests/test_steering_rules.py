"""The rules of Pause, Resume and Cancel as pure functions of a record (control/steering.py):
what each writes, and the reason each refusal carries."""

from __future__ import annotations

import pytest

from durable._store.records import Record
from durable.v1 import errors_pb2, types_pb2
from durable_server.control.steering import (
    CancelChange,
    Refused,
    pause_change,
    resume_change,
)

S = types_pb2
E = errors_pb2


def _record(status: int, **fields: object) -> Record:
    r = Record(id="inv_" + "a" * 26, status=status, generation=1, **fields)  # type: ignore[arg-type]
    return r


def test_pause_marks_a_running_invocation_and_parks_a_waiting_one() -> None:
    running = _record(S.INVOCATION_STATUS_RUNNING)
    pause_change("")(running)
    assert running.pause_requested and running.status == S.INVOCATION_STATUS_RUNNING
    waiting = _record(S.INVOCATION_STATUS_SUSPENDED)
    pause_change("checking")(waiting)
    assert waiting.status == S.INVOCATION_STATUS_PAUSED and waiting.status_reason == "checking"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"status": S.INVOCATION_STATUS_COMPLETED}, E.ERROR_REASON_INVOCATION_ENDED),
        ({"status": S.INVOCATION_STATUS_PAUSED}, E.ERROR_REASON_INVOCATION_ALREADY_PAUSED),
        (
            {"status": S.INVOCATION_STATUS_RUNNING, "pause_requested": True},
            E.ERROR_REASON_INVOCATION_ALREADY_PAUSED,
        ),
        (
            {"status": S.INVOCATION_STATUS_RUNNING, "cancel_requested": True},
            E.ERROR_REASON_INVOCATION_CANCELLING,
        ),
    ],
)
def test_pause_refusals_name_their_reason(fields: dict[str, object], reason: int) -> None:
    status = fields.pop("status")
    with pytest.raises(Refused) as refused:
        pause_change("")(_record(status, **fields))  # type: ignore[arg-type]
    assert refused.value.reason == reason


def test_resume_continues_a_paused_invocation_in_a_new_generation() -> None:
    paused = _record(S.INVOCATION_STATUS_PAUSED)
    resume_change()(paused)
    assert (paused.status, paused.generation) == (S.INVOCATION_STATUS_PENDING, 2)
    with pytest.raises(Refused) as refused:
        resume_change()(_record(S.INVOCATION_STATUS_RUNNING))
    assert refused.value.reason == E.ERROR_REASON_INVOCATION_NOT_PAUSED


def test_cancel_wakes_what_no_work_item_drives_and_says_from_where() -> None:
    change = CancelChange("stop")
    sleeping = _record(S.INVOCATION_STATUS_SUSPENDED)
    change(sleeping)
    assert sleeping.cancel_requested and sleeping.status == S.INVOCATION_STATUS_PENDING
    assert change.woke_from == S.INVOCATION_STATUS_SUSPENDED
    running = _record(S.INVOCATION_STATUS_RUNNING)
    change(running)  # decided again on every try: this one was not woken
    assert change.woke_from == S.INVOCATION_STATUS_UNSPECIFIED
    with pytest.raises(Refused) as refused:
        change(_record(S.INVOCATION_STATUS_RUNNING, cancel_requested=True))
    assert refused.value.reason == E.ERROR_REASON_INVOCATION_CANCELLING
