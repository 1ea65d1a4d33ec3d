"""Prometheus metrics: a load with failures, retries, sleeps, cancels and a kill goes
through a control plane process and a worker process, each with ``--metrics-listen``; both
endpoints are scraped and their counters and histograms must equal what the engine
recorded (the records and journals read back through DurableControl), not merely exist."""

from __future__ import annotations

import asyncio
import collections
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families

from durable import Client
from durable._store.config import EngineConfig
from durable.errors import NotFoundError
from durable.v1 import types_pb2
from durable_server.natsd import EmbeddedNats
from tests.procs import ProcGroup, free_port, wait_healthy

pytestmark = pytest.mark.slow

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(address: str) -> Samples:
    """Every sample of one endpoint, by name and sorted labels."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: list[Samples], name: str, **labels: str) -> float:
    """The sum of ``name`` over both endpoints, over samples whose labels include these."""
    return sum(
        value
        for scraped in samples
        for (sample, have), value in scraped.items()
        if sample == name and set(labels.items()) <= set(have)
    )


async def wait_until(check: Any, what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"not {what} within {within}s"
        await asyncio.sleep(0.1)


async def test_metrics_count_what_the_engine_recorded(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    group = ProcGroup(
        tmp_path / "logs",
        nats_server.url,
        f"m{uuid.uuid4().hex[:8]}",
        ack_wait=5.0,
        ledger=tmp_path / "ledger",
        module="tests.telemetry_handlers",
    )
    port, control_metrics, worker_metrics = free_port(), free_port(), free_port()
    endpoints = [f"127.0.0.1:{control_metrics}", f"127.0.0.1:{worker_metrics}"]
    try:
        server = group.server(port)
        server.args += ["--metrics-listen", endpoints[0]]
        server.start()
        await wait_healthy(f"127.0.0.1:{port}", proc=server)
        worker = group.worker(slots=16, extra=["--metrics-listen", endpoints[1]]).start()
        await worker.wait_for_log("serving")
        async with Client(f"127.0.0.1:{port}") as client:
            load = (
                [("tele/ok", i) for i in range(20)]
                + [("tele/doomed", i) for i in range(5)]
                + [("tele/flaky", 2) for _ in range(5)]
                + [("tele/second_time", i) for i in range(4)]
                + [("tele/sleeper", 0.2) for _ in range(3)]
                + [("tele/sleeper", 600.0) for _ in range(4)]
            )
            handles = [await client.start(h, arg) for h, arg in load]
            long_sleepers = [h.id for h in handles[-4:]]
            with pytest.raises(NotFoundError):
                await client.start("tele/nothing_here", 1)  # a refused Invoke is counted too

            async def only_long_sleepers_left() -> bool:
                page = await client.list(handler="", page_size=1000)
                live = [i for i in page.invocations if i.status not in _ENDED]
                return sorted(i.id for i in live) == sorted(long_sleepers) and all(
                    i.status == _SUSPENDED for i in live
                )

            await wait_until(only_long_sleepers_left, "all but the long sleepers ended")
            # Gauges: the four long sleepers are suspended, nothing is queued.
            scraped = [scrape(a) for a in endpoints]
            assert total(scraped, "durable_invocations", service="tele", status="SUSPENDED") == 4
            assert total(scraped, "durable_queue_backlog", service="tele") == 0
            assert total(scraped, "durable_live_workers", service="tele") == 1
            assert total(scraped, "durable_worker_slots") == 16

            for inv in long_sleepers[:3]:
                await client.cancel(inv, reason="metrics test")
            await client.kill(long_sleepers[3], reason="metrics test")

            async def all_ended() -> bool:
                page = await client.list(page_size=1000)
                return all(i.status in _ENDED for i in page.invocations)

            await wait_until(all_ended, "everything ended")
            views = [await client.get(h.id) for h in handles]

            # A worker counts an end right after its record write is acknowledged, which
            # the control plane may show a moment before: wait for the last ones.
            async def all_counted() -> bool:
                counted = [scrape(a) for a in endpoints]
                return total(counted, "durable_invocations_ended_total") == len(load)

            await wait_until(all_counted, "every end counted", within=10)
            scraped = [scrape(a) for a in endpoints]

        ended = collections.Counter((v.handler, _STATUS_NAMES[v.status]) for v in views)
        assert ended[("tele/sleeper", "CANCELLED")] == 4
        for handler in {h for h, _ in load}:
            name = handler.split("/")[1]
            started = sum(1 for h, _ in load if h == handler)
            assert total(scraped, "durable_invocations_started_total", handler=name) == started
        for (handler, status), count in ended.items():
            name = handler.split("/")[1]
            labels = {"service": "tele", "handler": name, "status": status}
            assert total(scraped, "durable_invocations_ended_total", **labels) == count, labels
            assert total(scraped, "durable_invocation_duration_seconds_count", **labels) == count, (
                labels
            )
        # Retries: two failed tries of each flaky step (in place), one failed attempt of each
        # second_time (backing off), with their error types.
        assert total(scraped, "durable_retries_total", scope="step", error_type="ValueError") == 10
        assert (
            total(scraped, "durable_retries_total", scope="attempt", error_type="RuntimeError") == 4
        )
        assert total(scraped, "durable_retries_total") == 14
        # Attempts: as many as the records count, of each handler.
        for handler in {h for h, _ in load}:
            name = handler.split("/")[1]
            attempts = sum(v.attempt for v in views if v.handler == handler)
            counted = total(scraped, "durable_attempts_total", handler=name)
            assert counted == attempts, (handler, counted, attempts)
        assert (
            total(scraped, "durable_attempts_total", handler="second_time", outcome="BACKING_OFF")
            == 4
        )
        # Steps run: ok 2 each, doomed 1, flaky 1, second_time 1 (its second attempt replays
        # it from the journal: not run, not counted), sleeper 1 after waking (the cancelled
        # and killed ones never ran theirs).
        runs = 20 * 2 + 5 + 5 + 4 + 3
        assert total(scraped, "durable_step_duration_seconds_count", kind="run") == runs
        # Every message in the journal stream was one append (the kill's final entry by the
        # control plane, the rest by the worker).
        nc = await nats.connect(nats_server.url)
        try:
            cfg = EngineConfig(nats_url=nats_server.url, prefix=group.prefix)
            info = await nc.jetstream().stream_info(cfg.journal_stream, subjects_filter=">")
            stored = sum(
                n for subject, n in (info.state.subjects or {}).items() if subject[-2:] != ".c"
            )
        finally:
            await nc.close()
        assert total(scraped, "durable_journal_append_seconds_count") == stored > 0
        # RPCs: every Invoke, and the refused one with its code.
        invokes = total(scraped, "durable_rpc_requests_total", method="Invoke", code="OK")
        assert invokes == len(load)
        assert total(scraped, "durable_rpc_requests_total", method="Invoke", code="NOT_FOUND") == 1
        assert (
            total(scraped, "durable_rpc_duration_seconds_count", method="Invoke") == len(load) + 1
        )
        assert total(scraped, "durable_rpc_requests_total", method="Kill", code="OK") == 1
        # Nothing is labelled by invocation id.
        for endpoint in scraped:
            for _, labels in endpoint:
                assert not any(v.startswith("inv_") for _, v in labels), labels
    finally:
        group.close()


_ENDED = {
    types_pb2.INVOCATION_STATUS_COMPLETED,
    types_pb2.INVOCATION_STATUS_FAILED,
    types_pb2.INVOCATION_STATUS_CANCELLED,
}
_SUSPENDED = types_pb2.INVOCATION_STATUS_SUSPENDED
_STATUS_NAMES = {s: types_pb2.InvocationStatus.Name(s).split("_")[-1] for s in _ENDED}
