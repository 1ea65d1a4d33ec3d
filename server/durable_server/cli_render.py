"""How the ``durable`` CLI renders messages, and its commands for waits from outside
(``watch``, ``resolve``, ``reject``), kept apart from ``cli`` to keep each module short."""

from __future__ import annotations

import argparse
import json
import shlex
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from durable.contract import Client, is_terminal, preview, status_name, value_to_json_bytes
from durable.v1 import control_pb2, types_pb2
from durable_server._tables import format_fields

_Command = Callable[[Client, argparse.Namespace], Awaitable[int]]
_AddCommand = Callable[[str, _Command, str], argparse.ArgumentParser]
C = control_pb2


def print_json(message: Message) -> None:
    print(json_format.MessageToJson(message, indent=2))


def ts(message: Message, field: str, *, ms: bool = False) -> str:
    """Format a Timestamp field as UTC text, or ``""`` when it is unset."""
    if not message.HasField(field):
        return ""
    stamp: datetime = getattr(message, field).ToDatetime()
    text = stamp.strftime("%Y-%m-%d %H:%M:%S")
    if ms:
        text += f".{stamp.microsecond // 1000:03d}"
    return text + "Z"


def ago(message: Message, field: str, now_ns: int | None = None) -> str:
    """A Timestamp field relative to now, as tables show times ("5s ago", "in 2m"), or
    ``"-"`` when unset; ``durable get`` shows the absolute time."""
    if not message.HasField(field):
        return "-"
    now_ns = time.time_ns() if now_ns is None else now_ns
    delta_s = (now_ns - getattr(message, field).ToNanoseconds()) / 1e9
    if abs(delta_s) < 1:
        return "now"
    text = _span(abs(delta_s), precise=False)
    return f"{text} ago" if delta_s > 0 else f"in {text}"


def took(start: Timestamp, end: Timestamp) -> str:
    """How long from ``start`` to ``end``: "12ms", "1.5s", "2m03s", "1h05m"."""
    return _span(max(end.ToNanoseconds() - start.ToNanoseconds(), 0) / 1e9, precise=True)


def _span(seconds: float, *, precise: bool) -> str:
    if precise and seconds < 0.001:
        return "<1ms"
    if precise and seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s" if precise and seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s" if precise else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m" if precise else f"{hours}h"
    return f"{hours // 24}d{hours % 24:02d}h" if precise else f"{hours // 24}d"


def enum_name(enum: Any, value: int, prefix: str) -> str:
    try:
        return str(enum.Name(value)).removeprefix(prefix)
    except ValueError:
        return f"UNKNOWN({value})"


def failure_text(failure: types_pb2.Failure) -> str:
    text = f"{failure.error_type}: {failure.message}" if failure.error_type else failure.message
    return f"{text} (code {failure.code})" if failure.code else text


def result_text(result: types_pb2.Result, *, full: bool = False) -> str:
    kind = result.WhichOneof("outcome")
    if kind == "failure":
        return "failed: " + failure_text(result.failure)
    if kind is None:
        return "null"
    if full and result.value.WhichOneof("value") == "json":
        return value_to_json_bytes(result.value.json).decode()
    return preview(result.value, 200)


def step_text(step: types_pb2.StepRef) -> str:
    if step.kind == types_pb2.STEP_KIND_UNSPECIFIED and not step.name:
        return f"#{step.index}"
    kind = enum_name(types_pb2.StepKind, step.kind, "STEP_KIND_")
    return f"#{step.index} {kind} {step.name}".rstrip()


def waits_text(waits: Iterable[types_pb2.WaitTarget]) -> str:
    """One line per thing a suspended invocation waits for."""
    lines = []
    for w in waits:
        if w.kind == types_pb2.WAIT_KIND_TIMER:
            lines.append(f"timer (step {w.step_index}) due {ts(w, 'due_at', ms=True)}")
        elif w.kind == types_pb2.WAIT_KIND_AWAKEABLE:
            lines.append(f"awakeable {w.awakeable_id} (durable resolve {w.awakeable_id} VALUE)")
        else:
            lines.append(f"call {w.invocation_id} (step {w.step_index})")
    return "\n".join(lines)


def add_wait_commands(command: _AddCommand) -> None:
    """``watch``, ``resolve`` and ``reject``."""
    watch = command("watch", _cmd_watch, "follow an invocation's steps and status until it ends")
    watch.add_argument("invocation_id", metavar="ID")
    resolve = command("resolve", _cmd_resolve, "resolve an awakeable with a JSON value")
    resolve.add_argument("awakeable_id", metavar="AWAKEABLE_ID")
    resolve.add_argument("value", metavar="VALUE_JSON", nargs="?", help="JSON (default null)")
    reject = command("reject", _cmd_reject, "reject an awakeable: the handler sees the reason")
    reject.add_argument("awakeable_id", metavar="AWAKEABLE_ID")
    reject.add_argument("reason", metavar="REASON")


def json_arg(args: argparse.Namespace, text: str | None, what: str) -> Any:
    """A JSON command-line argument (None when absent); a usage error (exit 2) when bad,
    saying how to write it when the shell is the likely culprit."""
    try:
        return json.loads(text) if text is not None else None
    except ValueError as exc:
        assert text is not None
        args.parser.error(f"{what} is not valid JSON: {exc}{quoting_hint(text)}")


def quoting_hint(text: str) -> str:
    """How to quote ``text`` for the shell when it looks like quotes were lost on the way:
    a bare word meant as a JSON string, or an object whose keys lost their double quotes."""
    stripped = text.strip()
    if stripped and stripped[0] not in '{["-0123456789' and stripped not in _LITERALS:
        return f"; a JSON string needs double quotes inside shell quotes: {_quoted(stripped)}"
    if stripped.startswith(("{", "[")) and '"' not in stripped:
        return (
            "; JSON keys and strings need double quotes, and the whole value single quotes "
            """for the shell, e.g. '{"name": "ada"}'"""
        )
    return ""


_LITERALS = ("true", "false", "null")


def _quoted(word: str) -> str:
    return shlex.quote(json.dumps(word))


def report(args: argparse.Namespace, response: Message, text: str) -> int:
    """Print a command's response: as protobuf JSON with --json, else as ``text``."""
    if args.json:
        print_json(response)
    else:
        print(text)
    return 0


async def _cmd_resolve(client: Client, args: argparse.Namespace) -> int:
    value = json_arg(args, args.value, "VALUE_JSON")
    invocation_id = await client.resolve_awakeable(args.awakeable_id, value)
    return report(
        args,
        C.ResolveAwakeableResponse(invocation_id=invocation_id),
        f"resolved {args.awakeable_id}; invocation {invocation_id} continues",
    )


async def _cmd_reject(client: Client, args: argparse.Namespace) -> int:
    invocation_id = await client.reject_awakeable(args.awakeable_id, args.reason)
    return report(
        args,
        C.RejectAwakeableResponse(invocation_id=invocation_id),
        f"rejected {args.awakeable_id}; invocation {invocation_id} sees the failure",
    )


async def _cmd_watch(client: Client, args: argparse.Namespace) -> int:
    """Each line is stamped with when it happened: a step when it was journaled, a status
    when the record changed (``updated_at``), the end when it ended; the end once, last."""
    failed = False
    async for seen in client.watch(args.invocation_id):
        event = seen.raw
        if args.json:
            print(json_format.MessageToJson(event, indent=None))
            continue
        inv = event.invocation
        if event.kind == C.WATCH_EVENT_KIND_SNAPSHOT:
            print(format_fields([("invocation", inv.invocation_id), ("handler", inv.handler)]))
        for step in event.steps:
            kind = enum_name(types_pb2.StepKind, step.kind, "STEP_KIND_")
            print(
                f"{ts(step, 'recorded_at', ms=True) or _now()}  #{step.index} {kind} "
                f"{step.name}  {step.summary}"
            )
        if event.kind in (C.WATCH_EVENT_KIND_SNAPSHOT, C.WATCH_EVENT_KIND_STATUS):
            if is_terminal(inv.status):
                continue  # the ENDED event that follows says it, once
            line = f"{ts(inv, 'updated_at', ms=True) or _now()}  {status_name(inv.status)}"
            waits = waits_text(inv.waiting_for)
            print(line + (f": {waits.replace(chr(10), '; ')}" if waits else ""))
        if event.kind == C.WATCH_EVENT_KIND_ENDED:
            failed = inv.result.WhichOneof("outcome") == "failure"
            when = ts(inv, "ended_at", ms=True) or ts(inv, "updated_at", ms=True) or _now()
            print(f"{when}  {status_name(inv.status)}  {result_text(inv.result, full=True)}")
    return 1 if failed else 0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
