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


# -------------------------------------------------------------------- against a fake server


def _ts(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=250_000_000)


def _summary(i: int, status: int = S.INVOCATION_STATUS_COMPLETED) -> types_pb2.InvocationSummary:
    return types_pb2.InvocationSummary(
        invocation_id=f"inv_{i}",
        handler="shop/checkout",
        key=f"k{i}",
        status=status,  # type: ignore[arg-type]
        attempt=1,
        created_at=_ts(1_700_000_000 + i),
        updated_at=_ts(1_700_000_100 + i),
    )


_FAILED = types_pb2.Result(
    failure=types_pb2.Failure(message="card declined", error_type="TerminalError", code=402)
)
_CANCELLED = types_pb2.Result(
    failure=types_pb2.Failure(message="user asked", error_type="CancelledError")
)


class FakeControl(control_pb2_grpc.DurableControlServicer):
    """Answers like the engine would for a few fixed invocations."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.await_calls = 0
        self.outcomes: dict[str, tuple[int, types_pb2.Result]] = {
            "inv_ok": (S.INVOCATION_STATUS_COMPLETED, types_pb2.Result(value=to_payload({"a": 1}))),
            "inv_fail": (S.INVOCATION_STATUS_FAILED, _FAILED),
            "inv_cancel": (S.INVOCATION_STATUS_CANCELLED, _CANCELLED),
            "inv_ts": (
                S.INVOCATION_STATUS_COMPLETED,
                types_pb2.Result(value=to_payload(_ts(5))),
            ),
        }

    def Invoke(self, request: Any, context: Any) -> control_pb2.InvokeResponse:
        self.requests.append(request)
        if request.handler == "missing/h":
            context.abort(grpc.StatusCode.NOT_FOUND, "handler missing/h is not registered")
        inv_id = {"shop/fail": "inv_fail", "shop/ok": "inv_ok"}.get(request.handler, "inv_slow")
        response = control_pb2.InvokeResponse(
            invocation_id=inv_id,
            already_existed=bool(request.idempotency_key),
            status=S.INVOCATION_STATUS_PENDING,
        )
        if request.wait and inv_id in self.outcomes:
            status, result = self.outcomes[inv_id]
            response.status = status  # type: ignore[assignment]
            response.result.CopyFrom(result)
        return response

    def AwaitResult(self, request: Any, context: Any) -> control_pb2.AwaitResultResponse:
        self.await_calls += 1
        inv_id = request.invocation_id
        if inv_id == "inv_slow" and self.await_calls < 3:  # "not done" twice, then done
            return control_pb2.AwaitResultResponse(
                invocation_id=inv_id, done=False, status=S.INVOCATION_STATUS_RUNNING
            )
        if inv_id == "inv_slow":
            inv_id = "inv_ok"
        if inv_id == "inv_never":
            return control_pb2.AwaitResultResponse(
                invocation_id=inv_id, status=S.INVOCATION_STATUS_RUNNING
            )
        if inv_id not in self.outcomes:
            context.abort(grpc.StatusCode.NOT_FOUND, f"invocation {inv_id} not found")
        status, result = self.outcomes[inv_id]
        return control_pb2.AwaitResultResponse(
            invocation_id=inv_id,
            done=True,
            status=status,  # type: ignore[arg-type]
            result=result,
        )

    def GetWorkflow(self, request: Any, context: Any) -> control_pb2.GetWorkflowResponse:
        if request.invocation_id != "inv_1":
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"invocation {request.invocation_id} not found"
            )
        inv = types_pb2.Invocation(
            invocation_id="inv_1",
            handler="shop/checkout",
            key="order-7",
            status=S.INVOCATION_STATUS_SUSPENDED,
            input=to_payload({"sku": "X"}),
            attempt=2,
            journal_length=2,
            pause_requested=True,
            current_step=types_pb2.StepRef(index=2, kind=types_pb2.STEP_KIND_SLEEP, name="nap"),
            created_at=_ts(1_700_000_000),
            last_failure=types_pb2.Failure(message="flaky", error_type="IOError"),
        )
        journal = [
            types_pb2.JournalEntry(
                index=0,
                kind=types_pb2.STEP_KIND_RUN,
                name="charge",
                summary='{"ok":true}',
                attempt=1,
                recorded_at=_ts(1_700_000_001),
            ),
            types_pb2.JournalEntry(index=1, kind=types_pb2.STEP_KIND_NOW, name="", attempt=2),
        ]
        return control_pb2.GetWorkflowResponse(invocation=inv, journal=journal)

    def ListWorkflows(self, request: Any, context: Any) -> control_pb2.ListWorkflowsResponse:
        self.requests.append(request)
        everything = [_summary(i) for i in range(5, 0, -1)]
        start = int(request.page_token or 0)
        size = request.page_size or 50
        page = everything[start : start + size]
        token = str(start + size) if start + size < len(everything) else ""
        return control_pb2.ListWorkflowsResponse(
            invocations=page, next_page_token=token, total_size=len(everything)
        )

    def Stats(self, request: Any, context: Any) -> control_pb2.StatsResponse:
        counts = [
            control_pb2.StatusCount(status=s, count=n)  # type: ignore[arg-type]
            for s, n in ((1, 0), (2, 3), (6, 10), (7, 1))
        ]
        return control_pb2.StatsResponse(
            total=14,
            by_status=counts,
            by_handler=[
                control_pb2.HandlerStats(handler="a/x", total=4, by_status=[counts[1], counts[3]]),
                control_pb2.HandlerStats(handler="b/y", total=10, by_status=[counts[2]]),
            ],
        )

    def Pause(self, request: Any, context: Any) -> control_pb2.PauseResponse:
        if request.invocation_id == "inv_done":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "inv_done already completed")
        return control_pb2.PauseResponse(invocation=_summary(1, S.INVOCATION_STATUS_RUNNING))

    def Resume(self, request: Any, context: Any) -> control_pb2.ResumeResponse:
        return control_pb2.ResumeResponse(invocation=_summary(1, S.INVOCATION_STATUS_PENDING))

    def Cancel(self, request: Any, context: Any) -> control_pb2.CancelResponse:
        return control_pb2.CancelResponse(invocation=_summary(1, S.INVOCATION_STATUS_CANCELLED))

    def ListHandlers(self, request: Any, context: Any) -> control_pb2.ListHandlersResponse:
        return control_pb2.ListHandlersResponse(
            handlers=[
                types_pb2.HandlerInfo(
                    name="shop/checkout",
                    kind=types_pb2.HANDLER_KIND_WORKFLOW_RUN,
                    input_type="Order",
                    output_type="str",
                    live_workers=2,
                    description="Charge and ship.",
                )
            ]
        )


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[str, FakeControl]]:
    servicer = FakeControl()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    control_pb2_grpc.add_DurableControlServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(None)


def run(fake: tuple[str, FakeControl], capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code = cli.main(["--target", fake[0], *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_get_view(fake: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(fake, capsys, "get", "inv_1")
    assert (code, err) == (0, "")
    assert "status        SUSPENDED (pause requested)" in out
    assert "current step  #2 SLEEP nap" in out
    assert "last failure  IOError: flaky" in out
    assert 'input         {"sku":"X"}' in out
    assert "created       2023-11-14 22:13:20.250Z" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("INDEX"))
    assert lines[header].split() == [
        "INDEX",
        "KIND",
        "NAME",
        "SUMMARY",
        "ATTEMPT",
        "RECORDED",
        "AT",
    ]
    assert lines[header + 2].split()[:4] == ["0", "RUN", "charge", '{"ok":true}']
    assert lines[header + 3].split() == ["1", "NOW", "2", "-"]


def test_cli_get_not_found(fake: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(fake, capsys, "get", "inv_nope")
    assert code == 1
    assert err == "error: NOT_FOUND: invocation inv_nope not found\n"


def test_cli_list_page_and_token(fake: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(fake, capsys, "list", "--limit", "2", "--status", "completed", "running")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "HANDLER", "KEY", "STATUS", "ATTEMPT", "CREATED", "UPDATED"]
    assert lines[2].split()[:4] == ["inv_5", "shop/checkout", "k5", "COMPLETED"]
    assert "2 of 5 matching invocations" in out
    assert "next page: --page-token 2" in out
    request = fake[1].requests[-1]
    assert list(request.statuses) == [S.INVOCATION_STATUS_COMPLETED, S.INVOCATION_STATUS_RUNNING]


def test_cli_list_all_follows_pages(fake: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(fake, capsys, "list", "--all", "--limit", "2")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[2:7]] == [
        "inv_5",
        "inv_4",
        "inv_3",
        "inv_2",
        "inv_1",
    ]
    assert "5 invocations" in out
    assert "fetched 2 of 5 invocations" in err  # progress on stderr
    code, out, _ = run(fake, capsys, "--json", "list", "--all", "--limit", "2")
    assert [s["invocationId"] for s in json.loads(out)] == [f"inv_{i}" for i in range(5, 0, -1)]


def test_cli_stats(fake: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(fake, capsys, "stats")
    assert code == 0
    assert out.startswith("total  14\n")
    assert "COMPLETED     10" in out
    handler_table = out.split("\n\n")[-1].splitlines()
    assert handler_table[0].split() == ["HANDLER", "TOTAL", "RUNNING", "COMPLETED", "FAILED"]
    assert handler_table[2].split() == ["a/x", "4", "3", "0", "1"]


def test_cli_json_output(fake: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(fake, capsys, "stats", "--json")
    assert code == 0
    assert json.loads(out)["total"] == "14"  # int64 is a string in protobuf JSON


def test_cli_handlers(fake: Any, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(fake, capsys, "handlers")
    assert code == 0
    assert out.splitlines()[2].split()[:5] == ["shop/checkout", "WORKFLOW_RUN", "Order", "str", "2"]


def test_cli_steering(fake: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(fake, capsys, "pause", "inv_1", "--reason", "deploy")[1] == (
        "inv_1: pause requested; it stops at its next step (status RUNNING)\n"
    )
    assert run(fake, capsys, "resume", "inv_1")[1] == "inv_1: resumed (status PENDING)\n"
    assert run(fake, capsys, "cancel", "inv_1")[1] == "inv_1: inv_1 cancelled (status CANCELLED)\n"
    code, _, err = run(fake, capsys, "pause", "inv_done")
    assert (code, err) == (1, "error: FAILED_PRECONDITION: inv_done already completed\n")


def test_cli_invoke(fake: Any, capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    code, out, _ = run(fake, capsys, "invoke", "shop/ok", '{"sku": "X"}', "--key", "k1")
    assert code == 0
    assert out.splitlines() == [
        "invocation  inv_ok",
        "status      COMPLETED",
        'result      {"a":1}',
    ]
    request = fake[1].requests[-1]
    assert (request.key, request.wait, request.HasField("wait_timeout")) == ("k1", True, False)

    code, out, _ = run(fake, capsys, "invoke", "shop/fail")
    assert code == 1  # the awaited invocation failed
    assert "result      failed: TerminalError: card declined (code 402)" in out

    input_file = tmp_path / "in.json"
    input_file.write_text("[1, 2]")
    code, out, _ = run(
        fake, capsys, "invoke", "shop/ok", "--input-file", str(input_file), "--no-wait"
    )
    assert code == 0
    assert out.splitlines() == ["invocation  inv_ok", "status      PENDING"]
    assert fake[1].requests[-1].input == to_payload([1, 2])

    code, out, _ = run(fake, capsys, "--json", "invoke", "shop/ok", "--idempotency-key", "i1")
    body = json.loads(out)
    assert (body["alreadyExisted"], body["result"]["value"]["json"]) == (True, {"a": 1})

    code, _, err = run(fake, capsys, "invoke", "missing/h")
    assert (code, err) == (1, "error: NOT_FOUND: handler missing/h is not registered\n")


# ---------------------------------------------------------------------------- the client


async def test_client_results_and_failures(fake: Any) -> None:
    async with Client(fake[0]) as client:
        assert await client.execute("shop/ok", {"sku": 1}) == {"a": 1}
        assert await client.result("inv_ok") == {"a": 1}
        stamp = await client.result("inv_ts", result_type=timestamp_pb2.Timestamp)
        assert stamp == _ts(5)
        with pytest.raises(InvocationFailedError) as failed:
            await client.result("inv_fail")
        assert (failed.value.failure_message, failed.value.code) == ("card declined", 402)
        assert failed.value.error_type == "TerminalError"
        assert not isinstance(failed.value, InvocationCancelledError)
        with pytest.raises(InvocationCancelledError):
            await client.result("inv_cancel", timeout=5)
        with pytest.raises(NotFoundError) as missing:
            await client.result("inv_missing")
        assert missing.value.code is grpc.StatusCode.NOT_FOUND
        assert missing.value.details == "invocation inv_missing not found"
        with pytest.raises(ResultTimeoutError):
            await client.result("inv_never", timeout=0.2)


async def test_client_handle_rearms_await_until_done(fake: Any) -> None:
    fake[1].await_calls = 0
    async with Client(fake[0]) as client:
        handle = await client.start("shop/slow", [1])
        assert (handle.id, handle.done, handle.outcome) == ("inv_slow", False, None)
        assert await handle.result() == {"a": 1}
        assert fake[1].await_calls == 3
        assert handle.done and handle.status == S.INVOCATION_STATUS_COMPLETED
        assert await handle.result() == {"a": 1}  # cached: no further call
        assert fake[1].await_calls == 3


async def test_client_list_all_and_steering(fake: Any) -> None:
    async with Client(fake[0]) as client:
        ids = [s.invocation_id async for s in client.list_all(statuses="completed", page_size=2)]
        assert ids == ["inv_5", "inv_4", "inv_3", "inv_2", "inv_1"]
        page = await client.list(page_size=3)
        assert (len(page.invocations), page.next_page_token) == (3, "3")
        assert (await client.stats()).total == 14
        assert [h.name for h in await client.handlers()] == ["shop/checkout"]
        assert (await client.cancel("inv_1", "why")).status == S.INVOCATION_STATUS_CANCELLED
        with pytest.raises(ValueError, match="unknown invocation status"):
            await client.list(statuses=["sleeping"])


async def test_client_connect_fails_fast_on_unreachable_target() -> None:
    with pytest.raises(RPCError) as exc:
        await Client.connect(f"127.0.0.1:{_closed_port()}", timeout=0.3)
    assert exc.value.code is grpc.StatusCode.UNAVAILABLE
