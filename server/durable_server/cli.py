"""The ``durable`` command: drive the engine's control plane from a terminal or a script.

Client commands (``invoke``, ``get``, ``list``, ``stats``, ``pause``, ``resume``, ``cancel``,
``handlers``) talk to ``DurableControl`` at ``--target`` (env ``DURABLE_TARGET``) through
:class:`durable._client.Client`. They print readable views and tables, or with ``--json``
the response as protobuf JSON (a JSON list for ``list --all``).

Exit codes (``EXIT_*``), so that a script can tell the outcomes apart: 0 success (for an
awaited invocation: it COMPLETED), 1 the call was refused (``error: <STATUS CODE>:
<message>`` on stderr) or the awaited invocation FAILED, 2 usage error, 3 the awaited
invocation was CANCELLED, 4 it has not ended yet (``--timeout`` ran out, or it is paused), 5
no engine answers at ``--target``, 130 interrupted. With ``--json`` an error is one JSON
object on stderr: ``{"error": {"code": ..., "message": ...}}``.

The engine commands (``dev``, ``server``, ``worker``) live in ``durable_server.process``,
imported only when the parser is built: ``process.add_engine_commands(subparsers)`` adds
them with a ``func`` default taking the parsed ``argparse.Namespace`` and returning an exit
code (``int`` or ``None``, or an awaitable of one, which is run with ``asyncio.run``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn, TextIO

from google.protobuf import json_format

from durable._client import DEFAULT_TARGET, Client, is_terminal, parse_status, status_name
from durable._payloads import preview
from durable.errors import DurableError, InvocationFailedError, ResultTimeoutError, RPCError
from durable.v1 import control_pb2, types_pb2
from durable_server._tables import format_fields, format_table
from durable_server.cli_objects import add_object_commands
from durable_server.cli_render import add_wait_commands, json_arg, waits_text
from durable_server.cli_render import ago as _ago
from durable_server.cli_render import enum_name as _enum_name
from durable_server.cli_render import failure_text as _failure_text
from durable_server.cli_render import print_json as _print_json
from durable_server.cli_render import result_text as _result_text
from durable_server.cli_render import step_text as _step_text
from durable_server.cli_render import ts as _ts
from durable_server.cli_steps import no_worker_text, step_name, step_summary, step_took
from durable_server.version import engine_version

__all__ = ["build_parser", "main"]

_Command = Callable[[Client, argparse.Namespace], Awaitable[int]]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CANCELLED = 3
EXIT_NOT_ENDED = 4
EXIT_NO_ENGINE = 5
EXIT_INTERRUPTED = 130
_MAX_PAGE = 1000


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``durable`` command on ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parse(parser, words)
        if getattr(args, "prepare", None) is not None:
            args.prepare(args)
    except _UsageError as exc:
        return _usage_error(exc, words)
    except SystemExit as exc:  # argparse's --help (0) and --version
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        if getattr(args, "func", None) is not None:  # an engine command
            outcome = args.func(args)
            if inspect.isawaitable(outcome):
                outcome = asyncio.run(_await(outcome))
            return int(outcome or 0)
        if getattr(args, "run", None) is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        return asyncio.run(_run_client(args))
    except _UsageError as exc:  # an argument only a command's run reads (set-state values)
        return _usage_error(exc, words)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `durable list --all | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED


def _usage_error(exc: _UsageError, words: list[str]) -> int:
    """Report a command line that cannot run: argparse's usage and message, or with --json
    one JSON object like every other error."""
    if "--json" in words[: words.index("--") if "--" in words else None]:
        print(json.dumps({"error": {"code": "USAGE", "message": exc.message}}), file=sys.stderr)
    else:
        exc.parser.print_usage(sys.stderr)
        print(f"{exc.parser.prog}: error: {exc.message}", file=sys.stderr)
    return EXIT_USAGE


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse like ``parse_args``, also when flags come between positionals.

    argparse matches positionals in runs: in ``invoke H --no-wait '{...}'`` it fills the
    optional INPUT_JSON with nothing while reading ``H``, and then has no place for the
    JSON. What is left over fills the command's optional positionals still empty, in order.
    """
    args, extras = parser.parse_known_args(argv)
    if not extras:
        return args
    cmd: argparse.ArgumentParser = getattr(args, "parser", None) or parser
    for action in cmd._actions:
        if action.option_strings or action.nargs not in ("?", "*"):
            continue
        if getattr(args, action.dest, None) not in (None, []):
            continue
        taken: list[str] = []
        while extras and not _is_flag(extras[0]) and (action.nargs == "*" or not taken):
            taken.append(extras.pop(0))
        if taken:
            setattr(args, action.dest, taken if action.nargs == "*" else taken[0])
    if extras:
        cmd.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def _is_flag(arg: str) -> bool:
    """An option, not a value (a negative number is a JSON value)."""
    if not arg.startswith("-") or arg == "-":
        return False
    try:
        float(arg)
    except ValueError:
        return True
    return False


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


async def _run_client(args: argparse.Namespace) -> int:
    command: _Command = args.run
    try:
        # A person at a terminal retries; a script gets the answer at once.
        async with Client(args.target, unavailable_retry=None) as client:
            return await command(client, args)
    except RPCError as exc:
        unreachable = _unreachable(exc, args.target)
        if unreachable:
            _error(args, "UNAVAILABLE", unreachable)
            return EXIT_NO_ENGINE
        _error(args, exc.code.name, exc.details, exc.reason, exc.metadata)
        return EXIT_FAILED
    except DurableError as exc:
        _error(args, "", str(exc))
        return EXIT_FAILED


def _unreachable(exc: RPCError, target: str) -> str:
    """The one line for "nothing listens at --target", or "" for any other failure."""
    details = exc.details or ""
    if exc.code.name != "UNAVAILABLE" or "connect" not in details.lower():
        return ""
    reason = "unreachable"
    if "refused" in details.lower():
        reason = "connection refused"
    elif "resolve" in details.lower() or "dns" in details.lower():
        reason = "host name not resolved"
    return (
        f"no engine at {target} ({reason}); start one with `make run` or set "
        "--target / DURABLE_TARGET"
    )


def _error(
    args: argparse.Namespace,
    code: str,
    message: str,
    reason: str = "",
    metadata: dict[str, str] | None = None,
) -> None:
    """An error on stderr: ``error: CODE: message``, or with --json one JSON object that
    also names the engine's reason and its metadata, when it gave them."""
    if getattr(args, "json", False):
        error: dict[str, object] = {"code": code or "ERROR", "message": message}
        if reason:
            error["reason"] = reason
            error["metadata"] = metadata or {}
        print(json.dumps({"error": error}), file=sys.stderr)
    else:
        print(f"error: {code}: {message}" if code else f"error: {message}", file=sys.stderr)


# ------------------------------------------------------------------------------------ parser


class _UsageError(Exception):
    """A command line that cannot run, raised instead of argparse's print-and-exit so that
    ``main`` can report it as text or, with --json, as JSON."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser
        self.message = message


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors raised as ``_UsageError`` (subcommands inherit the class)."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(self, message)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``durable`` command, engine commands included."""
    parser = _Parser(
        prog="durable",
        description="Durable execution on NATS JetStream: run the engine, drive invocations.",
    )
    _add_global_flags(parser, os.environ.get("DURABLE_TARGET") or DEFAULT_TARGET, False)
    parser.add_argument(
        "--version",
        action="version",
        version=f"durable {engine_version()}",
        help="print the version",
    )
    # The same flags are accepted after the command too; SUPPRESS keeps the values given
    # before it (separate action objects: set_defaults would otherwise leak between them).
    common = _Parser(add_help=False)
    _add_global_flags(common, argparse.SUPPRESS, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, run: _Command, summary: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, parents=[common], help=summary, description=summary)
        cmd.set_defaults(run=run, parser=cmd)
        return cmd

    invoke = command("invoke", _cmd_invoke, "start an invocation and (by default) await it")
    invoke.add_argument("handler", metavar="HANDLER", help='handler name, "<service>/<handler>"')
    invoke.add_argument("input", metavar="INPUT_JSON", nargs="?", help="input as JSON text")
    invoke.add_argument("--input-file", metavar="F", help="read the input JSON from F (- = stdin)")
    invoke.add_argument("--key", default="", help="object key or workflow id")
    invoke.add_argument("--idempotency-key", default="", metavar="K", help="deduplication key")
    invoke.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="await the result (default: wait)",
    )
    invoke.add_argument(
        "--timeout", type=_non_negative, metavar="S", help="longest wait in seconds"
    )
    invoke.set_defaults(prepare=_prepare_invoke)

    command("info", _cmd_info, "show which engine answers at --target: versions and settings")

    get = command("get", _cmd_get, "show one invocation with its journal and current step")
    get.add_argument("invocation_id", metavar="ID")

    lst = command("list", _cmd_list, "list invocations, newest first")
    lst.add_argument(
        "--status",
        dest="statuses",
        action="extend",
        nargs="+",
        type=_status_arg,
        default=[],
        metavar="S",
        help="only these statuses (e.g. running failed)",
    )
    lst.add_argument("--handler", default="", metavar="H", help="only this handler")
    lst.add_argument("--key", default="", metavar="K", help="only this object key / workflow id")
    lst.add_argument("--limit", type=_page_size, default=0, metavar="N", help="page size, 1-1000")
    lst.add_argument("--page-token", default="", metavar="T", help="page to show")
    lst.add_argument("--all", action="store_true", help="follow every page to the end")

    command("stats", _cmd_stats, "count invocations by status and by handler")

    pause = command("pause", _cmd_pause, "pause an invocation at its next step")
    pause.add_argument("invocation_id", metavar="ID")
    pause.add_argument("--reason", default="", help="shown in `durable get`")
    resume = command("resume", _cmd_resume, "resume a paused invocation")
    resume.add_argument("invocation_id", metavar="ID")
    cancel = command("cancel", _cmd_cancel, "cancel an invocation (its handler can compensate)")
    cancel.add_argument("invocation_id", metavar="ID")
    cancel.add_argument("--reason", default="", help="passed to the handler")

    command("handlers", _cmd_handlers, "list the handlers registered by running workers")
    add_wait_commands(command)
    add_object_commands(command)

    _add_engine_commands(sub)
    return parser


def _add_global_flags(parser: argparse.ArgumentParser, target: Any, as_json: Any) -> None:
    parser.add_argument(
        "--target",
        default=target,
        help=f"control plane address, host:port (env DURABLE_TARGET; default {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=as_json,
        help="print machine-readable JSON instead of tables",
    )


def _add_engine_commands(sub: argparse._SubParsersAction[_Parser]) -> None:
    try:
        process = importlib.import_module("durable_server.process")
    except ModuleNotFoundError as exc:
        if exc.name != "durable_server.process":
            raise
        return
    process.add_engine_commands(sub)


def _status_arg(text: str) -> types_pb2.InvocationStatus.ValueType:
    try:
        return parse_status(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _page_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= _MAX_PAGE:
        raise argparse.ArgumentTypeError(f"must be 1 to {_MAX_PAGE}, got {value}")
    return value


def _prepare_invoke(args: argparse.Namespace) -> None:
    """Read and parse the invocation input up front, so bad input is a usage error (2)."""
    parser: argparse.ArgumentParser = args.parser
    if args.input is not None and args.input_file is not None:
        parser.error("give the input either as INPUT_JSON or with --input-file, not both")
    source, text = "INPUT_JSON", args.input
    if args.input_file is not None:
        source = args.input_file
        try:
            if args.input_file == "-":
                text = sys.stdin.read()
            else:
                with open(args.input_file, encoding="utf-8") as f:
                    text = f.read()
        except OSError as exc:
            parser.error(f"cannot read input file: {exc}")
    args.input_value = json_arg(args, text, source)


# ---------------------------------------------------------------------------------- commands


async def _cmd_invoke(client: Client, args: argparse.Namespace) -> int:
    started = time.monotonic()
    handle = await client.invoke(
        args.handler,
        args.input_value,
        key=args.key,
        idempotency_key=args.idempotency_key,
        wait=args.wait,
        wait_timeout=args.timeout,
    )
    if args.wait and not handle.done:
        # The server answered before the end (its own wait limit): keep awaiting, push-based.
        remaining = None if args.timeout is None else args.timeout - (time.monotonic() - started)
        if remaining is None or remaining > 0:
            with contextlib.suppress(InvocationFailedError, ResultTimeoutError):
                await handle.result(remaining)  # the outcome is shown below from the handle
    outcome = handle.outcome
    failed = outcome is not None and outcome.WhichOneof("outcome") == "failure"
    if args.json:
        response = control_pb2.InvokeResponse(
            invocation_id=handle.id,
            already_existed=handle.already_existed,
            status=handle.status,
            result=outcome,
        )
        _print_json(response)
        return _invoke_exit(args, handle.status, failed)
    fields: list[tuple[str, object]] = [
        ("invocation", handle.id),
        ("status", status_name(handle.status)),
        ("already existed", "yes (idempotency key matched)" if handle.already_existed else ""),
    ]
    if outcome is not None:
        fields.append(("result", _result_text(outcome, full=True)))
    elif args.wait:
        fields.append(("result", f"not finished yet; see `durable get {handle.id}`"))
    print(format_fields(fields))
    return _invoke_exit(args, handle.status, failed)


def _invoke_exit(args: argparse.Namespace, status: int, failed: bool) -> int:
    """The exit code of ``invoke``: the outcome when it awaited one (see the module doc)."""
    if not args.wait:
        return EXIT_OK  # accepted is all that was asked
    if status == types_pb2.INVOCATION_STATUS_CANCELLED:
        return EXIT_CANCELLED
    if failed:
        return EXIT_FAILED
    if not is_terminal(status):
        return EXIT_NOT_ENDED
    return EXIT_OK


async def _cmd_info(client: Client, args: argparse.Namespace) -> int:
    info = await client.server_info()
    if args.json:
        _print_json(info)
        return EXIT_OK
    fields: list[tuple[str, object]] = [
        ("engine", f"durable {info.version} at {args.target}"),
        ("cli", f"durable {engine_version()}"),
        ("nats-server", info.nats_server_version),
        ("started", _ts(info, "started_at", ms=True)),
        ("prefix", info.prefix),
        ("replicas", info.replicas),
        ("max payload", f"{info.max_payload_bytes} bytes"),
        ("ack wait", f"{info.ack_wait_seconds:g} s"),
    ]
    print(format_fields(fields))
    return EXIT_OK


async def _cmd_get(client: Client, args: argparse.Namespace) -> int:
    response = await client.get(args.invocation_id)
    if args.json:
        _print_json(response)
        return 0
    inv = response.invocation
    status = status_name(inv.status)
    if inv.pause_requested:
        status += " (pause requested)"
    if inv.cancel_requested:
        status += " (cancel requested)"
    fields: list[tuple[str, object]] = [
        ("invocation", inv.invocation_id),
        ("handler", inv.handler),
        ("key", inv.key),
        ("status", status),
        ("status reason", inv.status_reason),
        ("attempt", inv.attempt),
        ("idempotency key", inv.idempotency_key),
        ("created", _ts(inv, "created_at", ms=True)),
        ("started", _ts(inv, "started_at", ms=True)),
        ("updated", _ts(inv, "updated_at", ms=True)),
        ("ended", _ts(inv, "ended_at", ms=True)),
        ("next attempt", _ts(inv, "next_attempt_at", ms=True)),
        ("last failure", _failure_text(inv.last_failure) if inv.HasField("last_failure") else ""),
        ("input", preview(inv.input, 200) if inv.HasField("input") else ""),
        ("result", _result_text(inv.result) if inv.HasField("result") else ""),
        ("current step", "" if is_terminal(inv.status) else _step_text(inv.current_step)),
        ("journal", f"{inv.journal_length} step{'' if inv.journal_length == 1 else 's'}"),
        ("waiting for", waits_text(inv.waiting_for)),
        ("scheduled for", _ts(inv, "scheduled_at", ms=True)),
        ("called by", inv.caller_id),
        ("no worker", no_worker_text(inv)),
    ]
    print(format_fields(fields))
    if response.journal:
        rows = [
            (
                e.index,
                _enum_name(types_pb2.StepKind, e.kind, "STEP_KIND_"),
                step_name(e),
                step_summary(e),
                step_took(e),
                e.attempt,
                _recorded_text(e),
            )
            for e in response.journal
        ]
        print()
        headers = ("INDEX", "KIND", "NAME", "SUMMARY", "TOOK", "ATTEMPT", "RECORDED AT")
        print(format_table(headers, rows))
    return 0


#: Below this, a store after the worker made the entry is ordinary latency, not worth a word.
_STORED_LATE_MS = 1000


def _recorded_text(e: types_pb2.JournalEntry) -> str:
    """When the worker made the entry, and how much later JetStream stored it when that
    differs noticeably (the entry was buffered across a NATS restart)."""
    made = _ts(e, "recorded_at", ms=True) or "-"
    if e.HasField("stored_at") and e.HasField("recorded_at"):
        late_ms = (e.stored_at.ToNanoseconds() - e.recorded_at.ToNanoseconds()) // 1_000_000
        if late_ms >= _STORED_LATE_MS:
            return f"{made} (stored +{late_ms / 1000:.1f}s)"
    return made


_LIST_HEADERS = ("ID", "HANDLER", "KEY", "STATUS", "ATTEMPT", "CREATED", "UPDATED")


def _summary_row(s: types_pb2.InvocationSummary) -> tuple[object, ...]:
    return (
        s.invocation_id,
        s.handler,
        s.key,
        status_name(s.status),
        s.attempt,
        _ago(s, "created_at"),
        _ago(s, "updated_at"),
    )


async def _cmd_list(client: Client, args: argparse.Namespace) -> int:
    filters: dict[str, Any] = {
        "statuses": args.statuses,
        "handler": args.handler,
        "key": args.key,
    }
    if not args.all:
        page = await client.list(**filters, page_size=args.limit, page_token=args.page_token)
        if args.json:
            _print_json(page)
            return 0
        if page.invocations:
            print(format_table(_LIST_HEADERS, [_summary_row(s) for s in page.invocations]))
        print(f"{len(page.invocations)} of {page.total_size} matching invocations")
        if page.next_page_token:
            print(f"next page: --page-token {page.next_page_token}")
        return 0
    found: list[types_pb2.InvocationSummary] = []
    token = args.page_token
    progress = _Progress(sys.stderr)
    while True:
        page = await client.list(**filters, page_size=args.limit or _MAX_PAGE, page_token=token)
        found.extend(page.invocations)
        token = page.next_page_token
        if not token:
            break
        progress.update(f"fetched {len(found)} of {page.total_size} invocations…")
    progress.done()
    if args.json:
        print(json.dumps([json_format.MessageToDict(s) for s in found], indent=2))
        return 0
    if found:
        print(format_table(_LIST_HEADERS, [_summary_row(s) for s in found]))
    print(f"{len(found)} invocation{'' if len(found) == 1 else 's'}")
    return 0


async def _cmd_stats(client: Client, args: argparse.Namespace) -> int:
    stats = await client.stats()
    if args.json:
        _print_json(stats)
        return 0
    print(f"total  {stats.total}\n")
    by_status = [(status_name(c.status), c.count) for c in stats.by_status]
    print(format_table(("STATUS", "COUNT"), by_status))
    if stats.by_handler:
        used = sorted({c.status for h in stats.by_handler for c in h.by_status})
        rows = []
        for h in stats.by_handler:
            counts = {c.status: c.count for c in h.by_status}
            rows.append((h.handler, h.total, *(counts.get(s, 0) for s in used)))
        print()
        print(format_table(("HANDLER", "TOTAL", *(status_name(s) for s in used)), rows))
    return 0


async def _cmd_pause(client: Client, args: argparse.Namespace) -> int:
    summary = await client.pause(args.invocation_id, args.reason)
    if summary.status == types_pb2.INVOCATION_STATUS_PAUSED:
        return _report(args, summary, "paused")
    return _report(args, summary, "pause requested; it stops at its next step")


async def _cmd_resume(client: Client, args: argparse.Namespace) -> int:
    summary = await client.resume(args.invocation_id)
    return _report(args, summary, "resumed")


async def _cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    summary = await client.cancel(args.invocation_id, args.reason)
    if summary.status == types_pb2.INVOCATION_STATUS_CANCELLED:
        return _report(args, summary, "cancelled")
    return _report(args, summary, "cancel requested; the handler sees it at its next step")


def _report(args: argparse.Namespace, summary: types_pb2.InvocationSummary, what: str) -> int:
    if args.json:
        _print_json(summary)
    else:
        status = status_name(summary.status)
        print(f"{summary.invocation_id}: {what} (status {status})")
    return 0


async def _cmd_handlers(client: Client, args: argparse.Namespace) -> int:
    handlers = await client.handlers()
    if args.json:
        _print_json(control_pb2.ListHandlersResponse(handlers=handlers))
        return 0
    if not handlers:
        print("no handlers registered (is a worker running?)")
        return 0
    rows = [
        (
            h.name,
            _enum_name(types_pb2.HandlerKind, h.kind, "HANDLER_KIND_"),
            h.input_type,
            h.output_type,
            h.live_workers,
            _ago(h, "last_seen"),
            h.description,
        )
        for h in handlers
    ]
    headers = ("NAME", "KIND", "INPUT", "OUTPUT", "WORKERS", "LAST SEEN", "DESCRIPTION")
    print(format_table(headers, rows))
    return 0


# ---------------------------------------------------------------------------------- rendering


class _Progress:
    """Progress line on stderr for long work, rewritten in place, on a terminal only: in a
    log or a pipe, frames would be noise (the result says what was done)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._last = 0.0
        self._shown = False

    def update(self, text: str) -> None:
        now = time.monotonic()
        if not self._tty or (now - self._last < 0.1 and self._shown):
            return
        self._last = now
        self._shown = True
        self._stream.write(f"\r\x1b[K{text}")
        self._stream.flush()

    def done(self) -> None:
        if self._shown and self._tty:
            self._stream.write("\r\x1b[K")
            self._stream.flush()


if __name__ == "__main__":
    sys.exit(main())
