"""Conversions between Python values and the ``durable.v1.Payload`` wire form.

One codec for the client, the CLI and the engine, so a value means the same everywhere:

* a JSON-able Python value (``None``, ``bool``, ``int``, ``float``, ``str``, lists/tuples and
  ``str``-keyed dicts of those) travels as ``Payload.json`` (a ``google.protobuf.Value``),
  which grpcurl and other languages read directly;
* a protobuf message travels as ``Payload.data`` with content type
  ``application/x-protobuf; messageType=<full name>``;
* ``bytes`` travel as ``Payload.data`` with content type ``application/octet-stream``;
* JSON text may also travel as ``Payload.data`` with content type ``application/json``: the
  server answers so for JSON a ``Value`` cannot carry exactly, and it decodes like ``json``.

``google.protobuf.Value`` stores every number as a double. So integers beyond 2**53 are
refused rather than silently rounded, NaN and infinities are refused (JSON has none), and an
integral number decodes as ``int`` (``1.0`` comes back as ``1``).

Everything here is pure (no I/O, no global state).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, TypeVar, overload

from google.protobuf import struct_pb2
from google.protobuf.message import Message

from durable._codec.values import (
    JSON_CONTENT_TYPE,
    OCTET_STREAM,
    PROTOBUF_CONTENT_TYPE,
    decode,
    jsonable,
    protobuf_message_type,
)
from durable.v1 import types_pb2

#: Largest integer a double holds exactly; JSON numbers beyond it lose precision.
MAX_SAFE_INTEGER = 2**53

M = TypeVar("M", bound=Message)


# --------------------------------------------------------------------------------------------
# Python value <-> google.protobuf.Value
# --------------------------------------------------------------------------------------------


def to_value(obj: Any) -> struct_pb2.Value:
    """Convert a JSON-able Python value to a ``google.protobuf.Value``.

    Raises ``TypeError`` for values JSON cannot express (sets, objects, non-``str`` keys) and
    ``ValueError`` for numbers a ``Value`` cannot hold exactly (NaN, infinities, integers
    beyond 2**53), naming where in the structure the bad value sits.
    """
    out = struct_pb2.Value()
    _fill_value(out, obj, "$")
    return out


def _fill_value(out: struct_pb2.Value, obj: Any, path: str) -> None:
    if obj is None:
        out.null_value = struct_pb2.NULL_VALUE
    elif isinstance(obj, bool):  # before int: bool is an int subclass
        out.bool_value = obj
    elif isinstance(obj, int):
        if abs(obj) > MAX_SAFE_INTEGER:
            raise ValueError(
                f"{path}: integer {obj} is too large for a JSON number (limit 2**53); "
                "send it as a string"
            )
        out.number_value = obj
    elif isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"{path}: {obj} is not a valid JSON number")
        out.number_value = obj
    elif isinstance(obj, str):
        out.string_value = obj
    elif isinstance(obj, Mapping):
        out.struct_value.SetInParent()  # selects the oneof even for an empty dict
        fields = out.struct_value.fields
        for key, item in obj.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"{path}: JSON object keys must be str, got {type(key).__name__} {key!r}"
                )
            _fill_value(fields[key], item, f"{path}.{key}")
    elif isinstance(obj, list | tuple):
        out.list_value.SetInParent()
        values = out.list_value.values
        for i, item in enumerate(obj):
            _fill_value(values.add(), item, f"{path}[{i}]")
    else:
        raise TypeError(
            f"{path}: {type(obj).__name__} is not JSON-serializable; pass JSON types, bytes "
            "or a protobuf message"
        )


def from_value(value: struct_pb2.Value) -> Any:
    """Convert a ``google.protobuf.Value`` back to plain Python (dict, list, str, ...).

    An unset ``Value`` is ``None``; integral numbers come back as ``int``.
    """
    kind = value.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "bool_value":
        return value.bool_value
    if kind == "number_value":
        number = value.number_value
        if number.is_integer() and abs(number) <= MAX_SAFE_INTEGER:
            return int(number)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "struct_value":
        return {key: from_value(item) for key, item in value.struct_value.fields.items()}
    return [from_value(item) for item in value.list_value.values]


def value_to_json_bytes(value: struct_pb2.Value) -> bytes:
    """Serialize a ``google.protobuf.Value`` to compact UTF-8 JSON with sorted keys.

    Sorting makes the bytes deterministic (a ``Struct`` keeps no key order), so equal values
    always serialize the same way.
    """
    return json.dumps(
        from_value(value),
        ensure_ascii=False,
        separators=(",", ":"),
        allow_nan=False,
        sort_keys=True,
    ).encode()


def json_bytes_to_value(data: bytes | str) -> struct_pb2.Value:
    """Parse JSON text into a ``google.protobuf.Value``.

    Raises ``ValueError`` for invalid JSON (including ``NaN``/``Infinity``, which Python's
    parser would otherwise accept) and for numbers a ``Value`` cannot hold exactly.
    """
    return to_value(json.loads(data, parse_constant=_reject_constant))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# --------------------------------------------------------------------------------------------
# Python value <-> Payload
# --------------------------------------------------------------------------------------------


def to_payload(value: Any) -> types_pb2.Payload:
    """Encode a Python value as a ``Payload``.

    A protobuf message becomes typed bytes, ``bytes``-like values become octet-stream bytes,
    a ``Payload`` is passed through unchanged, and anything else must be JSON-able (see
    :func:`to_value`).
    """
    if isinstance(value, types_pb2.Payload):
        return value
    if isinstance(value, Message):
        return types_pb2.Payload(
            data=value.SerializeToString(deterministic=True),
            content_type=f"{PROTOBUF_CONTENT_TYPE}; messageType={value.DESCRIPTOR.full_name}",
        )
    if isinstance(value, bytes | bytearray | memoryview):
        return types_pb2.Payload(data=bytes(value), content_type=OCTET_STREAM)
    return types_pb2.Payload(json=to_value(jsonable(value)))


@overload
def from_payload(payload: types_pb2.Payload, result_type: None = None) -> Any: ...


@overload
def from_payload(payload: types_pb2.Payload, result_type: type[M]) -> M: ...


@overload
def from_payload(payload: types_pb2.Payload, result_type: Any) -> Any: ...


def from_payload(payload: types_pb2.Payload, result_type: Any = None) -> Any:
    """Decode a ``Payload`` into a Python value.

    Without ``result_type``: JSON becomes plain Python, bytes stay ``bytes``, and an empty
    payload (neither set) is ``None``, as the protocol defines. With one (a protobuf message
    class, a dataclass, ``list[Order]``, ...), the payload is read exactly as a worker reads
    a stored value of that type (``values.decode``): one set of rules on both sides.
    Raises ``DecodeFailure`` (a ``ValueError``) when it does not fit.
    """
    kind = payload.WhichOneof("value")
    if result_type is None:
        if kind == "json":
            return from_value(payload.json)
        if kind == "data":
            if payload.content_type == JSON_CONTENT_TYPE:
                # JSON a Value cannot carry exactly (integers beyond 2**53) comes as bytes.
                return json.loads(payload.data) if payload.data else None
            return payload.data
        return None
    return decode(*stored_form(payload), result_type)


def stored_form(payload: types_pb2.Payload) -> tuple[bytes, str]:
    """A payload as the engine stores values: bytes and their content type."""
    kind = payload.WhichOneof("value")
    if kind == "json":
        return value_to_json_bytes(payload.json), JSON_CONTENT_TYPE
    if kind == "data":
        return payload.data, payload.content_type
    return b"", JSON_CONTENT_TYPE


def preview(payload: types_pb2.Payload, limit: int = 80) -> str:
    """Return a short, one-line, human-readable rendering of a payload (for tables and logs).

    JSON is shown compact (cut to ``limit`` characters with an ellipsis); bytes are shown as
    their size and type, e.g. ``<12 bytes shop.v1.Order>``.
    """
    kind = payload.WhichOneof("value")
    if kind == "json":
        text = value_to_json_bytes(payload.json).decode()
    elif kind == "data" and payload.content_type == JSON_CONTENT_TYPE:
        text = payload.data.decode("utf-8", "replace")
    elif kind == "data":
        what = protobuf_message_type(payload.content_type) or payload.content_type or OCTET_STREAM
        text = f"<{len(payload.data)} bytes {what}>"
    else:
        text = "null"
    if len(text) > limit:
        return text[: max(limit - 1, 0)] + "…"
    return text
