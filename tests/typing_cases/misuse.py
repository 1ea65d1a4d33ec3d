"""Misuses the type checker must refuse. Each line marked with an E comment must get a mypy
error containing the text after it; nothing else may (tests/test_typing.py)."""

from __future__ import annotations

from durable import (
    Client,
    Context,
    ObjectContext,
    ObjectSharedContext,
    VirtualObject,
    Workflow,
    WorkflowSharedContext,
)
from tests.typing_cases.typed_calls import Order, Receipt, checkout, ping


async def wrong_input(client: Client) -> None:
    await client.execute(checkout, "not an order")  # E: expected "Callable[[Any, str]


async def wrong_result(client: Client) -> None:
    count: int = await client.execute(checkout, Order("o", 1.0))  # E: Awaitable[int]]"
    print(count)


async def input_to_a_handler_that_takes_none(client: Client) -> None:
    await client.execute(ping, 3)  # E: "Callable[[Context], Coroutine[Any, Any, int]]"


async def call_with_the_wrong_input(ctx: Context) -> None:
    await ctx.call(checkout, 42)  # E: expected "Callable[[Any, int]


async def call_result_misread(ctx: Context) -> None:
    receipt: str = await ctx.call(checkout, Order("o", 1.0))  # E: Awaitable[str]]"
    print(receipt)


async def send_with_the_wrong_input(ctx: Context) -> None:
    await ctx.send(checkout, Receipt("o", 1.0))  # E: expected "Callable[[Any, Receipt]


counter = VirtualObject("typed_counter")
flow = Workflow("typed_flow")


@counter.handler(shared=True)
async def peek(ctx: ObjectSharedContext) -> int:
    ctx.set("n", 1)  # E: "ObjectSharedContext" has no attribute "set"
    return 0


@counter.handler(shared=True)  # E: Value of type variable "ObjectSharedFn"
async def sneaky(ctx: ObjectContext) -> None:
    ctx.set("n", 2)


async def service_reads_state(ctx: Context) -> None:
    await ctx.get("n")  # E: "Context" has no attribute "get"


@flow.handler()
async def query(ctx: WorkflowSharedContext) -> None:
    ctx.clear("stage")  # E: "WorkflowSharedContext" has no attribute "clear"
