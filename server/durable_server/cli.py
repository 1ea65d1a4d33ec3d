"""The ``durable`` command: drive the engine's control plane from a terminal or a script.

Client commands (``invoke``, ``get``, ``list``, ``stats``, ``pause``, ``resume``, ``cancel``,
``handlers``) talk to ``DurableControl`` at ``--target`` (env ``DURABLE_TARGET``) through
:class:`durable._client.Client`. They print readable views and tables, or with ``--json``
the response as protobuf JSON (a JSON list for ``list --all``). This module holds the
parser, exit codes, error reporting and the commands that change things (invoke, pause,
resume, cancel); the read-only views are in ``cli_views``, awakeables and watch in
``cli_render``, state, promises, kill and purge in ``cli_objects``.
(Slightly over ~400 lines: the parser declares every command's flags in one place, so
``durable --help`` and the docs can be checked against one table.)

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
from typing import Any, NoReturn

from durable.contract import DEFAULT_TARGET, Client, is_terminal, parse_status, status_name
from durable.errors import DurableError, InvocationFailedError, ResultTimeoutError, RPCError
from durable.v1 import control_pb2, types_pb2
from durable_server._tables import format_fields
from durable_server.cli_objects import add_object_commands
from durable_server.cli_render import add_wait_commands, json_arg
from durable_server.cli_render import print_json as _print_json
from durable_server.cli_render import result_text as _result_text
from durable_server.cli_replay import add_replay_flags, cmd_replay
from durable_server.cli_security import add_client_security_flags, client_security
from durable_server.cli_views import (
    MAX_PAGE,
    add_since_flag,
    cmd_get,
    cmd_handlers,
    cmd_info,
    cmd_list,
    cmd_stats,
)
from durable_server.console import DEFAULT_CONSOLE, run_console
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
        async with Client(args.target, unavailable_retry=None, **client_security(args)) as client:
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

    command("info", cmd_info, "show which engine answers at --target: versions and settings")

    get = command("get", cmd_get, "show one invocation with its journal and current step")
    get.add_argument("invocation_id", metavar="ID")

    lst = command("list", cmd_list, "list invocations, newest first")
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
    lst.add_argument("--service", default="", metavar="S", help="only handlers of this service")
    add_since_flag(lst)
    lst.add_argument("--limit", type=_page_size, default=0, metavar="N", help="page size, 1-1000")
    lst.add_argument("--page-token", default="", metavar="T", help="page to show")
    lst.add_argument("--all", action="store_true", help="follow every page to the end")

    command("stats", cmd_stats, "count invocations by status and by handler")

    console = command(
        "console",
        cmd_console,
        "serve the web console: a DurableControl client in the browser (--target, --token)",
    )
    console.add_argument(
        "--listen", default=DEFAULT_CONSOLE, metavar="HOST:PORT", help="where the page is served"
    )
    console.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --listen while holding a --token (anyone reaching the "
        "console then acts with that key)",
    )

    replay = command(
        "replay", cmd_replay, "replay stored journals against code, before deploying it"
    )
    add_replay_flags(replay)

    pause = command("pause", _cmd_pause, "pause an invocation at its next step")
    pause.add_argument("invocation_id", metavar="ID")
    pause.add_argument("--reason", default="", help="shown in `durable get`")
    resume = command("resume", _cmd_resume, "resume a paused invocation")
    resume.add_argument("invocation_id", metavar="ID")
    cancel = command("cancel", _cmd_cancel, "cancel an invocation (its handler can compensate)")
    cancel.add_argument("invocation_id", metavar="ID")
    cancel.add_argument("--reason", default="", help="passed to the handler")

    command("handlers", cmd_handlers, "list the handlers registered by running workers")
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
    add_client_security_flags(parser, target is argparse.SUPPRESS)


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
    if not 1 <= value <= MAX_PAGE:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_PAGE}, got {value}")
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
            status=types_pb2.InvocationStatus.ValueType(handle.status),
            result=outcome,
        )
        if handle.no_worker_since is not None:
            response.no_worker_since.FromDatetime(handle.no_worker_since)
        _print_json(response)
        return _invoke_exit(args, handle.status, failed)
    fields: list[tuple[str, object]] = [
        ("invocation", handle.id),
        ("status", status_name(handle.status)),
        ("already existed", "yes (idempotency key matched)" if handle.already_existed else ""),
    ]
    if outcome is None and handle.no_worker_since is not None:
        fields.append(("worker", "none serves it right now; it waits in the queue for one"))
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


async def cmd_console(client: Client, args: argparse.Namespace) -> int:
    await run_console(args.target, args.listen, client_security(args), args.insecure)
    return 0


async def _cmd_pause(client: Client, args: argparse.Namespace) -> int:
    summary = (await client.pause(args.invocation_id, args.reason)).raw
    if summary.status == types_pb2.INVOCATION_STATUS_PAUSED:
        return _report(args, summary, "paused")
    return _report(args, summary, "pause requested; it stops at its next step")


async def _cmd_resume(client: Client, args: argparse.Namespace) -> int:
    summary = (await client.resume(args.invocation_id)).raw
    return _report(args, summary, "resumed")


async def _cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    summary = (await client.cancel(args.invocation_id, args.reason)).raw
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


if __name__ == "__main__":
    sys.exit(main())
