"""The ``durable`` CLI and the client, without an engine: tables, status parsing, exit codes,
and the views rendered from a fake ``DurableControl`` servicer served in-process."""

from __future__ import annotations

import argparse
import json
import socket
import sys
import types
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from durable._client import Client, parse_status, status_name
from durable._payloads import to_payload
from durable.errors import (
    InvocationCancelledError,
    InvocationFailedError,
    NotFoundError,
    ResultTimeoutError,
    RPCError,
)
from durable.v1 import control_pb2, control_pb2_grpc, types_pb2
from durable_server import cli
from durable_server._tables import format_fields, format_table, truncate

S = types_pb2.InvocationStatus

# ---------------------------------------------------------------------------------- tables


def test_table_sizes_columns_and_underlines_the_header() -> None:
    out = format_table(
        ("ID", "HANDLER", "N"), [("inv_1", "shop/checkout", 3), ("inv_22", "a/b", 12)]
    )
    assert out.splitlines() == [
        "ID      HANDLER         N",
        "------  -------------  --",
        "inv_1   shop/checkout   3",
        "inv_22  a/b            12",
    ]


def test_table_right_aligns_numbers_only() -> None:
    out = format_table(("A", "B"), [("1", 1), ("22", None)])
    # "A" holds strings (left-aligned), "B" numbers (right-aligned; None is blank).
    assert out.splitlines()[2:] == ["1   1", "22"]


def test_table_truncates_and_flattens_cells() -> None:
    out = format_table(("X",), [("a" * 10,), ("line1\nline2\tend",)], max_width=6)
    assert out.splitlines()[2:] == ["aaaaa…", "line1…"]
    assert format_table(("X",), [("line1\nline2",)]).splitlines()[2] == "line1 line2"


def test_table_without_rows_is_just_the_header() -> None:
    assert format_table(("ID", "STATUS"), []) == "ID  STATUS\n--  ------"


def test_table_has_no_trailing_spaces() -> None:
    out = format_table(("A", "LONG HEADER"), [("x", "")])
    assert all(line == line.rstrip() for line in out.splitlines())


def test_table_rejects_ragged_rows() -> None:
    with pytest.raises(ValueError, match="row 0 has 1 cells, expected 2"):
        format_table(("A", "B"), [("x",)])


def test_fields_align_labels_and_skip_blanks() -> None:
    out = format_fields([("invocation", "inv_1"), ("key", ""), ("status", "RUNNING"), ("n", 0)])
    assert out.splitlines() == ["invocation  inv_1", "status      RUNNING", "n           0"]
    assert format_fields([("a", "")], skip_blank=False) == "a"


def test_truncate() -> None:
    assert truncate("abc", 3) == "abc"
    assert truncate("abcd", 3) == "ab…"
    assert truncate("abcd", 0) == ""


# ---------------------------------------------------------------------------------- status


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("running", S.INVOCATION_STATUS_RUNNING),
        ("RUNNING", S.INVOCATION_STATUS_RUNNING),
        ("Completed", S.INVOCATION_STATUS_COMPLETED),
        ("invocation_status_failed", S.INVOCATION_STATUS_FAILED),
        ("backing-off", S.INVOCATION_STATUS_BACKING_OFF),
        (" paused ", S.INVOCATION_STATUS_PAUSED),
        (8, S.INVOCATION_STATUS_CANCELLED),
    ],
)
def test_parse_status(text: str | int, expected: int) -> None:
    assert parse_status(text) == expected


@pytest.mark.parametrize("bad", ["unspecified", "runnin", "", 0, 99])
def test_parse_status_refuses_unknown_names(bad: str | int) -> None:
    with pytest.raises(ValueError, match="expected one of: pending, running"):
        parse_status(bad)


def test_status_name() -> None:
    assert status_name(S.INVOCATION_STATUS_BACKING_OFF) == "BACKING_OFF"
    assert status_name(0) == "UNSPECIFIED"
    assert status_name(42) == "UNKNOWN(42)"


# ------------------------------------------------------------------------------ exit codes


@pytest.mark.parametrize(
    "argv",
    [
        ["nope"],
        ["list", "--status", "bogus"],
        ["list", "--limit", "0"],
        ["list", "--limit", "1001"],
        ["invoke", "a/b", "{not json"],
        ["invoke", "a/b", "1", "--input-file", "x.json"],
        ["invoke", "a/b", "--input-file", "/nonexistent/input.json"],
        ["invoke", "a/b", "--timeout", "-1"],
        ["get"],
        [],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert capsys.readouterr().err  # argparse explains the problem


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert "invoke" in capsys.readouterr().out


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("argv", [["stats"], ["list"], ["get", "inv_1"], ["invoke", "a/b", "{}"]])
def test_unreachable_target_is_a_clean_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    target = f"127.0.0.1:{_closed_port()}"
    assert cli.main(["--target", target, *argv]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("error: UNAVAILABLE: ")
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_target_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DURABLE_TARGET", "example:1234")
    parser = cli.build_parser()
    assert parser.parse_args(["stats"]).target == "example:1234"
    assert parser.parse_args(["stats", "--target", "other:1"]).target == "other:1"
    assert parser.parse_args(["--target", "first:1", "stats"]).target == "first:1"
    assert parser.parse_args(["--json", "stats"]).json is True
    assert parser.parse_args(["stats", "--json"]).json is True
    assert parser.parse_args(["stats"]).json is False


def test_engine_commands_are_added_when_the_module_exists(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    async def run_dev(args: argparse.Namespace) -> int:
        calls.append(args.nats)
        return 3

    def add_engine_commands(sub: Any) -> None:
        dev = sub.add_parser("dev", help="run everything in one process")
        dev.add_argument("--nats", default="embedded")
        dev.set_defaults(func=run_dev)

    fake = types.ModuleType("durable_server.process")
    fake.add_engine_commands = add_engine_commands  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "durable_server.process", fake)
    assert cli.main(["dev", "--nats", "x"]) == 3
    assert calls == ["x"]


#@@REAL@@

async def test_client_connect_fails_fast_on_unreachable_target() -> None:
    with pytest.raises(RPCError) as exc:
        await Client.connect(f"127.0.0.1:{_closed_port()}", timeout=0.3)
    assert exc.value.code is grpc.StatusCode.UNAVAILABLE
