"""Every command line the docs show works as printed.

The commands are extracted from the fenced code blocks of README.md, docs/*.md and
examples/README.md, never retyped here: `durable ...` (also as `.venv/bin/durable`),
`grpcurl ...` and `buf ...` lines of sh and console blocks, with `\\` continuations
joined and a `$ ` prompt dropped. Each file's commands run in document order against a
real engine hosting the examples (as `make run` does), with the address the docs use
pointed at it, and placeholders (`<id>`, `inv_agq74...`, `<awakeable id>`, `awk_..._0`)
filled with the last invocation or awakeable id an earlier command printed. A command may
be refused by the engine (a pause of an ended invocation is FAILED_PRECONDITION, exit 1),
but never a usage error (2), never "no engine" (5), never an unknown handler unless the
docs show that error. Engine commands (`dev`, `server`, `worker`) and `console` are parsed,
not run.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from durable.contract import load_modules
from durable.testing import start_engine
from durable_server import cli
from durable_server.natsd import EmbeddedNats
from durable_server.process import DEFAULT_MODULES

pytestmark = pytest.mark.slow  # real processes or long waits: not in make test-fast

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / ".venv" / "bin"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "examples/README.md"]
PROGRAMS = {"durable", "grpcurl", "buf"}
#: Blocks that hold command lines (``text`` blocks show output, such as the dev banner).
SHELL_BLOCKS = {"sh", "console", "bash", "shell", ""}
DOC_ADDRESS = "127.0.0.1:50051"
ENGINE_COMMANDS = {"dev", "server", "worker", "console"}  # long-running: parsed only
ID = re.compile(r"\binv_[a-z0-9]{26}\b")
AWAKEABLE = re.compile(r"\bawk_[a-z0-9]{26}_\d+\b")
#: `watch` follows an invocation to its end; a documented one may wait for a long timer.
WATCH_FOR = 5.0
RUN_FOR = 60.0
#: grpcurl codes that are about what the engine holds, not about the documented request.
STATE_REFUSALS = {"FailedPrecondition", "AlreadyExists", "NotFound"}


@dataclass
class DocCommand:
    where: str  # file:line
    line: str  # as the docs print it (continuations joined)
    shown: str  # the output the docs print right after it, in a console block


def doc_commands(path: Path) -> Iterator[DocCommand]:
    """The command lines in ``path``'s fenced code blocks, in order."""
    lines = path.read_text().split("\n")
    fence: str | None = None  # the open block's language
    i = 0
    while i < len(lines):
        text = lines[i].strip()
        if text.startswith("```"):
            fence = None if fence is not None else text.removeprefix("```")
            i += 1
            continue
        start = i
        if fence in SHELL_BLOCKS:
            command = text.removeprefix("$ ")
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command[:-1] + " " + lines[i].strip()
            program = command.split(" ", 1)[0].rsplit("/", 1)[-1]
            if program in PROGRAMS:
                shown = []
                j = i + 1
                while j < len(lines) and not lines[j].startswith(("$ ", "```")):
                    shown.append(lines[j])
                    j += 1
                where = f"{path.relative_to(REPO)}:{start + 1}"
                yield DocCommand(where, command, "\n".join(shown) if text.startswith("$ ") else "")
        i += 1


def _argv(command: DocCommand, ids: list[str], awakeables: list[str]) -> list[str]:
    """The command as words, placeholders filled, the program resolved to the venv's."""
    line = command.line
    awk = awakeables[-1] if awakeables else "awk_" + "a" * 26 + "_0"
    inv = ids[-1] if ids else "inv_" + "a" * 26
    line = re.sub(r"<awakeable[ -]id>|awk_[a-z0-9]*\.\.\._\d+", awk, line)
    line = re.sub(r"<[a-z -]*id>|inv_[a-z0-9]*\.\.\.", inv, line)
    argv = shlex.split(line, comments=True)
    name = argv[0].rsplit("/", 1)[-1]
    return [str(BIN / name), *argv[1:]]


def test_the_docs_show_commands() -> None:
    counts = {str(p.relative_to(REPO)): sum(1 for _ in doc_commands(p)) for p in DOCS}
    assert counts["README.md"] >= 15 and counts["examples/README.md"] >= 20, counts
    assert counts["docs/api.md"] >= 10, counts


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
async def test_every_documented_command_works_as_printed(
    doc: Path, nats_server: EmbeddedNats
) -> None:
    commands = list(doc_commands(doc))
    if not commands:
        return
    services, servicers = load_modules(DEFAULT_MODULES)
    async with start_engine(services, servicers=servicers, nats_url=nats_server.url) as engine:
        ids: list[str] = []
        awakeables: list[str] = []
        for command in commands:
            argv = _argv(command, ids, awakeables)
            program = Path(argv[0]).name
            if program == "durable":
                words = argv[1:]
                parsed = cli._parse(cli.build_parser(), words)  # a usage error raises here
                if parsed.command in ENGINE_COMMANDS and "--help" not in words:
                    continue  # parsed is all: it would start an engine
                argv = [argv[0], "--target", engine.target, *words]
            else:
                argv = [a.replace(DOC_ADDRESS, engine.target) for a in argv]
            out, code = await _run(argv, watch="watch" in argv)
            ids += ID.findall(out)
            awakeables += AWAKEABLE.findall(out)
            context = f"{command.where}: {command.line}\n-> exit {code}\n{out}"
            if program == "durable":
                assert code not in (cli.EXIT_USAGE, cli.EXIT_NO_ENGINE), context
                if "error: NOT_FOUND" not in command.shown:
                    assert "is not registered" not in out, context
                if command.shown.startswith("error: "):
                    assert command.shown.split(":")[1] in out, context
            elif "NOT_FOUND" in command.line:  # the docs say this one is refused
                assert code != 0 and "NotFound" in out, context
            elif code != 0:
                # Refused for the state it found (an alternative shown after the CLI's
                # resolve, say), never for how the request is written.
                found = re.search(r"Code: (\w+)", out)
                assert found and found[1] in STATE_REFUSALS, context


async def _run(argv: list[str], *, watch: bool) -> tuple[str, int]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=REPO,
        env={**os.environ, "DURABLE_TARGET": ""},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), WATCH_FOR if watch else RUN_FOR)
    except TimeoutError:
        if not watch:
            raise
        proc.kill()  # it was following a long wait, as documented
        out, _ = await proc.communicate()
        return out.decode(), 0
    assert proc.returncode is not None
    return out.decode(), proc.returncode
