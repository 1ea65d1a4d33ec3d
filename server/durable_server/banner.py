"""What ``durable dev`` prints once it is up: where everything is, and commands to try.

Every command is built from what this process really hosts: only registered handlers, an
example input that fits each one's input type (from the JSON schema it registers), ``--key``
for objects and workflows, ``--target`` when the address is not the default, and the path of
the ``durable`` program as the user can type it from where they are. Each command is one
line starting with that path, so tests can extract and run them as printed.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from durable.contract import DEFAULT_TARGET, HandlerDef, is_message_type, json_schema
from durable.v1 import types_pb2

#: Handlers shown first when hosted (the tour's), then the others in name order.
_TOUR = ("greeter/greet", "orders/checkout", "counter/add")
#: Invoke lines at most: the rest is one `durable handlers` away.
_MAX_INVOKES = 4
_KEYED = (
    types_pb2.HANDLER_KIND_OBJECT_EXCLUSIVE,
    types_pb2.HANDLER_KIND_OBJECT_SHARED,
    types_pb2.HANDLER_KIND_WORKFLOW_RUN,
    types_pb2.HANDLER_KIND_WORKFLOW_SHARED,
)


def durable_program() -> str:
    """How to run ``durable`` from the current directory: its bare name when that is what
    PATH finds, else a path relative to here when it lies below, else absolute."""
    me = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if me is None or me.name != "durable":
        me = Path(sys.executable).with_name("durable")
    found = shutil.which("durable")
    if found and Path(found).resolve() == me:
        return "durable"
    try:
        rel = me.relative_to(Path.cwd())
    except ValueError:
        return str(me)
    return str(rel) if rel.parts[0] != ".." else str(me)


def example_value(schema: dict[str, Any] | None, name: str = "") -> Any:
    """A small value that satisfies ``schema`` (the subset ``durable._codec.json_schema`` emits)."""
    if not schema:
        return {}
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"] or schema["anyOf"]
        return example_value(options[0], name)
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "string":
        return "World" if not name else f"{name}-1"
    if kind == "integer":
        return 1
    if kind == "number":
        return 12.5
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    if kind == "array":
        return [example_value(schema.get("items"), name)]
    props: dict[str, Any] = schema.get("properties", {})
    required = schema.get("required", list(props))
    return {k: example_value(v, k) for k, v in props.items() if k in required}


def invoke_line(program: str, h: HandlerDef, target_flag: str) -> str:
    """``durable invoke`` of ``h`` with an input its type accepts."""
    parts = [program, "invoke", h.full_name, *shlex.split(target_flag)]
    if h.kind in _KEYED:
        parts += ["--key", "k1"]
    if h.takes_input:
        if is_message_type(h.input_type):
            value: Any = {}
        else:
            value = example_value(json_schema(h.input_type))
        parts.append(json.dumps(value))
    return shlex.join(parts)


def _shown(handlers: list[HandlerDef]) -> list[HandlerDef]:
    by_name = {h.full_name: h for h in handlers}
    first = [by_name[n] for n in _TOUR if n in by_name]
    rest = sorted((h for h in handlers if h.full_name not in _TOUR), key=lambda h: h.full_name)
    return (first + rest)[:_MAX_INVOKES]


def banner(
    target: str,
    nats_url: str,
    sync: str,
    data: Path,
    worker_id: str,
    handlers: list[HandlerDef],
    *,
    metrics: str = "",
    console: str = "",
) -> str:
    """The text ``durable dev`` prints when it is ready."""
    program = durable_program()
    flag = "" if target == DEFAULT_TARGET else f" --target {target}"
    names = ", ".join(h.full_name for h in handlers) or "nothing (no --module given)"
    lines = [
        "",
        "durable dev is running",
        f"  gRPC DurableControl  {target}   (reflection + health on)",
        f"  nats-server          {nats_url}   JetStream under {data} (sync_interval={sync})",
        f"  worker               {worker_id} serving {names}",
        *([f"  web console          {console}"] if console else []),
        *([f"  Prometheus metrics   {metrics}"] if metrics else []),
        "",
        "Try it:",
        f"  {program} handlers{flag}",
    ]
    shown = _shown(handlers)
    lines += [f"  {invoke_line(program, h, flag)}" for h in shown]
    lines += [f"  {program} list{flag}", f"  {program} get{flag} <invocation-id>"]
    if shown:
        h = shown[0]
        body: dict[str, Any] = {"handler": h.full_name, "wait": True}
        if h.kind in _KEYED:
            body["key"] = "k1"
        if h.takes_input and not is_message_type(h.input_type):
            body["input"] = {"json": example_value(json_schema(h.input_type))}
        data_arg = shlex.quote(json.dumps(body))
        lines += [
            f"  grpcurl -plaintext {target} list",
            f"  grpcurl -plaintext -d {data_arg} {target} durable.v1.DurableControl/Invoke",
        ]
    lines += ["", f"Ctrl-C stops everything; data stays under {data}.", ""]
    return "\n".join(lines)
