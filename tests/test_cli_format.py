"""The ``durable`` CLI and the client.

Without a server: tables, status parsing, usage errors and exit codes. Against a real engine
(the session nats-server, the real control plane and worker, handlers defined here): every
command run as a subprocess, its tables, ``--json`` output, exit codes and error lines; and
the Python client's results, failures and paging."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import re
import socket
import sys
import threading
import time
import types
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from durable import Context, Service, TerminalError
from durable._client import Client, parse_status, status_name
from durable._store.ids import idempotent_invocation_id
from durable.errors import (
    InvalidArgumentError,
    InvocationCancelledError,
    InvocationFailedError,
    NotFoundError,
    ResultTimeoutError,
    RPCError,
)
from durable.testing import LocalEngine, start_engine
from durable.v1 import types_pb2
from durable_server import cli, cli_views
from durable_server._tables import format_fields, format_table, truncate
from durable_server.natsd import EmbeddedNats
from tests.engine_support import wait_status

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


@pytest.mark.parametrize(
    ("given", "hint"),
    [
        ("World", """a JSON string needs double quotes inside shell quotes: '"World"'"""),
        ("{name: ada}", """the whole value single quotes for the shell, e.g. '{"name": "ada"}'"""),
    ],
)
def test_input_the_shell_unquoted_says_how_to_quote_it(
    given: str, hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["invoke", "greeter/greet", given]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("usage: durable invoke")
    assert err.rstrip().endswith(hint), err
    assert cli.main(["set-state", "counter", "k", f"n={given}"]) == cli.EXIT_USAGE
    assert hint in capsys.readouterr().err


def test_usage_errors_with_json_are_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--json", "invoke", "greeter/greet", "World"]) == cli.EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    error = json.loads(captured.err)["error"]
    assert error["code"] == "USAGE"
    assert error["message"].startswith("INPUT_JSON is not valid JSON")
    assert cli.main(["list", "--json", "--limit", "0"]) == cli.EXIT_USAGE
    assert json.loads(capsys.readouterr().err)["error"]["code"] == "USAGE"


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert "invoke" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["dev", "server", "worker"])
def test_engine_help_names_every_default(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for action in sub.choices[command]._actions:
        if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
            assert f"(default: {action.default})" in text, (command, action.dest)
    if command == "dev":
        assert "default: every example: examples.hello," in text


def test_make_run_takes_module_and_nats_port() -> None:
    import subprocess

    repo = Path(__file__).resolve().parent.parent

    def make(*argv: str) -> str:
        done = subprocess.run(
            ["make", "-n", *argv], cwd=repo, capture_output=True, text=True, check=True
        )
        return " ".join(done.stdout.replace("\\\n", " ").split())

    ran = make("run", "MODULE=examples.hello,examples.signup", "NATS_PORT=4333", "DATA=/x")
    assert "--module examples.hello --module examples.signup" in ran
    assert "--nats-port 4333" in ran and "--data /x" in ran
    assert "--module" not in make("run")  # no MODULE: dev's default, every example
    shown = subprocess.run(["make", "help"], cwd=repo, capture_output=True, text=True).stdout
    for knob in ("DATA=", "LISTEN=", "NATS_PORT=", "MODULE=", "SYNC="):
        assert knob in shown, knob


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
    assert cli.main(["--target", target, *argv]) == cli.EXIT_NO_ENGINE
    captured = capsys.readouterr()
    assert captured.err == (
        f"error: UNAVAILABLE: no engine at {target} (connection refused); start one with "
        "`make run` or set --target / DURABLE_TARGET\n"
    )
    assert captured.out == ""
    assert cli.main(["--json", "--target", target, *argv]) == cli.EXIT_NO_ENGINE
    error = json.loads(capsys.readouterr().err)["error"]
    assert error["code"] == "UNAVAILABLE" and error["message"].startswith("no engine at")


async def test_client_connect_fails_fast_on_unreachable_target() -> None:
    with pytest.raises(RPCError) as exc:
        await Client.connect(f"127.0.0.1:{_closed_port()}", timeout=0.3)
    assert exc.value.code is grpc.StatusCode.UNAVAILABLE


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


# ------------------------------------------------------------------- against a real engine
#
# A real nats-server (the session one), the real control plane and a real worker, started in
# this event loop by durable.testing.start_engine; the CLI runs as a subprocess, exactly as a
# person would run it, while the loop keeps serving the engine.

REPO = Path(__file__).resolve().parent.parent
DURABLE = REPO / ".venv" / "bin" / "durable"
CLI_TIMEOUT = 30.0  # one CLI run, start-up included
GATE_TIMEOUT = 30.0  # longest a blocked step waits for the test to release it

ID_RE = re.compile(r"^inv_[a-z2-7]{26}$")
STAMP_RE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z$")

clif = Service("clif", description="Handlers the CLI tests drive")


@dataclasses.dataclass
class Order:
    order_id: str
    items: list[str]
    amount: float


@dataclasses.dataclass
class Gate:
    """A step that blocks in its worker thread until the test opens the gate."""

    entered: threading.Event = dataclasses.field(default_factory=threading.Event)
    release: threading.Event = dataclasses.field(default_factory=threading.Event)


GATES: dict[str, Gate] = {}
_GATES_LOCK = threading.Lock()


def _gate(tag: str) -> Gate:
    with _GATES_LOCK:
        return GATES.setdefault(tag, Gate())


def _reserve(order_id: str) -> str:
    return f"rsv-{order_id}"


def _charge(amount: float) -> float:
    return round(amount * 1.2, 2)


def _ship(order_id: str) -> str:
    return f"shp-{order_id}"


def _wait_at_gate(tag: str) -> str:
    gate = _gate(tag)
    gate.entered.set()
    if not gate.release.wait(GATE_TIMEOUT):
        raise TerminalError(f"gate {tag} was never opened")
    return f"{tag}-released"


@clif.handler()
async def checkout(ctx: Context, order: Order) -> dict[str, Any]:
    """Reserves, charges and ships: three journaled steps."""
    reservation = await ctx.run("reserve", _reserve, order.order_id)
    charged = await ctx.run("charge", _charge, order.amount)
    shipment = await ctx.run("ship", _ship, order.order_id)
    return {"reservation": reservation, "charged": charged, "shipment": shipment}


@clif.handler()
async def reject(ctx: Context, reason: str) -> str:
    """Always fails, without retry."""
    raise TerminalError(f"rejected: {reason}", code=402)


@clif.handler()
async def block(ctx: Context, tag: str) -> str:
    """Waits at a gate the test opens, then finishes in a second step."""
    waited = await ctx.run("wait", _wait_at_gate, tag)
    return await ctx.run("finish", lambda: f"{waited}+finished")


@clif.handler()
async def hold(ctx: Context, tag: str) -> str:
    """One step, at a gate: a cancel requested during it finds no next step."""
    return await ctx.run("wait", _wait_at_gate, tag)


@clif.handler()
async def echo(ctx: Context, value: dict[str, Any]) -> dict[str, Any]:
    """Returns its input."""
    return value


@clif.handler()
async def stamp(ctx: Context, seconds: int) -> timestamp_pb2.Timestamp:
    """Returns a protobuf message."""
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=250_000_000)


@contextlib.asynccontextmanager
async def real_engine(nats_server: EmbeddedNats, **kwargs: Any) -> AsyncIterator[LocalEngine]:
    """Control plane + worker for ``clif`` on the session nats-server, under a fresh prefix
    (so ``list`` and ``stats`` see only this test's invocations). Opens every gate on the way
    out, so no step thread outlives the test."""
    before = set(GATES)
    async with start_engine([clif], nats_url=nats_server.url, **kwargs) as engine:
        try:
            yield engine
        finally:
            for tag, gate in list(GATES.items()):
                if tag not in before:
                    gate.release.set()


@dataclasses.dataclass
class Ran:
    """One finished ``durable`` run."""

    argv: tuple[str, ...]
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    def json(self) -> Any:
        assert self.code == 0, self
        return json.loads(self.out)

    def field(self, label: str) -> str:
        """The value of a ``label  value`` line of a fields view."""
        for line in self.lines:
            if line.startswith(label + "  "):
                return line[len(label) :].strip()
        raise AssertionError(f"no {label!r} line in:\n{self.out}")

    def table(self, header: str) -> list[list[str]]:
        """The rows (cells split on runs of 2+ spaces, so blank cells vanish) of the table
        whose header starts with ``header``, up to a blank line or the footer."""
        lines = self.lines
        start = next(i for i, line in enumerate(lines) if line.startswith(header))
        assert set(lines[start + 1].replace(" ", "")) == {"-"}, lines[start + 1]
        rows = []
        for line in lines[start + 2 :]:
            if not line.strip() or _is_footer(line):
                break
            rows.append(re.split(r"\s{2,}", line.strip()))
        return rows


def _is_footer(line: str) -> bool:
    return bool(re.match(r"^\d+ (of \d+ matching )?invocations?$|^next page: ", line))


async def durable(target: str, *argv: str, stdin: bytes | None = None) -> Ran:
    """Run ``durable --target TARGET ARGV...`` as a subprocess, bounded by CLI_TIMEOUT."""
    proc = await asyncio.create_subprocess_exec(
        str(DURABLE),
        "--target",
        target,
        *argv,
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), CLI_TIMEOUT)
    except TimeoutError:
        raise AssertionError(f"durable {' '.join(argv)} did not finish in {CLI_TIMEOUT}s") from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    ran = Ran(argv, proc.returncode, out.decode(), err.decode())
    assert "Traceback" not in ran.err, ran
    return ran


async def wait_entered(tag: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not _gate(tag).entered.is_set():
        assert time.monotonic() < deadline, f"the step behind gate {tag} never started"
        await asyncio.sleep(0.01)


def _tag() -> str:
    return uuid.uuid4().hex[:8]


ORDER = '{"order_id": "o-1", "items": ["book"], "amount": 12.5}'
RECEIPT = {"reservation": "rsv-o-1", "charged": 15.0, "shipment": "shp-o-1"}


async def test_cli_handlers_table(nats_server: EmbeddedNats) -> None:
    async with real_engine(nats_server) as engine:
        ran = await durable(engine.target, "handlers")
        assert (ran.code, ran.err) == (0, "")
        assert ran.lines[0].split() == [
            "NAME",
            "KIND",
            "INPUT",
            "OUTPUT",
            "WORKERS",
            "LAST",
            "SEEN",
            "VERSIONS",
            "DESCRIPTION",
        ]
        rows = {row[0]: row for row in ran.table("NAME")}
        assert sorted(rows) == [
            "clif/block",
            "clif/checkout",
            "clif/echo",
            "clif/hold",
            "clif/reject",
            "clif/stamp",
        ]
        assert rows["clif/checkout"][1:4] == ["SERVICE", "Order", "dict[str, Any]"]
        assert rows["clif/checkout"][4] == "1"  # one live worker
        assert rows["clif/checkout"][-1] == "Reserves, charges and ships: three journaled steps."
        assert rows["clif/reject"][1:3] == ["SERVICE", "str"]
        assert rows["clif/stamp"][1:4] == ["SERVICE", "int", "google.protobuf.Timestamp"]

        body = (await durable(engine.target, "--json", "handlers")).json()
        by_name = {h["name"]: h for h in body["handlers"]}
        assert sorted(by_name) == sorted(rows)
        assert by_name["clif/checkout"]["kind"] == "HANDLER_KIND_SERVICE"
        assert by_name["clif/checkout"]["inputType"] == "Order"
        schema = json.loads(by_name["clif/checkout"]["inputSchema"])
        assert schema["required"] == ["order_id", "items", "amount"]


@pytest.mark.slow
async def test_cli_invoke_waits_for_the_result(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    async with real_engine(nats_server) as engine:
        ran = await durable(engine.target, "invoke", "clif/checkout", ORDER)
        assert (ran.code, ran.err) == (0, "")
        assert [line.split()[0] for line in ran.lines] == ["invocation", "status", "result"]
        inv_id = ran.field("invocation")
        assert ID_RE.match(inv_id)
        assert ran.field("status") == "COMPLETED"
        assert json.loads(ran.field("result")) == RECEIPT
        assert await engine.client.result(inv_id, timeout=5) == RECEIPT

        # Input from a file (and from stdin), with an idempotency key: the second run finds
        # the first invocation instead of starting another. (JSON objects: see the retry
        # test below.)
        input_file = tmp_path / "seconds.json"
        input_file.write_text("5\n")
        idem = ("--idempotency-key", "idem-1")
        first = await durable(
            engine.target, "invoke", "clif/stamp", "--input-file", str(input_file), *idem
        )
        assert first.code == 0 and first.field("status") == "COMPLETED"
        assert first.field("result") == "<7 bytes google.protobuf.Timestamp>"
        assert "already existed" not in first.out
        again = await durable(
            engine.target, "invoke", "clif/stamp", "--input-file", "-", *idem, stdin=b"5"
        )
        assert again.code == 0, again
        assert again.field("invocation") == first.field("invocation")
        assert again.field("already existed") == "yes (idempotency key matched)"
        ran = await durable(engine.target, "invoke", "clif/stamp", "6", *idem)
        assert (ran.code, ran.out) == (1, "")
        assert ran.err.startswith("error: ALREADY_EXISTS: idempotency key 'idem-1' "), ran.err

        body = (await durable(engine.target, "--json", "invoke", "clif/checkout", ORDER)).json()
        assert ID_RE.match(body["invocationId"])
        assert body["status"] == "INVOCATION_STATUS_COMPLETED"
        assert body["result"]["value"]["json"] == RECEIPT


@pytest.mark.slow
async def test_cli_idempotent_retry_of_a_json_object_finds_the_invocation(
    nats_server: EmbeddedNats,
) -> None:
    value = json.dumps({f"field{i}": i for i in range(12)})
    async with real_engine(nats_server) as engine:
        first = await durable(
            engine.target, "invoke", "clif/echo", value, "--idempotency-key", "same"
        )
        assert first.code == 0, first
        for _ in range(4):  # each from a new process, as a retrying script would
            again = await durable(
                engine.target, "invoke", "clif/echo", value, "--idempotency-key", "same"
            )
            assert again.code == 0, again.err
            assert again.field("invocation") == first.field("invocation")


@pytest.mark.slow
async def test_cli_invoke_of_a_failing_handler_exits_1(nats_server: EmbeddedNats) -> None:
    async with real_engine(nats_server) as engine:
        ran = await durable(engine.target, "invoke", "clif/reject", '"card declined"')
        assert ran.code == 1  # the awaited invocation failed
        assert ran.err == ""
        assert ran.field("status") == "FAILED"
        assert ran.field("result") == "failed: TerminalError: rejected: card declined (code 402)"
        inv_id = ran.field("invocation")
        view = await engine.client.get(inv_id)
        assert view.status == S.INVOCATION_STATUS_FAILED

        ran = await durable(engine.target, "--json", "invoke", "clif/reject", '"again"')
        assert ran.code == 1
        body = json.loads(ran.out)
        assert body["status"] == "INVOCATION_STATUS_FAILED"
        assert body["result"]["failure"]["message"] == "rejected: again"
        assert body["result"]["failure"]["code"] == 402

        # Refused before anything runs: an unknown handler, an input of the wrong shape.
        ran = await durable(engine.target, "invoke", "clif/nope", "{}")
        assert (ran.code, ran.out) == (1, "")
        assert ran.err.startswith("error: NOT_FOUND: ")
        assert "clif/nope" in ran.err
        ran = await durable(engine.target, "invoke", "clif/checkout", '"not an order"')
        assert (ran.code, ran.out) == (1, "")
        assert ran.err.startswith("error: INVALID_ARGUMENT: ")


@pytest.mark.slow
async def test_cli_exit_codes_tell_the_outcomes_apart(nats_server: EmbeddedNats) -> None:
    async with real_engine(nats_server) as engine:
        ran = await durable(engine.target, "invoke", "clif/echo", '{"a": 1}')
        assert ran.code == cli.EXIT_OK, ran
        # Still running when --timeout runs out.
        tag = _tag()
        ran = await durable(
            engine.target, "invoke", "clif/block", json.dumps(tag), "--timeout", "1"
        )
        assert ran.code == cli.EXIT_NOT_ENDED, ran
        assert ran.field("status") in ("RUNNING", "PENDING")
        _gate(tag).release.set()
        # Cancelled while the CLI awaits it.
        tag = _tag()
        waiting = asyncio.create_task(
            durable(
                engine.target, "invoke", "clif/block", json.dumps(tag), "--idempotency-key", tag
            )
        )
        await wait_entered(tag)
        await engine.client.cancel(idempotent_invocation_id("clif/block", "", tag))
        _gate(tag).release.set()
        ran = await waiting
        assert ran.code == cli.EXIT_CANCELLED, ran
        # A refusal, as one JSON object with --json.
        ran = await durable(engine.target, "--json", "invoke", "clif/nope", "{}")
        assert (ran.code, ran.out) == (cli.EXIT_FAILED, "")
        error = json.loads(ran.err)["error"]
        assert (error["code"], error["reason"]) == ("NOT_FOUND", "HANDLER_NOT_FOUND")
        assert error["metadata"]["handler"] == "clif/nope"


@pytest.mark.slow
async def test_cli_invoke_no_wait_then_get(nats_server: EmbeddedNats) -> None:
    async with real_engine(nats_server) as engine:
        ran = await durable(engine.target, "invoke", "clif/checkout", ORDER, "--no-wait")
        assert (ran.code, ran.err) == (0, "")
        assert [line.split()[0] for line in ran.lines] == ["invocation", "status"]
        inv_id = ran.field("invocation")
        assert ran.field("status") in ("PENDING", "RUNNING", "COMPLETED")
        assert await engine.client.result(inv_id, timeout=10) == RECEIPT

        ran = await durable(engine.target, "get", inv_id)
        assert (ran.code, ran.err) == (0, "")
        assert ran.field("invocation") == inv_id
        assert ran.field("handler") == "clif/checkout"
        assert ran.field("status") == "COMPLETED"
        assert ran.field("attempt") == "1"
        for label in ("created", "started", "updated", "ended"):
            assert STAMP_RE.match(ran.field(label)), (label, ran.out)
        assert json.loads(ran.field("input")) == {
            "order_id": "o-1",
            "items": ["book"],
            "amount": 12.5,
        }
        assert json.loads(ran.field("result")) == RECEIPT
        assert ran.field("journal") == "3 steps"
        assert "current step" not in ran.out  # it has ended
        assert "last failure" not in ran.out
        header = next(line for line in ran.lines if line.startswith("INDEX"))
        assert header.split() == [
            "INDEX",
            "KIND",
            "NAME",
            "SUMMARY",
            "TOOK",
            "ATTEMPT",
            "RECORDED",
            "AT",
        ]
        rows = ran.table("INDEX")
        assert [row[:4] + row[5:6] for row in rows] == [
            ["0", "RUN", "reserve", '"rsv-o-1"', "1"],
            ["1", "RUN", "charge", "15.0", "1"],
            ["2", "RUN", "ship", '"shp-o-1"', "1"],
        ]
        assert all(re.fullmatch(r"<?\d+ms", row[4]) for row in rows), rows
        assert all(STAMP_RE.match(row[6]) for row in rows)

        body = (await durable(engine.target, "get", inv_id, "--json")).json()
        assert body["invocation"]["invocationId"] == inv_id
        assert body["invocation"]["status"] == "INVOCATION_STATUS_COMPLETED"
        assert [e.get("name") for e in body["journal"]] == ["reserve", "charge", "ship"]


@pytest.mark.slow
async def test_cli_list_pages_and_stats(nats_server: EmbeddedNats) -> None:
    async with real_engine(nats_server) as engine:
        ids = []
        for i in range(4):
            order = {"order_id": f"o-{i}", "items": ["book"], "amount": 1 + i}
            handle = await engine.client.invoke("clif/checkout", order, wait=True)
            ids.append(handle.id)
        failed = await engine.client.invoke("clif/reject", "no", wait=True)
        ids.append(failed.id)
        newest_first = ids[::-1]
        assert failed.status == S.INVOCATION_STATUS_FAILED

        ran = await durable(engine.target, "list")
        assert (ran.code, ran.err) == (0, "")
        assert ran.lines[0].split() == [
            "ID",
            "HANDLER",
            "KEY",
            "STATUS",
            "ATTEMPT",
            "CREATED",
            "UPDATED",
        ]
        rows = ran.table("ID")
        assert [row[0] for row in rows] == newest_first
        # Service handlers take no key: the KEY cells are blank.
        assert rows[0][1:4] == ["clif/reject", "FAILED", "1"]
        assert rows[1][1:4] == ["clif/checkout", "COMPLETED", "1"]
        assert ran.lines[-1] == "5 of 5 matching invocations"

        ran = await durable(engine.target, "list", "--status", "completed")
        assert [row[0] for row in ran.table("ID")] == newest_first[1:]
        assert {row[2] for row in ran.table("ID")} == {"COMPLETED"}
        assert ran.lines[-1] == "4 of 4 matching invocations"
        ran = await durable(engine.target, "list", "--status", "failed", "cancelled")
        assert [row[0] for row in ran.table("ID")] == [failed.id]
        ran = await durable(engine.target, "list", "--handler", "clif/reject")
        assert [row[0] for row in ran.table("ID")] == [failed.id]
        ran = await durable(engine.target, "list", "--handler", "clif/checkout", "--key", "k2")
        assert ran.lines == ["0 of 0 matching invocations"]
        ran = await durable(engine.target, "list", "--status", "paused")
        assert ran.lines == ["0 of 0 matching invocations"]

        # One page at a time, following the printed token.
        ran = await durable(engine.target, "list", "--limit", "2")
        assert [row[0] for row in ran.table("ID")] == newest_first[:2]
        assert ran.lines[-2] == "2 of 5 matching invocations"
        token = ran.lines[-1].removeprefix("next page: --page-token ")
        assert token and token != ran.lines[-1]
        ran = await durable(engine.target, "list", "--limit", "2", "--page-token", token)
        assert [row[0] for row in ran.table("ID")] == newest_first[2:4]

        # Every page: the rows in order; into a pipe, no progress frames on stderr (the
        # terminal case is test_progress_is_shown_on_a_terminal_only).
        ran = await durable(engine.target, "list", "--all", "--limit", "2")
        assert ran.code == 0
        assert [row[0] for row in ran.table("ID")] == newest_first
        assert ran.lines[-1] == "5 invocations"
        assert ran.err == ""

        body = (await durable(engine.target, "--json", "list", "--all", "--limit", "2")).json()
        assert [s["invocationId"] for s in body] == newest_first
        assert body[0]["status"] == "INVOCATION_STATUS_FAILED"
        body = (await durable(engine.target, "list", "--limit", "3", "--json")).json()
        assert [s["invocationId"] for s in body["invocations"]] == newest_first[:3]
        assert body["totalSize"] == "5"  # int64 is a string in protobuf JSON
        assert body["nextPageToken"]

        ran = await durable(engine.target, "stats")
        assert (ran.code, ran.err) == (0, "")
        assert ran.out.startswith("total  5\n\n")
        by_status = dict(ran.table("STATUS"))
        assert (by_status["COMPLETED"], by_status["FAILED"], by_status["RUNNING"]) == (
            "4",
            "1",
            "0",
        )
        assert set(by_status) >= {"PENDING", "RUNNING", "PAUSED", "COMPLETED", "FAILED"}
        handler_rows = ran.table("HANDLER")
        header = next(line for line in ran.lines if line.startswith("HANDLER"))
        assert header.split() == ["HANDLER", "TOTAL", "COMPLETED", "FAILED"]
        assert handler_rows == [["clif/checkout", "4", "4", "0"], ["clif/reject", "1", "0", "1"]]

        body = (await durable(engine.target, "stats", "--json")).json()
        assert body["total"] == "5"
        counts = {c["status"]: c.get("count", "0") for c in body["byStatus"]}
        assert counts["INVOCATION_STATUS_COMPLETED"] == "4"


@pytest.mark.slow
async def test_cli_pause_resume_cancel(nats_server: EmbeddedNats) -> None:
    async with real_engine(nats_server, slots=1) as engine:
        target = engine.target
        tag = _tag()
        ran = await durable(target, "invoke", "clif/block", json.dumps(tag), "--no-wait")
        running = ran.field("invocation")
        await wait_entered(tag)
        await wait_status(engine, running, S.INVOCATION_STATUS_RUNNING)

        # Resuming what is not paused is refused, and changes nothing.
        ran = await durable(target, "resume", running)
        assert (ran.code, ran.out) == (1, "")
        assert ran.err == (
            f"error: FAILED_PRECONDITION: invocation {running} is RUNNING, not paused; "
            "only a paused invocation can be resumed\n"
        )

        # A pending invocation (the only slot is taken) pauses at once.
        ran = await durable(target, "invoke", "clif/checkout", ORDER, "--no-wait")
        queued = ran.field("invocation")
        assert ran.field("status") == "PENDING"
        ran = await durable(target, "pause", queued)
        assert ran.code == 0
        assert ran.out.startswith(f"{queued}: ")
        assert ran.out.endswith(" paused (status PAUSED)\n")

        # A running one is asked to pause and stops at its next step.
        ran = await durable(target, "pause", running, "--reason", "deploy")
        assert (ran.code, ran.err) == (0, "")
        assert (
            ran.out == f"{running}: pause requested; it stops at its next step (status RUNNING)\n"
        )
        ran = await durable(target, "get", running)
        assert ran.field("status") == "RUNNING (pause requested)"
        assert ran.field("current step").startswith("#0")
        ran = await durable(target, "pause", running)
        assert ran.code == 1 and ran.err.startswith("error: FAILED_PRECONDITION: ")

        _gate(tag).release.set()
        await wait_status(engine, running, S.INVOCATION_STATUS_PAUSED)
        ran = await durable(target, "get", running)
        assert ran.field("status") == "PAUSED"
        assert "deploy" in ran.field("status reason")
        assert ran.field("current step").startswith("#1")
        assert [row[:3] for row in ran.table("INDEX")] == [["0", "RUN", "wait"]]
        ran = await durable(target, "list", "--status", "paused")
        assert {row[0] for row in ran.table("ID")} == {running, queued}

        ran = await durable(target, "resume", running)
        assert (ran.code, ran.err) == (0, "")
        assert re.fullmatch(
            rf"{running}: resumed \(status (PENDING|RUNNING|COMPLETED)\)\n", ran.out
        ), ran.out
        assert await engine.client.result(running, timeout=10) == f"{tag}-released+finished"
        ran = await durable(target, "resume", queued)
        assert ran.code == 0
        assert await engine.client.result(queued, timeout=10) == RECEIPT
        ran = await durable(target, "get", running)
        assert ran.field("status") == "COMPLETED"
        assert [row[2] for row in ran.table("INDEX")] == ["wait", "finish"]

        # Cancel: requested while the step runs, delivered to the handler at its next step.
        tag = _tag()
        ran = await durable(target, "invoke", "clif/block", json.dumps(tag), "--no-wait")
        doomed = ran.field("invocation")
        await wait_entered(tag)
        await wait_status(engine, doomed, S.INVOCATION_STATUS_RUNNING)
        ran = await durable(target, "cancel", doomed, "--reason", "no longer needed")
        assert (ran.code, ran.err) == (0, "")
        assert ran.out == (
            f"{doomed}: cancel requested; the handler sees it at its next step (status RUNNING)\n"
        )
        ran = await durable(target, "get", doomed)
        assert ran.field("status") == "RUNNING (cancel requested)"
        _gate(tag).release.set()
        await wait_status(engine, doomed, S.INVOCATION_STATUS_CANCELLED)
        ran = await durable(target, "get", doomed)
        assert ran.field("status") == "CANCELLED"
        assert ran.field("result") == "failed: CancelledError: no longer needed"

        # Nothing is left to steer once it ended.
        for verb in ("cancel", "pause", "resume"):
            ran = await durable(target, verb, doomed)
            assert (ran.code, ran.out) == (1, ""), verb
            assert ran.err.startswith("error: FAILED_PRECONDITION: "), ran.err
            assert doomed in ran.err and "CANCELLED" in ran.err, ran.err

        body = (await durable(target, "--json", "stats")).json()
        counts = {c["status"]: c.get("count", "0") for c in body["byStatus"]}
        assert counts["INVOCATION_STATUS_COMPLETED"] == "2"
        assert counts["INVOCATION_STATUS_CANCELLED"] == "1"


@pytest.mark.slow
async def test_cli_get_of_an_invocation_that_ended_before_seeing_its_cancel(
    nats_server: EmbeddedNats,
) -> None:
    async with real_engine(nats_server) as engine:
        tag = _tag()
        handle = await engine.client.start("clif/hold", tag)
        await wait_entered(tag)
        await wait_status(engine, handle.id, S.INVOCATION_STATUS_RUNNING)
        ran = await durable(engine.target, "cancel", handle.id)
        assert ran.code == 0 and "cancel requested" in ran.out
        _gate(tag).release.set()  # the last step finishes: no next step to see the cancel
        assert await handle.result(timeout=10) == f"{tag}-released"
        ran = await durable(engine.target, "get", handle.id)
        assert ran.field("status") == "COMPLETED"  # not "COMPLETED (cancel requested)"


@pytest.mark.slow
async def test_cli_pause_and_cancel_json(nats_server: EmbeddedNats) -> None:
    async with real_engine(nats_server) as engine:
        tag = _tag()
        handle = await engine.client.start("clif/block", tag)
        await wait_entered(tag)
        await wait_status(engine, handle.id, S.INVOCATION_STATUS_RUNNING)
        body = (await durable(engine.target, "--json", "pause", handle.id)).json()
        assert (body["invocationId"], body["status"]) == (handle.id, "INVOCATION_STATUS_RUNNING")
        body = (await durable(engine.target, "--json", "resume", handle.id)).json()
        assert body["invocationId"] == handle.id  # withdraws the pending pause
        body = (await durable(engine.target, "cancel", handle.id, "--json")).json()
        assert body["invocationId"] == handle.id
        _gate(tag).release.set()
        with pytest.raises(InvocationCancelledError):
            await handle.result(timeout=10)


@pytest.mark.slow
async def test_cli_get_bad_and_unknown_ids(nats_server: EmbeddedNats) -> None:
    async with real_engine(nats_server) as engine:
        ran = await durable(engine.target, "get", "inv_nope")
        assert (ran.code, ran.out) == (1, "")
        assert ran.err.startswith("error: INVALID_ARGUMENT: invocation_id 'inv_nope' is malformed")
        assert ran.err.count("\n") == 1

        unknown = "inv_" + "a" * 26
        for argv in (["get", unknown], ["--json", "get", unknown], ["cancel", unknown]):
            ran = await durable(engine.target, *argv)
            assert (ran.code, ran.out) == (1, ""), argv
            if "--json" in argv:
                assert json.loads(ran.err)["error"]["code"] == "NOT_FOUND", ran.err
            else:
                assert ran.err.startswith("error: NOT_FOUND: "), ran.err
            assert unknown in ran.err
        for verb in ("pause", "resume"):
            ran = await durable(engine.target, verb, "not-an-id")
            assert (ran.code, ran.out) == (1, "")
            assert ran.err.startswith("error: INVALID_ARGUMENT: "), ran.err


# ------------------------------------------------------------- the client, on a real engine


async def test_client_results_and_failures(nats_server: EmbeddedNats) -> None:
    async with real_engine(nats_server) as engine, Client(engine.target) as client:
        order = {"order_id": "o-1", "items": ["book"], "amount": 12.5}
        assert await client.execute("clif/checkout", order, timeout=10) == RECEIPT
        done = await client.start("clif/checkout", order)
        assert await client.result(done.id, timeout=10) == RECEIPT
        stamped = await client.start("clif/stamp", 5)
        result = await client.result(stamped.id, timeout=10, result_type=timestamp_pb2.Timestamp)
        assert result == timestamp_pb2.Timestamp(seconds=5, nanos=250_000_000)

        rejected = await client.start("clif/reject", "card declined")
        with pytest.raises(InvocationFailedError) as failed:
            await client.result(rejected.id, timeout=10)
        assert failed.value.failure_message == "rejected: card declined"
        assert (failed.value.code, failed.value.error_type) == (402, "TerminalError")
        assert not isinstance(failed.value, InvocationCancelledError)

        tag = _tag()
        blocked = await client.start("clif/block", tag)
        await wait_entered(tag)
        with pytest.raises(ResultTimeoutError):
            await client.result(blocked.id, timeout=0.2)
        await client.cancel(blocked.id, "user asked")
        _gate(tag).release.set()
        with pytest.raises(InvocationCancelledError) as cancelled:
            await client.result(blocked.id, timeout=10)
        assert cancelled.value.failure_message == "user asked"

        unknown = "inv_" + "a" * 26
        with pytest.raises(NotFoundError) as missing:
            await client.result(unknown, timeout=1)
        assert missing.value.code is grpc.StatusCode.NOT_FOUND
        assert unknown in missing.value.details
        with pytest.raises(InvalidArgumentError):
            await client.get("inv_nope")


async def test_client_handle_waits_until_done(nats_server: EmbeddedNats) -> None:
    async with real_engine(nats_server) as engine:
        tag = _tag()
        handle = await engine.client.start("clif/block", tag)
        assert ID_RE.match(handle.id)
        assert (handle.done, handle.outcome) == (False, None)
        waiter = asyncio.create_task(handle.result(timeout=20))
        await wait_entered(tag)
        await asyncio.sleep(0.1)
        assert not waiter.done()
        _gate(tag).release.set()
        assert await waiter == f"{tag}-released+finished"
        assert handle.done and handle.status == S.INVOCATION_STATUS_COMPLETED
        assert await handle.result() == f"{tag}-released+finished"  # cached


async def test_client_list_all_stats_and_handlers(nats_server: EmbeddedNats) -> None:
    async with real_engine(nats_server) as engine:
        client = engine.client
        ids = []
        for i in range(5):
            order = {"order_id": f"o-{i}", "items": [], "amount": i}
            ids.append((await client.invoke("clif/checkout", order, wait=True)).id)
        await client.invoke("clif/reject", "x", wait=True)
        listed = [s.id async for s in client.list_all(statuses="completed", page_size=2)]
        assert listed == ids[::-1]
        page = await client.list(page_size=3)
        assert (len(page.invocations), page.total_size) == (3, 6)
        assert page.next_page_token
        assert (await client.stats()).total == 6
        assert [h.name for h in await client.handlers()] == [
            "clif/block",
            "clif/checkout",
            "clif/echo",
            "clif/hold",
            "clif/reject",
            "clif/stamp",
        ]
        with pytest.raises(ValueError, match="unknown invocation status"):
            await client.list(statuses=["sleeping"])


def test_progress_is_shown_on_a_terminal_only() -> None:
    import io

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    piped, terminal = io.StringIO(), Terminal()
    for stream in (piped, terminal):
        progress = cli_views.Progress(stream)
        progress.update("12 of 100")
        progress.done()
    assert piped.getvalue() == ""
    assert "12 of 100" in terminal.getvalue()


@pytest.mark.slow
async def test_cli_version_and_server_info(nats_server: EmbeddedNats) -> None:
    from durable_server.version import engine_version

    async with real_engine(nats_server) as engine:
        ran = await durable(engine.target, "--version")
        assert (ran.code, ran.out.strip()) == (0, f"durable {engine_version()}")
        ran = await durable(engine.target, "info")
        assert ran.code == 0, ran
        assert ran.field("engine") == f"durable {engine_version()} at {engine.target}"
        assert re.fullmatch(r"\d+\.\d+\.\d+.*", ran.field("nats-server")), ran.out
        info = (await durable(engine.target, "--json", "info")).json()
        assert info["version"] == engine_version() and info["prefix"] == engine.config.prefix


def test_tables_show_times_relative_to_now() -> None:
    from durable_server.cli_render import ago

    s = types_pb2.InvocationSummary()
    assert ago(s, "created_at") == "-"
    now_ns = 1_000_000 * 1_000_000_000
    for before_s, text in [(0.2, "now"), (5, "5s ago"), (150, "2m ago"), (7300, "2h ago")]:
        s.created_at.FromNanoseconds(now_ns - int(before_s * 1e9))
        assert ago(s, "created_at", now_ns) == text
    s.created_at.FromNanoseconds(now_ns + 90 * 1_000_000_000)
    assert ago(s, "created_at", now_ns) == "in 1m"


def test_tables_fit_the_width_and_never_cut_ids() -> None:
    from durable_server._tables import format_table

    rows = [("inv_" + "a" * 26, "orders/checkout", "x" * 60)]
    text = format_table(("ID", "HANDLER", "DESCRIPTION"), rows, width=70)
    assert max(len(line) for line in text.splitlines()) <= 70
    assert "inv_" + "a" * 26 in text  # whole
    assert "…" in text.splitlines()[2]
    wide = format_table(("ID", "HANDLER", "DESCRIPTION"), rows, width=500)
    assert "x" * 59 in wide
