"""The chaos run's clients: a steady load of idempotent invocations through several control
planes, each call failed over to another control plane when it answers UNAVAILABLE (or any
error but a refusal of the request itself) with the same idempotency key.

Every invocation has an idempotency key. Half wait for their result in Invoke (a control
plane killed during the wait cuts the call, and the retry on another one must return the
same invocation); some are invoked a second time with the same key, as a client that lost
the answer would. The awakeables ``chaos/approve`` hands out through its ledger line are
resolved after a random delay. ``drain`` waits for every accepted invocation to end.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from durable import Client, InvocationFailedError, ResultTimeoutError, RPCError
from tests.procs import FAST_RECONNECT

T = TypeVar("T")
Code = grpc.StatusCode

#: Handlers and their share of the load.
MIX = (("chaos/chain", 5), ("chaos/nap", 2), ("chaos/approve", 2), ("chaosobj/add", 2))
OBJECT_KEYS = 8
#: Answers a client expects while a control plane or nats is down: retry elsewhere.
EXPECTED_FAILURES = {Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED}
#: Answers that refuse the request itself: retrying cannot help.
REFUSALS = frozenset({Code.INVALID_ARGUMENT, Code.ALREADY_EXISTS, Code.FAILED_PRECONDITION})
#: For reads of an invocation: NOT_FOUND is an answer (a lost invocation), not an outage.
READ_FINAL = REFUSALS | {Code.NOT_FOUND}
RETRY_FOR = 120.0  # seconds one Invoke is retried before the key counts as refused
INVOKE_WAIT = 20.0  # seconds an Invoke with wait asks the server to wait


@dataclass
class Job:
    key: str  # the idempotency key
    handler: str
    input: dict[str, Any]
    obj_key: str
    wait: bool
    again: float | None  # a second Invoke with the same key this many seconds after
    submitted: float = 0.0
    accepted: float | None = None  # when the first Invoke answered OK
    first_failure: float | None = None
    ids: set[str] = field(default_factory=set)
    invokes: int = 0
    outputs: list[Any] = field(default_factory=list)
    status: str = ""  # how AwaitResult saw it end
    last_error: str = ""

    @property
    def invocation_id(self) -> str:
        return min(self.ids) if self.ids else ""


@dataclass
class Awakeable:
    invocation_id: str
    seen: float  # monotonic
    resolved_ns: int = 0  # wall clock of the answer that it was stored
    answer: str = ""


class Driver:
    def __init__(self, targets: list[str], seed: int, phase: str, ledger: Path, t0: float) -> None:
        self.rng = random.Random(f"chaos-load:{seed}:{phase}")
        self.phase = phase
        self.clients = [
            # The driver fails over to another control plane itself and counts every UNAVAILABLE
            # answer, so the clients' own repeating is off.
            Client(t, options=FAST_RECONNECT, rpc_timeout=10.0, unavailable_retry=None)
            for t in targets
        ]
        self.ledger = ledger
        self.t0 = t0
        self.jobs: dict[str, Job] = {}
        self.answers: collections.Counter[str] = collections.Counter()
        self.unexpected: list[dict[str, Any]] = []
        #: Per call kind, seconds from a call's first try to the try that succeeded.
        self.retried_for: dict[str, list[float]] = collections.defaultdict(list)
        self.awakeables: dict[str, Awakeable] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._submits: set[asyncio.Future[Any]] = set()
        self._ledger_offset = 0

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for client in self.clients:
            await client.close()

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- one call, failed over between control planes -------------------------------------

    async def call(
        self,
        what: str,
        op: Callable[[Client], Awaitable[T]],
        until: float,
        final: frozenset[Code] = REFUSALS,
    ) -> T:
        """``op`` on a random control plane; on a failure that is not ``final``, the next
        control plane, until ``until`` (monotonic) has passed."""
        i = self.rng.randrange(len(self.clients))
        pause = 0.05
        first = time.monotonic()
        failed = False
        while True:
            try:
                tried = time.monotonic()
                result = await op(self.clients[i])
                self.answers[f"{what} OK"] += 1
                if failed:  # failed over: how long the clients could not get through
                    self.retried_for[what].append(tried - first)
                return result
            except RPCError as err:
                failed = True
                code = err.code or Code.UNKNOWN
                self.answers[f"{what} {code.name}"] += 1
                if code in final or time.monotonic() > until:
                    raise
                if code not in EXPECTED_FAILURES and len(self.unexpected) < 50:
                    self.unexpected.append(
                        {
                            "t": self.now(),
                            "call": what,
                            "control": i,
                            "code": code.name,
                            "details": str(err)[:300],
                        }
                    )
            i = (i + 1) % len(self.clients)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)

    # -- the load ----------------------------------------------------------------------------

    def _new_job(self, n: int) -> Job:
        rng = self.rng
        handler = rng.choices([h for h, _ in MIX], [w for _, w in MIX])[0]
        steps = 5 if handler == "chaos/chain" else 2
        ms = [rng.randint(5, 40) for _ in range(steps)]
        if rng.random() < 0.15:  # a long step, for kills and freezes to land inside
            ms[rng.randrange(steps)] = rng.randint(200, 800)
        key = f"{self.phase}-{n}"
        job_input: dict[str, Any] = {"key": key, "ms": ms}
        if handler == "chaos/nap":
            job_input["sleep"] = round(rng.uniform(1.5, 4.0), 3)
        if handler in ("chaos/chain", "chaos/nap") and rng.random() < 0.3:
            job_input["before_ms"] = rng.randint(100, 800)
        obj_key = f"k{rng.randrange(OBJECT_KEYS)}" if handler == "chaosobj/add" else ""
        again = rng.uniform(0.0, 3.0) if rng.random() < 0.2 else None
        return Job(key, handler, job_input, obj_key, rng.random() < 0.5, again)

    async def run(self, seconds: float, rate: float, stop: asyncio.Event) -> None:
        """Submit ``rate`` invocations a second for ``seconds`` (or until ``stop``)."""
        started = time.monotonic()
        n = 0
        while not stop.is_set() and time.monotonic() - started < seconds:
            job = self._new_job(n)
            self.jobs[job.key] = job
            submit = self._spawn(self._submit(job))
            self._submits.add(submit)
            submit.add_done_callback(self._submits.discard)
            n += 1
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)

    async def _invoke(self, job: Job) -> None:
        def op(client: Client) -> Awaitable[Any]:
            job.invokes += 1
            return client.invoke(
                job.handler,
                job.input,
                key=job.obj_key,
                idempotency_key=job.key,
                wait=job.wait,
                wait_timeout=INVOKE_WAIT if job.wait else None,
            )

        try:
            handle = await self.call("Invoke", op, time.monotonic() + RETRY_FOR)
        except RPCError as err:
            job.last_error = f"{(err.code or Code.UNKNOWN).name}: {err}"[:300]
            if job.first_failure is None:
                job.first_failure = self.now()
            return
        if job.accepted is None:
            job.accepted = self.now()
        job.ids.add(handle.id)
        if handle.done:
            try:
                job.outputs.append(await handle.result())
                job.status = "COMPLETED"
            except InvocationFailedError as err:
                job.status = f"ENDED: {err}"[:200]

    async def _submit(self, job: Job) -> None:
        job.submitted = self.now()
        await self._invoke(job)
        if job.again is not None and job.accepted is not None:
            await asyncio.sleep(job.again)
            await self._invoke(job)

    # -- awakeables ---------------------------------------------------------------------------

    async def resolve_awakeables(self, stop: asyncio.Event) -> None:
        """Resolve every awakeable a ``chaos/approve`` step handed out, once, after a delay."""
        while not stop.is_set():
            for line in self._new_ledger_lines():
                awk = line.get("x", "")
                if line.get("n") == "ask" and awk and awk not in self.awakeables:
                    self.awakeables[awk] = Awakeable(line["i"], time.monotonic())
                    self._spawn(self._resolve(awk, self.rng.uniform(0.1, 1.5)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)

    def _new_ledger_lines(self) -> list[dict[str, Any]]:
        try:
            with self.ledger.open("rb") as f:
                f.seek(self._ledger_offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._ledger_offset += len(complete)
        return [json.loads(raw) for raw in complete.splitlines() if raw.strip()]

    async def _resolve(self, awk: str, delay: float) -> None:
        await asyncio.sleep(delay)
        entry = self.awakeables[awk]
        try:
            await self.call(
                "ResolveAwakeable",
                lambda c: c.resolve_awakeable(awk, "approved"),
                time.monotonic() + RETRY_FOR,
            )
            entry.answer = "OK"
        except RPCError as err:
            # ALREADY_EXISTS: an earlier try of ours landed but its answer was lost.
            entry.answer = (err.code or Code.UNKNOWN).name
        entry.resolved_ns = time.time_ns()

    # -- the end -----------------------------------------------------------------------------

    async def drain(self, within: float, progress: Callable[[str], None]) -> float:
        """Wait (up to ``within`` s) for every accepted invocation to end; seconds taken."""
        started = time.monotonic()
        deadline = started + within
        gate = asyncio.Semaphore(64)
        if self._submits:  # Invokes still being retried, or waiting for their result
            progress(f"draining: {len(self._submits)} Invoke calls still open")
            await asyncio.wait(list(self._submits), timeout=within)

        async def settle(job: Job) -> None:
            async with gate:
                while job.status == "" and time.monotonic() < deadline:
                    handle = None

                    async def op(client: Client, inv: str = job.invocation_id) -> Any:
                        nonlocal handle
                        handle = client.handle(inv)
                        return await handle.result(min(10.0, max(deadline - time.monotonic(), 0.1)))

                    try:
                        job.outputs.append(await self.call("AwaitResult", op, deadline, READ_FINAL))
                        job.status = "COMPLETED"
                    except ResultTimeoutError:
                        continue
                    except InvocationFailedError as err:
                        job.status = f"ENDED: {err}"[:200]
                    except RPCError as err:
                        job.last_error = f"AwaitResult {(err.code or Code.UNKNOWN).name}: {err}"
                        return

        pending = [j for j in self.jobs.values() if j.accepted is not None and not j.status]
        waiting = asyncio.gather(*(settle(j) for j in pending))
        while not waiting.done():
            left = sum(1 for j in pending if not j.status)
            progress(f"draining: {left} of {len(pending)} still running")
            await asyncio.wait([waiting], timeout=1.0)
        await waiting
        return time.monotonic() - started
