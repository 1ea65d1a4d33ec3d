"""The read-only views of the ``durable`` command: ``info``, ``get``, ``list``, ``stats`` and
``handlers``, as tables and field lists for people (or the response as JSON with --json),
and the progress line long listings draw on a terminal."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import time
from typing import Any, TextIO

from google.protobuf import json_format

from durable.contract import Client, is_terminal, preview, status_name
from durable.v1 import control_pb2, types_pb2
from durable_server._tables import format_fields, format_table
from durable_server.cli_render import ago as _ago
from durable_server.cli_render import enum_name as _enum_name
from durable_server.cli_render import failure_text as _failure_text
from durable_server.cli_render import print_json as _print_json
from durable_server.cli_render import result_text as _result_text
from durable_server.cli_render import step_text as _step_text
from durable_server.cli_render import ts as _ts
from durable_server.cli_render import waits_text
from durable_server.cli_steps import (
    no_worker_text,
    step_name,
    step_summary,
    step_took,
    version_text,
)
from durable_server.version import engine_version

#: Most invocations one ListWorkflows page holds.
MAX_PAGE = 1000


async def cmd_info(client: Client, args: argparse.Namespace) -> int:
    info = (await client.server_info()).raw
    if args.json:
        _print_json(info)
        return 0
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
    return 0


async def cmd_get(client: Client, args: argparse.Namespace) -> int:
    view = await client.get(args.invocation_id)
    # Rendered from the messages, as --json prints them.
    response = control_pb2.GetWorkflowResponse(
        invocation=view.raw, journal=[e.raw for e in view.journal]
    )
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
        ("version", version_text(inv)),
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
                recorded_text(e),
            )
            for e in response.journal
        ]
        print()
        headers = ("INDEX", "KIND", "NAME", "SUMMARY", "TOOK", "ATTEMPT", "RECORDED AT")
        print(format_table(headers, rows))
    return 0


#: Below this, a store after the worker made the entry is ordinary latency, not worth a word.
_STORED_LATE_MS = 1000


_SINCE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_since_flag(p: argparse.ArgumentParser) -> None:
    """``--since WHEN``, read by :func:`since`."""
    p.add_argument(
        "--since",
        default="",
        metavar="WHEN",
        help="only invocations created since: a duration (30m, 12h, 7d) or an ISO time",
    )


def since(text: str) -> dt.datetime | None:
    """A `--since` value (a duration back from now, or an ISO time) as a time; None for
    none."""
    if not text:
        return None
    m = _SINCE.fullmatch(text.strip())
    if m:
        return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=float(m[1]) * _UNIT[m[2]])
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(
            f"error: --since {text!r} is neither a duration (30m, 12h, 7d) nor an ISO time"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def recorded_text(e: types_pb2.JournalEntry) -> str:
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


async def cmd_list(client: Client, args: argparse.Namespace) -> int:
    filters: dict[str, Any] = {
        "statuses": args.statuses,
        "handler": args.handler,
        "key": args.key,
        "service": args.service,
        "created_after": since(args.since),
    }
    if not args.all:
        page = (await client.list(**filters, page_size=args.limit, page_token=args.page_token)).raw
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
    progress = Progress(sys.stderr)
    while True:
        page = (
            await client.list(**filters, page_size=args.limit or MAX_PAGE, page_token=token)
        ).raw
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


async def cmd_stats(client: Client, args: argparse.Namespace) -> int:
    stats = (await client.stats()).raw
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
    if stats.by_service:
        # The backlog each service waits on, beside who serves it: queued work with no
        # live worker runs only once a worker for it comes back.
        waiting = (
            types_pb2.INVOCATION_STATUS_PENDING,
            types_pb2.INVOCATION_STATUS_RUNNING,
            types_pb2.INVOCATION_STATUS_SUSPENDED,
        )
        rows = []
        for s in stats.by_service:
            counts = {c.status: c.count for c in s.by_status}
            serving = str(s.live_workers)
            if not s.live_workers and s.HasField("no_worker_since"):
                serving += f" (none since {_ts(s, 'no_worker_since')})"
            rows.append((s.service, s.total, *(counts.get(w, 0) for w in waiting), serving))
        print()
        print(
            format_table(("SERVICE", "TOTAL", "PENDING", "RUNNING", "SUSPENDED", "WORKERS"), rows)
        )
    return 0


async def cmd_handlers(client: Client, args: argparse.Namespace) -> int:
    handlers = [h.raw for h in await client.handlers()]
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
            ", ".join(h.versions) + (" (pinned)" if h.pinned else ""),
            h.description,
        )
        for h in handlers
    ]
    headers = (
        "NAME", "KIND", "INPUT", "OUTPUT", "WORKERS", "LAST SEEN", "VERSIONS", "DESCRIPTION"
    )  # fmt: skip
    print(format_table(headers, rows))
    return 0


# ---------------------------------------------------------------------------------- rendering


class Progress:
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
