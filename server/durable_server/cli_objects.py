"""``durable`` commands for virtual objects and workflows, and for ending invocations:
``state``, ``set-state``, ``resolve-promise``, ``reject-promise``, ``kill``, ``purge``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from typing import Any

from durable.contract import Client, status_name, to_payload
from durable.v1 import control_pb2, types_pb2
from durable_server._tables import format_table
from durable_server.cli_render import json_arg, print_json, report

_Command = Callable[[Client, argparse.Namespace], Awaitable[int]]
_AddCommand = Callable[[str, _Command, str], argparse.ArgumentParser]


def add_object_commands(command: _AddCommand) -> None:
    state = command("state", _cmd_state, "show the state of a virtual object key or workflow id")
    state.add_argument("object", metavar="OBJECT", help="object or workflow name")
    state.add_argument("key", metavar="KEY")
    edit = command("set-state", _cmd_set_state, "edit a key's state (all changes at once)")
    edit.add_argument("object", metavar="OBJECT")
    edit.add_argument("key", metavar="KEY")
    edit.add_argument("values", metavar="NAME=JSON", nargs="*", help="entries to set")
    edit.add_argument("--clear", action="append", default=[], metavar="NAME", help="remove")
    edit.add_argument("--clear-all", action="store_true", help="remove every entry first")
    resolve = command("resolve-promise", _cmd_resolve_promise, "resolve a workflow's promise")
    resolve.add_argument("handler", metavar="HANDLER", help="the workflow's run handler")
    resolve.add_argument("key", metavar="WORKFLOW_ID")
    resolve.add_argument("promise", metavar="PROMISE")
    resolve.add_argument("value", metavar="VALUE_JSON", nargs="?", help="JSON (default null)")
    reject = command("reject-promise", _cmd_reject_promise, "reject a workflow's promise")
    reject.add_argument("handler", metavar="HANDLER")
    reject.add_argument("key", metavar="WORKFLOW_ID")
    reject.add_argument("promise", metavar="PROMISE")
    reject.add_argument("reason", metavar="REASON")
    kill = command("kill", _cmd_kill, "end an invocation now, CANCELLED, without compensation")
    kill.add_argument("invocation_id", metavar="ID")
    kill.add_argument("--reason", default="", help="stored as its failure message")
    purge = command("purge", _cmd_purge, "delete an ended invocation (frees a workflow id)")
    purge.add_argument("invocation_id", metavar="ID")


def _show_state(args: argparse.Namespace, state: dict[str, Any]) -> None:
    if args.json:  # the response message, as for every other command
        print_json(
            control_pb2.GetObjectStateResponse(
                entries=[
                    types_pb2.StateEntry(name=name, value=to_payload(value))
                    for name, value in sorted(state.items())
                ]
            )
        )
        return
    rows = [(name, json.dumps(value)) for name, value in sorted(state.items())]
    print(format_table(("NAME", "VALUE"), rows) if rows else "(no state)")


async def _cmd_state(client: Client, args: argparse.Namespace) -> int:
    _show_state(args, await client.get_state(args.object, args.key))
    return 0


async def _cmd_set_state(client: Client, args: argparse.Namespace) -> int:
    values: dict[str, Any] = {}
    for item in args.values:
        name, sep, text = item.partition("=")
        if not sep or not name:
            args.parser.error(f"{item!r} is not NAME=JSON")
        values[name] = json_arg(args, text, f"the value of {name}")
    state = await client.set_state(
        args.object, args.key, values, clear=args.clear, clear_all=args.clear_all
    )
    _show_state(args, state)
    return 0


async def _cmd_resolve_promise(client: Client, args: argparse.Namespace) -> int:
    value = json_arg(args, args.value, "VALUE_JSON")
    run_id = await client.resolve_promise(args.handler, args.key, args.promise, value)
    return report(
        args,
        control_pb2.ResolvePromiseResponse(invocation_id=run_id),
        f"resolved {args.promise!r}; workflow run {run_id} continues",
    )


async def _cmd_reject_promise(client: Client, args: argparse.Namespace) -> int:
    run_id = await client.reject_promise(args.handler, args.key, args.promise, args.reason)
    return report(
        args,
        control_pb2.RejectPromiseResponse(invocation_id=run_id),
        f"rejected {args.promise!r}; workflow run {run_id} sees the failure",
    )


async def _cmd_kill(client: Client, args: argparse.Namespace) -> int:
    summary = (await client.kill(args.invocation_id, args.reason)).raw
    return report(
        args,
        control_pb2.KillResponse(invocation=summary),
        f"killed {summary.invocation_id}: {status_name(summary.status)}",
    )


async def _cmd_purge(client: Client, args: argparse.Namespace) -> int:
    await client.purge(args.invocation_id)
    return report(
        args,
        control_pb2.PurgeResponse(invocation_id=args.invocation_id),
        f"purged {args.invocation_id}",
    )
