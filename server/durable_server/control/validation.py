"""Checks on requests, each failing with the gRPC status and message a person can act on."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import Message

from durable import _serde
from durable._payloads import value_to_json_bytes
from durable._serde import json_type as _json_type
from durable.v1 import types_pb2
from durable_server.control.index import Cursor
from durable_server.ids import is_valid_invocation_id


class RequestError(Exception):
    """A request the server refuses: carries the gRPC status code to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def check_invocation_id(value: str) -> str:
    if not value:
        raise invalid("invocation_id is required")
    if not is_valid_invocation_id(value):
        raise invalid(
            f"invocation_id {value!r} is malformed: ids look like 'inv_' followed by 26 "
            "lowercase letters and digits (as returned by Invoke or ListWorkflows)"
        )
    return value


def _human_size(n: int) -> str:
    return f"{n / (1024 * 1024):.2f} MiB" if n >= 1024 * 1024 else f"{n} bytes"


def payload_to_stored(payload: types_pb2.Payload, limit: int, what: str) -> tuple[bytes, str]:
    """An API Payload as (data, content_type), enforcing the size limit."""
    kind = payload.WhichOneof("value")
    if kind == "json":
        # Sorted keys and whole numbers as integers (google.protobuf.Value keeps every number
        # as a double): the same JSON value always stores as the same bytes.
        try:
            data = value_to_json_bytes(payload.json)
        except ValueError as err:  # NaN or Infinity: not JSON
            raise invalid(f"{what} is not valid JSON: {err}") from err
        content_type = _serde.JSON
    elif kind == "data":
        data = payload.data
        content_type = payload.content_type or _serde.OCTET_STREAM
        if content_type == _serde.JSON:
            try:
                json.loads(data)
            except ValueError as err:
                raise invalid(
                    f"{what} has content_type application/json but is not JSON: {err}"
                ) from err
    else:
        data, content_type = b"null", _serde.JSON
    if len(data) > limit:
        raise RequestError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{what} is {_human_size(len(data))}; the limit is {_human_size(limit)} "
            "(server flag --max-payload-bytes). Store large data elsewhere and pass a reference.",
        )
    return data, content_type


def stored_to_payload(data: bytes, content_type: str) -> types_pb2.Payload:
    """Stored bytes as an API Payload: JSON as a Value (readable in grpcurl), the rest as bytes."""
    if content_type == _serde.JSON:
        value = json_format.ParseDict(
            {"json": json.loads(data) if data else None}, types_pb2.Payload()
        )
        return value
    return types_pb2.Payload(data=data, content_type=content_type)


def validate_input(handler: types_pb2.HandlerInfo, data: bytes, content_type: str) -> None:
    """Refuse input that the handler could not decode, before anything is stored."""
    if handler.input_message:
        expected = _serde.PROTOBUF_PREFIX + handler.input_message
        if content_type != expected and content_type != _serde.JSON:
            raise invalid(
                f"{handler.name} takes protobuf message {handler.input_message}; send it as "
                f"bytes with content_type '{expected}' (got '{content_type}')"
            )
        message_class = _message_class(handler)
        if message_class is None:
            return  # the worker registered no descriptors; it checks the input itself
        try:
            _serde.decode(data, content_type, message_class)
        except _serde.DecodeFailure as err:
            raise invalid(
                f"input is not a valid {handler.input_message} for {handler.name}: {err}"
            ) from err
        return
    if content_type != _serde.JSON:
        if handler.input_schema:
            raise invalid(
                f"{handler.name} takes JSON ({handler.input_type}); got content_type "
                f"'{content_type}'"
            )
        return
    if not handler.input_schema:
        return
    schema = json.loads(handler.input_schema)
    errors = schema_errors(schema, json.loads(data), "input")
    if errors:
        raise invalid(
            f"input does not match {handler.name}({handler.input_type}): " + "; ".join(errors[:5])
        )


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
    """Errors of ``value`` against the JSON schema subset written by ``durable._serde``."""
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
                errors.append(f"{path}: unknown field '{name}'")
            elif isinstance(extra, dict):
                errors += schema_errors(extra, item, f"{path}.{name}")
    elif expected == "array" and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(schema["items"], item, f"{path}[{i}]")
    return errors


# -- page tokens ------------------------------------------------------------------------------


def filter_digest(statuses: list[int], handler: str, key: str) -> str:
    raw = json.dumps([sorted(statuses), handler, key]).encode()
    return hashlib.sha256(raw).hexdigest()[:12]


def encode_page_token(cursor: Cursor, digest: str) -> str:
    raw = json.dumps({"c": cursor.created_ns, "i": cursor.id, "f": digest}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, digest: str) -> Cursor:
    bad = invalid(
        "page_token is not one this server issued for these filters; pass the "
        "next_page_token of the previous page unchanged, with the same filters, or omit it"
    )
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        cursor = Cursor(int(data["c"]), str(data["i"]))
        got_digest = data["f"]
    except (ValueError, KeyError, TypeError) as err:
        raise bad from err
    if got_digest != digest or not is_valid_invocation_id(cursor.id):
        raise bad
    return cursor
