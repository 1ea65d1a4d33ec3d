"""The engine's store on JetStream: every module that reads or writes it (names in
``config``, journal, records, work queue, object keys and state, wake-ups and timers, ids),
and the one place that opens them for the control plane and workers.

``open_store`` is the composition root of storage: it builds, once per process, every store
the engine keeps in JetStream (invocation records, journals, the work queue, object keys and
their state, worker registrations) from one ``EngineConfig``, and hands them over as one
``Store``. It never creates anything: the streams, the work consumers and the buckets are
provisioned by the control plane (``durable_server.provision``, at its start) or by
``durable setup``. Until they exist, ``open_store`` raises ``patience.NotProvisioned`` (the
caller waits and tries again), so a worker needs no right to create or change streams.

What a worker does on NATS (the subjects its account needs; ``<p>`` is the prefix, ``<P>``
its upper case):

* publish ``<p>.journal.>``, ``<p>.work.>`` and ``<p>.inbox.>`` (journal entries, work items
  and timers, object inboxes), ``$KV.<p>_invocations.>``, ``$KV.<p>_workers.>``,
  ``$KV.<p>_keys.>`` and ``$KV.<p>_state.>`` (bucket writes);
* the JetStream API for reads and its consumers: ``$JS.API.DIRECT.GET.>`` and
  ``$JS.API.STREAM.MSG.GET.>`` (reads), ``$JS.API.STREAM.INFO.>`` and
  ``$JS.API.CONSUMER.INFO.>`` (opening), ``$JS.API.CONSUMER.MSG.NEXT.<P>_WORK.run_<s>`` and
  ``...run_<s>@<lane>`` for each service ``<s>`` it hosts (pull requests),
  ``$JS.API.CONSUMER.CREATE.>`` (the ephemeral ordered consumers that read one journal or
  inbox), and acks on ``$JS.ACK.<P>_WORK.>``;
* subscribe ``<p>.signal.>`` and its own ``_INBOX.>``; publish ``<p>.progress.>``.

It never needs ``$JS.API.STREAM.CREATE``/``UPDATE``/``DELETE`` or a durable consumer's
create. The exact set, as nats-server permissions, is ``worker_permissions`` in
``durable_server/nats_permissions.py`` (``durable nats-permissions`` prints it);
tests/test_nats_auth.py runs a worker under it.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from durable._store.config import EngineConfig
from durable._store.journal import Journal
from durable._store.objects import KeyQueue, StateStore
from durable._store.patience import NotProvisioned
from durable._store.records import RecordStore
from durable._store.workqueue import WorkQueue


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


async def open_store(nc: NATS, cfg: EngineConfig) -> Store:
    """Open every store. ``NotProvisioned`` says something is missing yet (idempotent: the
    caller tries again at start-up)."""
    js = nc.jetstream()
    try:
        await js.stream_info(cfg.work_stream)
        await js.stream_info(cfg.journal_stream)
        await js.stream_info(cfg.inbox_stream)
        records_kv = await open_bucket(js, cfg, cfg.invocations_bucket)
        workers = await open_bucket(js, cfg, cfg.workers_bucket)
        keys = KeyQueue(js, cfg, await open_bucket(js, cfg, cfg.locks_bucket))
        state = StateStore(await open_bucket(js, cfg, cfg.state_bucket), cfg.max_state_bytes)
    except NotFoundError as err:
        raise NotProvisioned(
            f"the engine's streams and buckets (prefix {cfg.prefix!r}) do not exist yet: "
            "the control plane creates them (durable server), or `durable setup`"
        ) from err
    return Store(
        js=js,
        records=RecordStore(records_kv, nc, cfg.invocations_bucket, direct_reads=cfg.direct_reads),
        journal=Journal(js, cfg, nc),
        work=WorkQueue(js, cfg),
        keys=keys,
        state=state,
        workers=workers,
    )


async def open_bucket(js: JetStreamContext, cfg: EngineConfig, name: str) -> KeyValue:
    """An existing KV bucket (``NotFoundError`` if missing). On a replicated store the handle
    reads through the stream's leader instead of direct gets: any replica answers a direct
    get, possibly before it has the newest write, and the key locks and object state decide
    what runs next (a stale lock read left a key's line stuck)."""
    kv = await js.key_value(name)
    if cfg.direct_reads:
        return kv
    return KeyValue(name=name, stream=f"KV_{name}", pre=f"$KV.{name}.", js=js, direct=False)
