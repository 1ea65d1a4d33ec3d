"""The one codec: how a value becomes bytes and back, for inputs, outputs, step results,
object state and promises, in the client, the CLI, the control plane and the worker alike.

A value's stored form is bytes plus a content type:

* JSON (``application/json``) for JSON-able values and dataclasses (objects of their
  fields), under the rules of ``jsonrules`` (finite numbers, 64-bit integers, at most 32
  levels), checked wherever JSON is made or accepted;
* a protobuf message as its binary encoding, ``application/x-protobuf; messageType=<name>``;
* ``bytes`` as ``application/octet-stream``.

``values`` encodes and decodes the stored form, guided by type hints (``encode``,
``decode`` into a dataclass, ``list[Order]``, a message class, ...; ``json_schema`` states the
same rules for the control plane's input checks). ``wire`` carries it in the API's
``durable.v1.Payload``, where JSON may also travel as a ``google.protobuf.Value`` that
grpcurl and other languages read directly; ``from_payload`` with a type reads a payload
exactly as ``decode`` reads the stored form, so a dataclass a handler returns comes back to
the client as that dataclass.
"""

from durable._codec import jsonrules
from durable._codec.values import (
    JSON,
    JSON_CONTENT_TYPE,
    OCTET_STREAM,
    PROTOBUF_CONTENT_TYPE,
    PROTOBUF_PREFIX,
    DecodeFailure,
    convert,
    decode,
    encode,
    is_message_type,
    json_schema,
    json_type,
    jsonable,
    protobuf_content_type,
    protobuf_message_type,
    type_name,
)
from durable._codec.wire import (
    MAX_SAFE_INTEGER,
    from_payload,
    from_value,
    json_bytes_to_value,
    preview,
    stored_form,
    to_payload,
    to_value,
    value_to_json_bytes,
)

__all__ = [
    "JSON",
    "JSON_CONTENT_TYPE",
    "MAX_SAFE_INTEGER",
    "OCTET_STREAM",
    "PROTOBUF_CONTENT_TYPE",
    "PROTOBUF_PREFIX",
    "DecodeFailure",
    "convert",
    "decode",
    "encode",
    "from_payload",
    "from_value",
    "is_message_type",
    "json_bytes_to_value",
    "json_schema",
    "json_type",
    "jsonable",
    "jsonrules",
    "preview",
    "protobuf_content_type",
    "protobuf_message_type",
    "stored_form",
    "to_payload",
    "to_value",
    "type_name",
    "value_to_json_bytes",
]
