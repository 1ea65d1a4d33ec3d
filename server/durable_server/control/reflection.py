"""gRPC server reflection, as grpcurl and buf curl use it: both protocol versions, every symbol.

* grpcio-reflection serves ``grpc.reflection.v1alpha`` only, while grpcurl and buf curl try
  ``grpc.reflection.v1`` first (buf curl ``--reflect-protocol grpc-v1`` asks for it alone).
  The two protocols have the same messages under another package, so one servicer answers
  both: v1 requests are read and answered with the v1alpha message classes, which are
  wire-identical. The v1 file itself is added to the descriptor pool (the v1alpha file with
  its package renamed), so that ``grpcurl describe grpc.reflection.v1.ServerReflection``
  works too.
* protobuf's descriptor pool finds services, messages, enums and fields by name, but not a
  method (``durable.v1.DurableControl.Invoke``) or an enum value: ``grpcurl describe`` of
  those answered "Symbol not found". :class:`_SymbolPool` answers them with the file of the
  service or enum that declares them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
import grpc.aio
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import _async as aio
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_reflection.v1alpha.reflection_pb2_grpc import (
    ServerReflectionServicer,
    add_ServerReflectionServicer_to_server,
)

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
_V1ALPHA = "grpc.reflection.v1alpha"
_V1 = "grpc.reflection.v1"


def _add_v1_file(pool: descriptor_pool.DescriptorPool) -> None:
    """Add grpc/reflection/v1/reflection.proto to ``pool``: v1alpha's file, renamed."""
    try:
        pool.FindFileByName("grpc/reflection/v1/reflection.proto")
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = _V1
    old, new = f".{_V1ALPHA}.", f".{_V1}."
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(old, new)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    pool.Add(proto)


class _SymbolPool:
    """The default pool, also resolving method and enum value symbols to their file."""

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self._pool = pool

    def FindFileContainingSymbol(self, symbol: str) -> FileDescriptor:
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            parent, _, member = symbol.rpartition(".")
            if not parent:
                raise
        try:
            service = self._pool.FindServiceByName(parent)
        except KeyError:
            service = None
        if service is not None and member in service.methods_by_name:
            return service.file
        try:
            enum = self._pool.FindEnumTypeByName(parent)
        except KeyError:
            enum = None
        if enum is not None and member in enum.values_by_name:
            return enum.file
        raise KeyError(symbol)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


def enable_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serve reflection v1 and v1alpha on ``server``, listing ``service_names`` and both
    reflection services."""
    pool = descriptor_pool.Default()
    _add_v1_file(pool)
    names = (*service_names, reflection.SERVICE_NAME, V1_SERVICE_NAME)
    servicer: ServerReflectionServicer = aio.ReflectionServicer(names, pool=_SymbolPool(pool))
    add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.method_handlers_generic_handler(
        V1_SERVICE_NAME,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((v1,))
