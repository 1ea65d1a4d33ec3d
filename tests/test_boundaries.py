"""Which code may import which: the sdk (``sdk/durable``) never imports the engine, except
the testing helper (the ``durable-nats[testing]`` extra); the engine (``server/``) reaches
the sdk only through its public modules, the generated stubs and ``durable.contract``;
and importing ``durable`` loads no NATS code and no googleapis package, so a client-only
install needs grpcio and protobuf alone (tests/test_packaging.py installs it for real).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import durable.contract

REPO = Path(__file__).resolve().parent.parent
SDK = REPO / "sdk" / "durable"
SERVER = REPO / "server" / "durable_server"

#: The modules of the sdk the engine may import (and their submodules, for the stubs).
SERVER_MAY_IMPORT = (
    "durable",
    "durable.errors",
    "durable.contract",
    "durable.v1",
    "durable.internal.v1",
)
SERVER_MAY_IMPORT_UNDER = ("durable.v1.", "durable.internal.v1.")


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """Every module ``path`` imports, anywhere in it (also inside functions)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:
                # `from durable import _store` imports a private module too.
                if node.module == "durable" and alias.name.startswith("_"):
                    yield node.lineno, f"durable.{alias.name}"


def _sources(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "v1" not in p.relative_to(root).parts)


def test_the_engine_reaches_the_sdk_only_through_its_contract() -> None:
    wrong = [
        f"{path.relative_to(REPO)}:{line}: {module}"
        for path in _sources(SERVER)
        for line, module in _imports(path)
        if module.split(".")[0] == "durable"
        and module not in SERVER_MAY_IMPORT
        and not module.startswith(SERVER_MAY_IMPORT_UNDER)
    ]
    assert not wrong, "import these through durable.contract:\n" + "\n".join(wrong)


def test_the_sdk_never_imports_the_engine_except_its_testing_helper() -> None:
    wrong = [
        f"{path.relative_to(REPO)}:{line}: {module}"
        for path in _sources(SDK)
        if path.name != "testing.py"
        for line, module in _imports(path)
        if module.split(".")[0] == "durable_server"
    ]
    assert not wrong, "\n".join(wrong)


def test_the_contract_exports_what_it_names() -> None:
    missing = [n for n in durable.contract.__all__ if not hasattr(durable.contract, n)]
    assert not missing
    assert sorted(durable.contract.__all__) == sorted(set(durable.contract.__all__))


def test_importing_the_client_loads_no_nats_and_no_googleapis() -> None:
    probe = (
        "import sys, durable\n"
        "c = durable.Client('127.0.0.1:1')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('nats', 'durable_server', 'grpc_status', 'uvloop') or m.startswith('google.rpc'))\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_nats_channel_and_server_load_on_first_use() -> None:
    """The gRPC-over-NATS classes stay importable from ``durable`` (worker extra)."""
    from durable import NatsChannel, NatsServer

    assert NatsChannel.__module__ == NatsServer.__module__ == "durable._rpc"


def _module_name(path: Path, root: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def test_the_engine_and_the_sdk_have_no_import_cycles() -> None:
    """Also none hidden behind ``TYPE_CHECKING``: each module depends on what it names."""
    graph: dict[str, set[str]] = {}
    for root, package in ((SERVER, "durable_server"), (SDK, "durable")):
        for path in _sources(root):
            name = _module_name(path, root, package)
            graph[name] = {m for _, m in _imports(path) if m.split(".")[0] == package}
    modules = set(graph)
    for name in graph:
        graph[name] = {m for m in graph[name] if m in modules and m != name}
    # A package's __init__ that re-exports its modules is not a cycle of its modules.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
