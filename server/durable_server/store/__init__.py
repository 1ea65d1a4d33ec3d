"""The engine's store on JetStream: every module that knows JetStream (journal, records, work
queue, object keys and state, wake-ups and timers, ids, stream provisioning), and the one
place that opens them for the control plane and workers.

``open_store`` is the composition root of storage: it builds, once per process, every store
the engine keeps in JetStream (invocation records, journals, the work queue, object keys and
their state, worker registrations) from one ``EngineConfig``, and hands them over as one
``Store``. Only the control plane (``provision_first=True``) and ``durable setup`` create streams,
the work consumer and buckets; a worker opens what exists, and until it does, waits for
them (``patience.NotProvisioned``), so a worker needs no right to create or change streams.

What a worker does on NATS (the subjects its account needs; ``<p>`` is the prefix, ``<P>``
its upper case):

* publish ``<p>.journal.>``, ``<p>.work.>`` and ``<p>.inbox.>`` (journal entries, work items
  and timers, object inboxes), ``$KV.<p>_invocations.>``, ``$KV.<p>_workers.>``,
  ``$KV.<p>_keys.>`` and ``$KV.<p>_state.>`` (bucket writes);
* the JetStream API for reads and its consumer: ``$JS.API.DIRECT.GET.>`` and
  ``$JS.API.STREAM.MSG.GET.>`` (reads), ``$JS.API.STREAM.INFO.>`` and
  ``$JS.API.CONSUMER.INFO.>`` (opening), ``$JS.API.CONSUMER.MSG.NEXT.<P>_WORK.workers``
  (pull requests), ``$JS.API.CONSUMER.CREATE.>`` (the ephemeral ordered consumers that
  read one journal or inbox), and acks on ``$JS.ACK.<P>_WORK.>``;
* subscribe ``<p>.signal.>`` and its own ``_INBOX.>``; publish ``<p>.progress.>``.

It never needs ``$JS.API.STREAM.CREATE``/``UPDATE``/``DELETE`` or the durable consumer's
create. (The security work will pin this list with a test against a restricted account.)
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from durable_server.config import EngineConfig
from durable_server.patience import NotProvisioned
from durable_server.store.journal import Journal
from durable_server.store.objects import KeyQueue, StateStore
from durable_server.store.records import RecordStore
from durable_server.store.resources import (
    ensure_resources,
    invocations_kv,
    locks_kv,
    state_kv,
    workers_kv,
)
from durable_server.store.workqueue import WorkQueue


@dataclass(frozen=True)
class Store:
    """Every store of one engine (one prefix), over one NATS connection."""

    js: JetStreamContext
    records: RecordStore
    journal: Journal
    work: WorkQueue
    keys: KeyQueue
    state: StateStore
    workers: KeyValue
    #: The work consumer's ack wait as stored (fixed when it was created), in seconds.
    work_ack_wait: float


async def provision(nc: NATS, cfg: EngineConfig) -> None:
    """Create whatever of the engine's streams, work consumer and buckets is missing."""
    await ensure_resources(nc.jetstream(), cfg)


async def open_store(nc: NATS, cfg: EngineConfig, *, provision_first: bool) -> Store:
    """Open every store; with ``provision_first``, create what is missing first. Without,
    ``NotProvisioned`` says something is missing yet (idempotent: tried again at start-up)."""
    js = nc.jetstream()
    if provision_first:
        await ensure_resources(js, cfg)
    create = provision_first
    try:
        consumer = await js.consumer_info(cfg.work_stream, cfg.work_consumer)
        await js.stream_info(cfg.journal_stream)
        await js.stream_info(cfg.inbox_stream)
        records_kv = await invocations_kv(js, cfg, create=create)
        workers = await workers_kv(js, cfg, create=create)
        keys = KeyQueue(js, cfg, await locks_kv(js, cfg, create=create))
        state = StateStore(await state_kv(js, cfg, create=create), cfg.max_state_bytes)
    except NotFoundError as err:
        raise NotProvisioned(
            f"the engine's streams and buckets (prefix {cfg.prefix!r}) do not exist yet: "
            "the control plane creates them (durable server), or `durable setup`"
        ) from err
    return Store(
        js=js,
        records=RecordStore(records_kv, nc, cfg.invocations_bucket, direct_reads=cfg.direct_reads),
        journal=Journal(js, cfg),
        work=WorkQueue(js, cfg),
        keys=keys,
        state=state,
        workers=workers,
        work_ack_wait=consumer.config.ack_wait or cfg.ack_wait,
    )
