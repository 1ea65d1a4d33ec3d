"""direct-grpc-call: call the example HelloService over NATS without the engine, with the
generated stub on a NatsChannel, as any service-to-service call would.

    make example-direct-grpc-call
"""

from __future__ import annotations

import nats

from durable import NatsChannel, RpcStatusError
from examples.tour._common import main, nats_url, prefix
from examples.v1 import hello_pb2, hello_pb2_grpc


async def run() -> None:
    nc = await nats.connect(nats_url())
    try:
        stub = hello_pb2_grpc.HelloServiceStub(NatsChannel(nc, prefix=prefix()))
        reply = await stub.SayHello(hello_pb2.SayHelloRequest(name="NATS"), timeout=5)
        print(f"{reply.greeting} (greeting #{reply.count} of that replica)")
        try:
            await stub.SayHello(hello_pb2.SayHelloRequest(name=""), timeout=5)
        except RpcStatusError as err:
            print(f"empty name: {err.code.name}: {err.message}")
    finally:
        await nc.close()


if __name__ == "__main__":
    main(run)
