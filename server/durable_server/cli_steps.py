"""How ``durable get`` shows an invocation's steps and what it waits for: each step's
duration, what an AWAIT waited for, and a PENDING invocation that no worker hosts."""

from __future__ import annotations

from durable.v1 import types_pb2
from durable_server.cli_render import ago, enum_name, took, ts


def step_name(e: types_pb2.JournalEntry) -> str:
    """The step's name; for an AWAIT, the step it waited for ("sleep (#3)")."""
    if e.HasField("awaited"):
        kind = enum_name(types_pb2.StepKind, e.awaited.kind, "STEP_KIND_").lower()
        name = e.awaited.name or kind
        return f"{name} (#{e.awaited.index})"
    return e.name


def step_summary(e: types_pb2.JournalEntry) -> str:
    """The recorded outcome; for an awaited timer, that it fired (its value is null)."""
    if e.HasField("awaited") and e.awaited.kind == types_pb2.STEP_KIND_SLEEP:
        return "timer fired" if not e.result.HasField("failure") else e.summary
    return e.summary


def step_took(e: types_pb2.JournalEntry) -> str:
    """How long the step took: a side effect's run, or how long an AWAIT waited."""
    if not e.HasField("started_at") or not e.HasField("recorded_at"):
        return ""
    return took(e.started_at, e.recorded_at)


def no_worker_text(inv: types_pb2.Invocation) -> str:
    """For an invocation that waits for a worker none hosts: since when, and what to do."""
    if not inv.HasField("no_worker_since"):
        return ""
    return (
        f"no running worker hosts {inv.handler} (since {ts(inv, 'no_worker_since', ms=True)}, "
        f"{ago(inv, 'no_worker_since')}); start one with `durable worker --module <module>`"
    )


def version_text(inv: types_pb2.Invocation) -> str:
    """Which code started it, whether it stays there, and which runs the current attempt."""
    if not inv.version:
        return ""
    text = f"{inv.version} (pinned)" if inv.pinned else f"started on {inv.version}"
    if inv.attempt_version and inv.attempt_version != inv.version:
        text += f"; attempt {inv.attempt} on {inv.attempt_version}"
    return text
