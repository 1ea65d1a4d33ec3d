"""Failover on a 3-node JetStream cluster: what the engine does when a node it depends on dies.

* A worker's open pull request lives on the work consumer's leader. When that node dies, the
  request is gone without a word; the worker notices the missing idle heartbeats and asks the
  new leader, instead of waiting for the old request to expire. Here the request would expire
  after 60 s, and the invocation must complete well before that.
* Key locks and object state are read through the stream leader on a replicated store, never
  by a direct get that any (possibly lagging) replica answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from durable import Client, Context, Service
from durable._store import open_bucket
from durable._store.config import EngineConfig
from durable._worker import pulling
from durable._worker.runtime import Worker
from durable_server.control.server import ControlServer
from durable_server.natsd import EmbeddedNats
from durable_server.provision import ensure_resources
from tests.nats_cluster import NODES, Cluster
from tests.nats_cluster import connect as _connect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

failover = Service("failover", description="handlers for the failover tests")


@failover.handler()
async def echo(ctx: Context, text: str) -> str:
    return await ctx.run("echo", lambda: text)


async def _connect_to(cl: Cluster, first: EmbeddedNats) -> NATS:
    """A connection to ``first`` (the others only as reconnect fallbacks)."""
    urls = [first.url, *(n.url for n in cl.nodes if n is not first)]
    return await nats.connect(
        urls, dont_randomize=True, max_reconnect_attempts=-1, reconnect_time_wait=0.5
    )


async def _lead_consumer_on(nc: NATS, cfg: EngineConfig, node: str, within: float = 20) -> None:
    """Step the work consumer's leadership down until ``node`` leads it."""
    js = nc.jetstream(timeout=5.0)
    api = f"$JS.API.CONSUMER.LEADER.STEPDOWN.{cfg.work_stream}.{cfg.run_consumer('failover')}"
    body = json.dumps({"placement": {"preferred": node}}).encode()
    deadline = time.monotonic() + within
    while True:
        info = await js.consumer_info(cfg.work_stream, cfg.run_consumer("failover"))
        if info.cluster is not None and info.cluster.leader == node:
            return
        assert time.monotonic() < deadline, f"{node} never led the work consumer: {info}"
        with contextlib.suppress(Exception):  # a stepdown still in progress: ask again
            await nc.request(api, body, timeout=5.0)
        await asyncio.sleep(0.5)


async def test_an_idle_worker_asks_again_when_the_work_consumer_leader_dies(
    nats_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the heartbeat check the worker would wait for its open request to expire.
    monkeypatch.setattr(pulling, "PULL_EXPIRES", 60.0)
    cl = nats_cluster
    meta_name = cl.meta_leader()
    assert meta_name is not None, cl.logs()
    meta = cl.node(meta_name)
    victim = next(n for n in cl.nodes if n is not meta)
    cfg = EngineConfig(nats_url=cl.url, prefix=f"fo{uuid.uuid4().hex[:8]}", replicas=NODES)
    # Both connected to the meta leader, which survives: only the pull request is lost.
    nc_control = await _connect_to(cl, meta)
    nc_worker = await _connect_to(cl, meta)
    nc = await _connect(cl)
    try:
        async with (
            ControlServer(cfg, "127.0.0.1:0", nc=nc_control) as control,
            Worker(cfg, [failover], slots=4, nc=nc_worker),
            Client(control.target) as client,
        ):
            warm = await client.invoke("failover/echo", "warm", wait=True, wait_timeout=20)
            assert await warm.result(timeout=20) == "warm"
            await _lead_consumer_on(nc, cfg, victim.server_name)
            # The idle worker's next pull request now waits on the victim.
            await asyncio.sleep(1.0)
            victim.kill()
            handle = await client.invoke("failover/echo", "after", wait=True, wait_timeout=30)
            assert await handle.result(timeout=30) == "after"
    finally:
        for conn in (nc, nc_control, nc_worker):
            await conn.close()


async def test_key_locks_and_state_are_read_through_the_leader_on_a_replicated_store(
    nats_cluster: Cluster,
) -> None:
    """Any replica answers a direct get, possibly before it has the newest write: on a
    replicated store the buckets that decide what runs next are read through the leader."""
    cfg = EngineConfig(
        nats_url=nats_cluster.url, prefix=f"rd{uuid.uuid4().hex[:8]}", replicas=NODES
    )
    nc = await _connect(nats_cluster)
    spy = await _connect(nats_cluster)
    try:
        js = nc.jetstream(timeout=10.0)
        await ensure_resources(js, cfg)
        seen: list[str] = []

        async def note(msg: Msg) -> None:
            seen.append(msg.subject)

        await spy.subscribe("$JS.API.>", cb=note)
        await spy.flush()
        for bucket in (cfg.locks_bucket, cfg.state_bucket):
            kv = await open_bucket(js, cfg, bucket)
            await kv.put("a.b", b"x")
            assert (await kv.get("a.b")).value == b"x"
        await nc.flush()
        await spy.flush()
        await asyncio.sleep(0.2)  # the spy's copies of the requests are on their way
        gets = [s for s in seen if ".GET." in s]
        assert gets and all(s.startswith("$JS.API.STREAM.MSG.GET.") for s in gets), gets
    finally:
        await spy.close()
        await nc.close()
