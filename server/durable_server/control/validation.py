"""Checks on requests, each failing with the gRPC status and message a person can act on."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
from typing import Any, TypeAlias

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from durable.contract import (
    MAX_CONTENT_TYPE_CHARS,
    MAX_PAGE_TOKEN_CHARS,
    MAX_REASON_BYTES,
    codec,
    from_value,
    is_valid_invocation_id,
    json_rules,
    quote,
    text_problem,
    to_value,
)
from durable.contract import json_type as _json_type
from durable.v1 import errors_pb2, types_pb2
from durable_server.control.index import Cursor

Reason: TypeAlias = errors_pb2.ErrorReason.ValueType
E = errors_pb2


class RequestError(Exception):
    """A request the engine refuses: the message for a person, and for programs the
    ``durable.v1.ErrorReason`` with its metadata (errors.proto documents each reason's
    metadata and its status code). Transport-neutral: the gRPC servicer maps the reason to
    a status code (``control.errors.STATUS_OF``), in one place."""

    def __init__(self, message: str, reason: Reason, **metadata: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.metadata = metadata


def invalid(
    message: str, reason: Reason = E.ERROR_REASON_FIELD_INVALID, **metadata: str
) -> RequestError:
    """A request that breaks a rule; by default a field's (name it: ``field=...``)."""
    return RequestError(message, reason, **metadata)


def check_invocation_id(value: str) -> str:
    if not value:
        raise invalid("invocation_id is required", field="invocation_id")
    if not is_valid_invocation_id(value):
        raise invalid(
            f"invocation_id {quote(value)} is malformed: ids look like 'inv_' followed by 26 "
            "lowercase letters and digits (as returned by Invoke or ListWorkflows)",
            E.ERROR_REASON_INVOCATION_ID_MALFORMED,
            invocation_id=value[:64],
        )
    return value


def check_text(what: str, value: str, max_chars: int, *, required: str = "") -> str:
    """A key or a name (``limits.text_problem``); ``required`` says what an empty one should
    have been, when it may not be empty."""
    if not value:
        if required:
            raise invalid(f"{what} is required: {required}", field=what)
        return value
    problem = text_problem(value, max_chars)
    if problem is not None:
        shown = "" if len(value) > max_chars else f" {quote(value)}"
        raise invalid(f"{what}{shown} {problem}", field=what)
    return value


def check_reason(reason: str) -> str:
    """A reason (Pause, Cancel, Kill, rejections) is a short text for people."""
    size = len(reason.encode())
    if size > MAX_REASON_BYTES:
        raise invalid(
            f"reason is {size} bytes; at most {MAX_REASON_BYTES} are allowed. Give a short "
            "reason and keep the details elsewhere",
            field="reason",
        )
    return reason


# google.protobuf.Duration's own range: about 10,000 years either way.
_MAX_DURATION_SECONDS = 315_576_000_000
_MAX_NANOS = 999_999_999


def duration_seconds(duration: Duration, what: str) -> float:
    """A request's Duration in seconds, refusing one protobuf itself calls invalid (instead
    of overflowing when converted)."""
    seconds, nanos = duration.seconds, duration.nanos
    if (
        abs(seconds) > _MAX_DURATION_SECONDS
        or abs(nanos) > _MAX_NANOS
        or (seconds > 0 and nanos < 0)
        or (seconds < 0 and nanos > 0)
    ):
        raise invalid(
            f"{what} is not a valid duration: seconds must lie within "
            f"±{_MAX_DURATION_SECONDS:,} and nanos within ±{_MAX_NANOS:,}, with the same sign",
            field=what,
        )
    return seconds + nanos / 1e9


def timestamp_ns(value: Any, field: str) -> int:
    """A request's Timestamp in nanoseconds since the epoch; INVALID_ARGUMENT naming
    ``field`` when it is not a time protobuf allows (years 1 to 9999, nanos below 1e9)."""
    try:
        return int(value.ToNanoseconds())
    except ValueError:
        raise invalid(
            f"{field} is not a valid time: seconds must be between -62135596800 and "
            "253402300799 (years 1 to 9999), nanos between 0 and 999999999",
            field=field,
        ) from None


def check_enum(what: str, value: int, enum: Any) -> int:
    """An enum field holding a number its enum does not define (proto3 passes those on)."""
    if value not in enum.values():
        raise invalid(f"{what} {value} is not one of {', '.join(enum.keys())}", field=what)
    return value


def _human_size(n: int) -> str:
    return f"{n / (1024 * 1024):.2f} MiB" if n >= 1024 * 1024 else f"{n} bytes"


def payload_to_stored(payload: types_pb2.Payload, limit: int, what: str) -> tuple[bytes, str]:
    """An API Payload as (data, content_type), enforcing the size limit and, for JSON (as
    ``json`` or as ``data`` with content type ``application/json``), the rules every stored
    JSON value follows (``durable._codec.jsonrules``), so that nothing stored is a value the API
    could not hand back unchanged. ``what`` names the payload in messages ("input")."""
    kind = payload.WhichOneof("value")
    if kind == "json":
        # Sorted keys and whole numbers as integers (google.protobuf.Value keeps every number
        # as a double): the same JSON value always stores as the same bytes.
        try:
            value = from_value(payload.json)
        except RecursionError:
            raise invalid(
                str(json_rules.too_deep(what)), E.ERROR_REASON_PAYLOAD_INVALID, field=what
            ) from None
        try:
            json_rules.check(value, what)
        except json_rules.JsonRuleError as err:
            raise invalid(str(err), E.ERROR_REASON_PAYLOAD_INVALID, field=what) from None
        data = json.dumps(
            value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, sort_keys=True
        ).encode()
        content_type = codec.JSON
    elif kind == "data":
        data = payload.data
        content_type = payload.content_type or codec.OCTET_STREAM
        check_text(f"the content_type of {what}", content_type, MAX_CONTENT_TYPE_CHARS)
    else:
        data, content_type = b"null", codec.JSON
    if len(data) > limit:
        raise RequestError(
            f"{what} is {_human_size(len(data))}; the limit is {_human_size(limit)} "
            "(server flag --max-payload-bytes). Store large data elsewhere and pass a reference.",
            E.ERROR_REASON_PAYLOAD_TOO_LARGE,
            field=what,
            limit_bytes=str(limit),
        )
    if kind == "data" and content_type == codec.JSON:
        try:
            json_rules.parse(data, what)
        except json_rules.JsonRuleError as err:
            raise invalid(
                f"{err} (data with content_type application/json)",
                E.ERROR_REASON_PAYLOAD_INVALID,
                field=what,
            ) from None
    return data, content_type


def stored_to_payload(data: bytes, content_type: str) -> types_pb2.Payload:
    """Stored bytes as an API Payload: JSON as a Value (readable in grpcurl), the rest as
    bytes. JSON that a Value cannot carry exactly (integers beyond 2**53, nesting deeper
    than protobuf clients read) stays bytes with content type ``application/json``, and so
    does anything stored as JSON that does not parse (written by older versions): a read
    never alters a value, and never fails on one."""
    if content_type == codec.JSON:
        value = _exact_value(data)
        if value is not None:
            return types_pb2.Payload(json=value)
    return types_pb2.Payload(data=data, content_type=content_type)


def _exact_value(data: bytes) -> struct_pb2.Value | None:
    if not data:
        return struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)
    try:
        value = json.loads(data)
        json_rules.check(value, "value")
        return to_value(value)  # refuses integers a double cannot hold exactly
    except (ValueError, TypeError, RecursionError):
        return None


def validate_input(handler: types_pb2.HandlerInfo, data: bytes, content_type: str) -> None:
    """Refuse input that the handler could not decode, before anything is stored."""
    if handler.input_message:
        expected = codec.PROTOBUF_PREFIX + handler.input_message
        if content_type != expected and content_type != codec.JSON:
            raise invalid(
                f"{handler.name} takes protobuf message {handler.input_message}; send it as "
                f"bytes with content_type '{expected}' (got {quote(content_type)})",
                E.ERROR_REASON_INPUT_INVALID,
                handler=handler.name,
            )
        if content_type == codec.JSON and not isinstance(_json_or_none(data), dict):
            raise invalid(
                f"{handler.name} takes protobuf message {handler.input_message}: send its JSON "
                f"form, an object such as {{}} (got {_json_kind(data)})",
                E.ERROR_REASON_INPUT_INVALID,
                handler=handler.name,
            )
        message_class = _message_class(handler)
        if message_class is None:
            return  # the worker registered no descriptors; it checks the input itself
        try:
            codec.decode(data, content_type, message_class)
        except (ValueError, TypeError, OverflowError) as err:  # DecodeFailure, and the
            # protobuf JSON parser's own errors on odd input
            raise invalid(
                f"input is not a valid {handler.input_message} for {handler.name}: "
                f"{quote(_without_internals(str(err)), 300)}",
                E.ERROR_REASON_INPUT_INVALID,
                handler=handler.name,
            ) from None
        return
    if content_type != codec.JSON:
        if handler.input_schema:
            raise invalid(
                f"{handler.name} takes JSON ({handler.input_type}); got content_type "
                f"{quote(content_type)}",
                E.ERROR_REASON_INPUT_INVALID,
                handler=handler.name,
            )
        return
    if not handler.input_schema:
        return
    schema = json.loads(handler.input_schema)
    errors = schema_errors(schema, json.loads(data), "input")
    if errors:
        raise invalid(
            f"input does not match {handler.name}({handler.input_type}): " + "; ".join(errors[:5]),
            E.ERROR_REASON_INPUT_INVALID,
            handler=handler.name,
        )


def _json_or_none(data: bytes) -> Any:
    try:
        return json.loads(data) if data else None
    except ValueError:
        return None


def _json_kind(data: bytes) -> str:
    """What a JSON input is, in a person's words: "no input", "null", "a number"..."""
    if not data:
        return "no input"
    value = _json_or_none(data)
    kinds = {bool: "true or false", int: "a number", float: "a number", str: "a string"}
    if value is None:
        return "null"
    if isinstance(value, list):
        return "a list"
    return kinds.get(type(value), "not an object")


#: Python exception names a library put into its message ("TypeError: ..."): not for clients.
_EXCEPTION_NAME = re.compile(r"\b[A-Z]\w*(Error|Exception): ")


def _without_internals(message: str) -> str:
    return _EXCEPTION_NAME.sub("", message)


@functools.lru_cache(maxsize=256)
def _message_class_from(message: str, descriptor_set: bytes) -> type[Message] | None:
    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString(descriptor_set)
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    try:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(message))
    except KeyError:
        return None


def _message_class(handler: types_pb2.HandlerInfo) -> type[Message] | None:
    """The input message class built from the descriptors the worker registered."""
    if not handler.input_descriptor_set:
        return None
    return _message_class_from(handler.input_message, handler.input_descriptor_set)


def schema_errors(schema: dict[str, Any], value: Any, path: str) -> list[str]:
    """Errors of ``value`` against the JSON schema subset written by ``durable._codec``."""
    if "anyOf" in schema:
        options = [schema_errors(s, value, path) for s in schema["anyOf"]]
        if any(not errs for errs in options):
            return []
        return [f"{path}: matches none of the allowed types ({'; '.join(options[0])})"]
    expected = schema.get("type")
    if expected is None:
        return []
    actual = _json_type(value)
    if expected != actual and not (expected == "number" and actual == "integer"):
        return [f"{path}: expected {expected}, got {actual}"]
    errors: list[str] = []
    if expected == "object":
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path}: missing required field '{name}'")
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in props:
                errors += schema_errors(props[name], item, f"{path}.{name}")
            elif extra is False:
                errors.append(f"{path}: unknown field {quote(name)}")
            elif isinstance(extra, dict):
                errors += schema_errors(extra, item, f"{path}.{quote(name, 40)}")
    elif expected == "array" and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(schema["items"], item, f"{path}[{i}]")
    return errors


# -- page tokens ------------------------------------------------------------------------------


def filter_digest(statuses: list[int], handler: str, key: str, *more: str | int) -> str:
    """What a page token is bound to: the filters it was issued for. ``more``: the filters
    added since (service, creation range), appended only when set, so tokens issued before
    them stay valid."""
    extra = list(more)
    while extra and not extra[-1]:
        extra.pop()
    raw = json.dumps([sorted(statuses), handler, key, *extra]).encode()
    return hashlib.sha256(raw).hexdigest()[:12]


def encode_page_token(cursor: Cursor, digest: str) -> str:
    raw = json.dumps({"c": cursor.created_ns, "i": cursor.id, "f": digest}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, digest: str) -> Cursor:
    bad = invalid(
        "page_token is not one this server issued for these filters; pass the "
        "next_page_token of the previous page unchanged, with the same filters, or omit it",
        E.ERROR_REASON_PAGE_TOKEN_INVALID,
    )
    if len(token) > MAX_PAGE_TOKEN_CHARS:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        cursor = Cursor(int(data["c"]), str(data["i"]))
        got_digest = data["f"]
    except (ValueError, KeyError, TypeError, RecursionError, OverflowError):
        raise bad from None
    if got_digest != digest or not is_valid_invocation_id(cursor.id):
        raise bad
    return cursor
