"""Helpers shared by the end-to-end test modules (test-only; no engine code here)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from durable import Invocation, InvocationStatus, Service
from durable.contract import Store
from durable.testing import LocalEngine
from durable.v1 import control_pb2, control_pb2_grpc

EngineFactory = Callable[..., Awaitable[LocalEngine]]
#: The ``engine_store`` fixture: a running engine's store, opened as its processes open it.
StoreOpener = Callable[[LocalEngine], Awaitable[Store]]


async def wait_for_handlers(
    engine: LocalEngine, services: Iterable[Service], timeout: float = 5.0
) -> None:
    """Wait until the control plane lists every handler of ``services``.

    ``start_engine`` may yield before the control plane has seen the worker's registration
    (see test_e2e.py::test_start_engine_yields_once_its_handlers_are_known); waiting here keeps
    the other tests about what they test.
    """
    wanted = {h.full_name for s in services for h in s.handlers}
    deadline = time.monotonic() + timeout
    while wanted - {h.name for h in await engine.client.handlers()}:
        if time.monotonic() > deadline:
            raise AssertionError(f"handlers {sorted(wanted)} never registered")
        await asyncio.sleep(0.005)


async def start_ready(
    factory: EngineFactory, services: list[Service], **kwargs: Any
) -> LocalEngine:
    """Start an engine with ``engine_factory`` and wait until its handlers are invokable."""
    engine = await factory(services, **kwargs)
    await wait_for_handlers(engine, services)
    return engine


async def wait_status(
    engine: LocalEngine, invocation_id: str, status: int, timeout: float = 5.0
) -> Invocation:
    """Poll GetWorkflow until the invocation is in ``status``; return that view."""
    deadline = time.monotonic() + timeout
    while True:
        view = await engine.client.get(invocation_id)
        if view.status == status:
            return view
        if time.monotonic() > deadline:
            wanted = InvocationStatus(status).name
            raise AssertionError(f"{invocation_id} still {view.status.name}, wanted {wanted}")
        await asyncio.sleep(0.01)


async def until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait until ``check()`` holds: an event the engine records, never a time that passed."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.01)


async def settled(
    stub: control_pb2_grpc.DurableControlStub,
    ids: Iterable[str] = (),
    timeout: float = 10.0,
) -> None:
    """Wait until this control plane lists every invocation as its stored record says.

    A result reaches its caller as soon as the outcome is journaled, before the worker writes
    the record, and the index follows the record a moment later: a snapshot of ListWorkflows
    taken in between changes by itself. Tests that compare snapshots wait for this first.
    ``ids``: invocations the test knows of, which must also be listed and, when ended, have
    their record written (``updated_at`` not before ``ended_at``); an invocation whose record
    is not written yet is not listed at all, so the listing alone cannot tell it is missing.
    """
    known = list(ids)
    deadline = time.monotonic() + timeout
    while True:
        listed = await stub.ListWorkflows(control_pb2.ListWorkflowsRequest(page_size=1000))
        lagging = [i for i in known if i not in {s.invocation_id for s in listed.invocations}]
        for summary in listed.invocations:
            stored = await stub.GetWorkflow(
                control_pb2.GetWorkflowRequest(
                    invocation_id=summary.invocation_id, skip_journal=True
                )
            )
            inv = stored.invocation
            unwritten = inv.HasField("ended_at") and (
                inv.updated_at.ToNanoseconds() < inv.ended_at.ToNanoseconds()
            )
            if unwritten or (summary.status, summary.updated_at) != (inv.status, inv.updated_at):
                lagging.append(summary.invocation_id)
        if not lagging:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the index never caught up with {lagging}")
        await asyncio.sleep(0.01)
