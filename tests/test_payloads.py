"""Pure unit tests of the Payload codec shared by the client, the CLI and the engine."""

from __future__ import annotations

import asyncio
import json
import math
import pickle
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from durable import errors
from durable._codec import (
    OCTET_STREAM,
    from_payload,
    from_value,
    json_bytes_to_value,
    preview,
    protobuf_message_type,
    to_payload,
    to_value,
    value_to_json_bytes,
)
from durable.v1 import types_pb2

# ------------------------------------------------------------------------------ JSON values


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -7,
        42,
        2**53,
        -(2**53),
        1.5,
        -0.25,
        1e300,
        "",
        "héllo ✓",
        [],
        {},
        [1, "two", None, [3.5, {"four": False}]],
        {"a": {"b": {"c": [1, 2, {"d": None}]}}, "e": "", "f": []},
    ],
)
def test_json_values_round_trip(value: Any) -> None:
    payload = to_payload(value)
    assert payload.WhichOneof("value") == "json"
    assert from_payload(payload) == value
    # ... and survive the wire.
    wire = types_pb2.Payload.FromString(payload.SerializeToString())
    assert from_payload(wire) == value


def test_scalar_types_are_kept() -> None:
    assert from_payload(to_payload(True)) is True
    assert type(from_payload(to_payload(3))) is int
    assert type(from_payload(to_payload(3.5))) is float
    assert from_payload(to_payload(None)) is None


def test_integral_floats_come_back_as_int() -> None:
    # google.protobuf.Value holds doubles only: 2.0 and 2 are the same number on the wire.
    assert from_payload(to_payload(2.0)) == 2
    assert type(from_payload(to_payload(2.0))) is int


def test_tuples_become_lists() -> None:
    assert from_payload(to_payload((1, (2, 3)))) == [1, [2, 3]]


def test_empty_containers_keep_their_kind() -> None:
    assert to_payload({}).json.WhichOneof("kind") == "struct_value"
    assert to_payload([]).json.WhichOneof("kind") == "list_value"


def test_none_is_json_null() -> None:
    payload = to_payload(None)
    assert payload.json.WhichOneof("kind") == "null_value"


def test_unset_payload_is_none() -> None:
    assert from_payload(types_pb2.Payload()) is None


@pytest.mark.parametrize("big", [2**53 + 1, -(2**53) - 1, 10**30])
def test_integers_beyond_double_precision_are_refused(big: int) -> None:
    with pytest.raises(ValueError, match="too large"):
        to_payload({"n": big})


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="not a valid JSON number"):
        to_payload([bad])


def test_non_json_values_are_refused_with_their_path() -> None:
    with pytest.raises(TypeError, match=r"\$\.items\[1\]: set is not JSON-serializable"):
        to_payload({"items": [1, {2}]})
    with pytest.raises(TypeError, match="keys must be str"):
        to_payload({1: "x"})
    with pytest.raises(TypeError):
        to_payload(object())


# ----------------------------------------------------------------- Value <-> JSON bytes


def test_value_to_json_bytes_is_compact_utf8() -> None:
    value = to_value({"xs": [1.5, None, True], "name": "café", "n": 3})
    data = value_to_json_bytes(value)
    assert data == '{"n":3,"name":"café","xs":[1.5,null,true]}'.encode()  # keys sorted
    assert json.loads(data) == {"name": "café", "n": 3, "xs": [1.5, None, True]}


def test_json_bytes_round_trip() -> None:
    text = b'{"a":[1,2,{"b":null}],"c":"d","e":-0.5}'
    value = json_bytes_to_value(text)
    assert isinstance(value, struct_pb2.Value)
    assert from_value(value) == {"a": [1, 2, {"b": None}], "c": "d", "e": -0.5}
    assert json.loads(value_to_json_bytes(value)) == json.loads(text)
    assert from_value(json_bytes_to_value("[]")) == []


@pytest.mark.parametrize("bad", [b"{", b"NaN", b"[Infinity]", b"", b"{'a': 1}"])
def test_invalid_json_bytes_are_refused(bad: bytes) -> None:
    with pytest.raises(ValueError):
        json_bytes_to_value(bad)


def test_unset_value_is_null() -> None:
    assert from_value(struct_pb2.Value()) is None
    assert value_to_json_bytes(struct_pb2.Value()) == b"null"


# ------------------------------------------------------------------- bytes and protobuf


def test_bytes_travel_as_octet_stream() -> None:
    payload = to_payload(b"\x00\x01binary\xff")
    assert payload.WhichOneof("value") == "data"
    assert payload.content_type == OCTET_STREAM
    assert from_payload(payload) == b"\x00\x01binary\xff"
    assert to_payload(bytearray(b"ab")).data == b"ab"
    assert to_payload(memoryview(b"cd")).data == b"cd"


def test_protobuf_message_round_trip() -> None:
    stamp = timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=123_000_000)
    payload = to_payload(stamp)
    assert payload.WhichOneof("value") == "data"
    assert payload.content_type == ("application/x-protobuf; messageType=google.protobuf.Timestamp")
    assert protobuf_message_type(payload.content_type) == "google.protobuf.Timestamp"
    decoded = from_payload(payload, timestamp_pb2.Timestamp)
    assert isinstance(decoded, timestamp_pb2.Timestamp)
    assert decoded == stamp
    # Without a result type the caller gets the raw bytes.
    assert from_payload(payload) == stamp.SerializeToString()


def test_protobuf_type_mismatch_is_refused() -> None:
    payload = to_payload(timestamp_pb2.Timestamp(seconds=5))
    with pytest.raises(ValueError, match=r"holds a google\.protobuf\.Timestamp"):
        from_payload(payload, duration_pb2.Duration)


def test_undecodable_protobuf_bytes_are_refused() -> None:
    payload = types_pb2.Payload(data=b"\xff\xff\xff", content_type=OCTET_STREAM)
    with pytest.raises(ValueError, match=r"not a valid google\.protobuf\.Timestamp"):
        from_payload(payload, timestamp_pb2.Timestamp)


def test_json_payload_parses_into_a_message() -> None:
    # What a grpcurl user sends for a handler that takes a protobuf message.
    payload = to_payload("2024-01-02T03:04:05Z")
    stamp = from_payload(payload, timestamp_pb2.Timestamp)
    assert stamp.seconds == 1704164645
    with pytest.raises(ValueError, match=r"not a valid durable\.v1\.Failure"):
        from_payload(to_payload({"nope": 1}), types_pb2.Failure)
    # An empty payload gives the empty message.
    assert from_payload(types_pb2.Payload(), types_pb2.Failure) == types_pb2.Failure()


def test_payload_passes_through() -> None:
    payload = types_pb2.Payload(data=b"x", content_type="text/plain")
    assert to_payload(payload) is payload


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/x-protobuf; messageType=shop.v1.Order", "shop.v1.Order"),
        ('Application/X-Protobuf;messagetype="a.B"', "a.B"),
        ("application/x-protobuf", None),
        ("application/octet-stream", None),
        ("", None),
    ],
)
def test_protobuf_message_type(content_type: str, expected: str | None) -> None:
    assert protobuf_message_type(content_type) == expected


def test_preview() -> None:
    assert preview(to_payload({"a": 1})) == '{"a":1}'
    assert preview(to_payload("x" * 100), limit=10) == '"xxxxxxxx…'
    assert preview(to_payload(b"abc")) == "<3 bytes application/octet-stream>"
    assert preview(to_payload(timestamp_pb2.Timestamp(seconds=1))) == (
        "<2 bytes google.protobuf.Timestamp>"
    )
    assert preview(types_pb2.Payload()) == "null"


# ------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "exc",
    [
        errors.TerminalError("boom", 7),
        errors.CancelledError("stop"),
        errors.NotFoundError("no such invocation"),
        errors.RPCError("down", code=grpc.StatusCode.UNAVAILABLE),
        errors.InvocationFailedError("bad", "ValueError", 3, "inv_1"),
        errors.InvocationCancelledError("user asked", "CancelledError", 0, "inv_2"),
        errors.ResultTimeoutError("inv_3", 1.5),
        errors.SuspendInvocation("sleep"),
        errors.NonDeterminismError("changed", index=2, expected="RUN a", actual="RUN b"),
    ],
)
def test_errors_pickle_with_their_attributes(exc: BaseException) -> None:
    clone = pickle.loads(pickle.dumps(exc))
    assert type(clone) is type(exc)
    assert str(clone) == str(exc)
    assert vars(clone) == vars(exc)


def test_error_hierarchy() -> None:
    assert issubclass(errors.CancelledError, errors.TerminalError)
    assert not issubclass(errors.CancelledError, asyncio.CancelledError)
    assert issubclass(errors.InvocationCancelledError, errors.InvocationFailedError)
    assert issubclass(errors.ResultTimeoutError, TimeoutError)
    assert not issubclass(errors.SuspendInvocation, Exception)
    assert not issubclass(errors.NonDeterminismError, Exception)
    err = errors.RPCError.from_status(grpc.StatusCode.NOT_FOUND, "inv_x not found")
    assert type(err) is errors.NotFoundError
    assert err.code is grpc.StatusCode.NOT_FOUND
    assert str(err) == "NOT_FOUND: inv_x not found"
    down = errors.RPCError.from_status(grpc.StatusCode.UNAVAILABLE, "down")
    assert type(down) is errors.UnavailableError and down.status == "UNAVAILABLE"
    other = errors.RPCError.from_status(grpc.StatusCode.DEADLINE_EXCEEDED, "slow")
    assert type(other) is errors.RPCError and other.reason == ""
    assert errors.TerminalError("x", 5).code == 5
    assert str(errors.InvocationFailedError("bad", "ValueError", 3, "inv_1")) == (
        "invocation inv_1 failed: ValueError: bad (code 3)"
    )
