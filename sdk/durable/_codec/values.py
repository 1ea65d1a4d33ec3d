"""Encoding of handler inputs, outputs and step results, guided by type hints.

JSON is the default codec. A protobuf message travels as its binary encoding with content type
``application/x-protobuf; messageType=<full name>``, ``bytes`` as octet-stream. Dataclasses
are JSON objects whose fields are checked and converted recursively, so a handler typed
``async def h(ctx, order: Order)`` receives an ``Order``. :func:`json_schema` describes the
same rules as a JSON schema subset that the control plane checks before it accepts an Invoke.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any

from google.protobuf.message import DecodeError, Message

from durable._codec import jsonrules as _jsonrules

#: Content type of raw bytes.
OCTET_STREAM = "application/octet-stream"
#: Content type of JSON text sent as bytes (the server answers with it for JSON that a
#: ``google.protobuf.Value`` cannot carry exactly, such as integers beyond 2**53).
JSON_CONTENT_TYPE = "application/json"
#: Content type prefix of a serialized protobuf message (followed by ``; messageType=<name>``).
PROTOBUF_CONTENT_TYPE = "application/x-protobuf"
JSON = JSON_CONTENT_TYPE
PROTOBUF_PREFIX = f"{PROTOBUF_CONTENT_TYPE}; messageType="


def jsonable(value: Any) -> Any:
    """``value`` with dataclasses turned into JSON objects, recursively: how the client and
    the handlers' codec (``_serde``) both write a dataclass."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        # Keys stay as they are: a key that is not a string is refused where JSON is made,
        # not silently turned into one.
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def protobuf_message_type(content_type: str) -> str | None:
    """Return the ``messageType`` parameter of a protobuf content type, else ``None``.

    ``"application/x-protobuf; messageType=shop.v1.Order"`` gives ``"shop.v1.Order"``.
    """
    media, *params = (part.strip() for part in content_type.split(";"))
    if media.lower() != PROTOBUF_CONTENT_TYPE:
        return None
    for param in params:
        name, _, val = param.partition("=")
        if name.strip().lower() == "messagetype":
            return val.strip().strip('"') or None
    return None


class DecodeFailure(ValueError):
    """A payload does not decode to the type the handler asked for."""


def protobuf_content_type(message_type: type[Message] | Message) -> str:
    return PROTOBUF_PREFIX + message_type.DESCRIPTOR.full_name


def encode(value: Any) -> tuple[bytes, str]:
    """Encode a value as (data, content_type). Raises TypeError when it cannot, and
    :class:`~durable._codec.jsonrules.JsonRuleError` when its JSON would break the rules every
    stored JSON value follows (finite numbers, 64-bit integers, at most 32 levels)."""
    if isinstance(value, Message):
        return value.SerializeToString(), protobuf_content_type(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value), OCTET_STREAM
    try:
        plain = jsonable(value)
    except RecursionError:  # nested far too deep, or a structure that contains itself
        raise _jsonrules.too_deep("value") from None
    _jsonrules.check(plain, "value")
    try:
        return json.dumps(plain, separators=(",", ":"), allow_nan=False).encode(), JSON
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"cannot encode {type(value).__name__} as JSON: {err}; return JSON-able values, "
            "dataclasses, protobuf messages or bytes"
        ) from err


def is_message_type(tp: Any) -> bool:
    """True for a generated protobuf message class."""
    return isinstance(tp, type) and issubclass(tp, Message)


def decode(data: bytes, content_type: str, tp: Any = Any) -> Any:
    """Decode (data, content_type) into ``tp``; :class:`DecodeFailure` when it does not fit."""
    declared = protobuf_message_type(content_type)
    if is_message_type(tp):
        expected = tp.DESCRIPTOR.full_name
        msg = tp()
        if declared is not None or content_type in (PROTOBUF_CONTENT_TYPE, OCTET_STREAM):
            # Untyped bytes are read as the message asked for; typed ones must be it.
            if declared is not None and declared != expected:
                raise DecodeFailure(f"payload holds a {declared}, not a {expected}")
            try:
                msg.ParseFromString(data)
            except DecodeError as err:
                raise DecodeFailure(f"payload bytes are not a valid {expected}: {err}") from err
            return msg
        if content_type in (JSON, ""):
            from google.protobuf import json_format

            try:
                json_format.Parse(data or b"{}", msg)
            except json_format.ParseError as err:
                raise DecodeFailure(f"JSON payload is not a valid {expected}: {err}") from err
            return msg
        raise DecodeFailure(f"cannot read {content_type!r} as {expected}")
    if content_type == OCTET_STREAM or declared is not None:
        if tp in (bytes, Any):
            return data
        raise DecodeFailure(f"got {content_type} bytes where {_type_name(tp)} was expected")
    try:
        value = json.loads(data) if data else None
    except ValueError as err:
        raise DecodeFailure(f"not valid JSON: {err}") from err
    return convert(value, tp)


def convert(value: Any, tp: Any, path: str = "input") -> Any:
    """Check and convert a decoded JSON value to ``tp``."""
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in args:
            try:
                return convert(value, arg, path)
            except DecodeFailure as err:
                errors.append(str(err))
        raise DecodeFailure(f"{path}: matches none of {_type_name(tp)}")
    if tp is type(None) or tp is None:
        if value is None:
            return None
        raise DecodeFailure(f"{path}: expected null, got {_json_type(value)}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _convert_dataclass(value, tp, path)
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise DecodeFailure(f"{path}: expected number, got {_json_type(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise DecodeFailure(f"{path}: expected integer, got {_json_type(value)}")
    if tp in (str, bool):
        if isinstance(value, tp):
            return value
        raise DecodeFailure(f"{path}: expected {_schema_type(tp)}, got {_json_type(value)}")
    if tp in (list, tuple) or origin in (list, tuple):
        if not isinstance(value, list):
            raise DecodeFailure(f"{path}: expected array, got {_json_type(value)}")
        item = args[0] if args else Any
        out = [convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if (tp is tuple or origin is tuple) else out
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise DecodeFailure(f"{path}: expected object, got {_json_type(value)}")
        vt = args[1] if len(args) == 2 else Any
        return {k: convert(v, vt, f"{path}.{k}") for k, v in value.items()}
    return value


def _convert_dataclass(value: Any, tp: type, path: str) -> Any:
    if not isinstance(value, dict):
        raise DecodeFailure(f"{path}: expected object ({tp.__name__}), got {_json_type(value)}")
    hints = typing.get_type_hints(tp)
    fields = {f.name: f for f in dataclasses.fields(tp)}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise DecodeFailure(f"{path}: unknown field(s) {', '.join(unknown)} for {tp.__name__}")
    kwargs = {}
    for name, field in fields.items():
        if name in value:
            kwargs[name] = convert(value[name], hints.get(name, Any), f"{path}.{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise DecodeFailure(f"{path}: missing required field {name!r} of {tp.__name__}")
    return tp(**kwargs)


def json_schema(tp: Any) -> dict[str, Any] | None:
    """The JSON schema subset for ``tp``; None when any JSON is accepted (or not JSON)."""
    if tp is Any or tp is object or is_message_type(tp) or tp is bytes:
        return None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        subs = [json_schema(a) for a in args]
        if any(s is None for s in subs):
            return None
        return {"anyOf": subs}
    if tp is type(None) or tp is None:
        return {"type": "null"}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        hints = typing.get_type_hints(tp)
        props: dict[str, Any] = {}
        required = []
        for f in dataclasses.fields(tp):
            props[f.name] = json_schema(hints.get(f.name, Any)) or {}
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                required.append(f.name)
        return {
            "type": "object",
            "title": tp.__name__,
            "properties": props,
            "required": required,
            "additionalProperties": False,
        }
    if tp in (list, tuple) or origin in (list, tuple):
        schema: dict[str, Any] = {"type": "array"}
        if args and (item := json_schema(args[0])) is not None:
            schema["items"] = item
        return schema
    if tp is dict or origin is dict:
        schema = {"type": "object"}
        if len(args) == 2 and (vs := json_schema(args[1])) is not None:
            schema["additionalProperties"] = vs
        return schema
    if tp in (str, int, float, bool):
        return {"type": _schema_type(tp)}
    return None


def _schema_type(tp: Any) -> str:
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(tp, "object")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _type_name(tp: Any) -> str:
    if tp is Any:
        return "any"
    if tp is None or tp is type(None):
        return "none"
    if is_message_type(tp):
        return str(tp.DESCRIPTOR.full_name)
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


type_name = _type_name
json_type = _json_type
