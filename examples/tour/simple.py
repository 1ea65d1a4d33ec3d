"""simple: invoke a handler and print its result, in a few lines.

make example-simple        (with `make run` in another terminal)
"""

from __future__ import annotations

from examples.tour._common import client, main


async def run() -> None:
    async with client() as c:
        greeting = await c.execute("greeter/greet", "World", timeout=30)
        print(greeting)


if __name__ == "__main__":
    main(run)
