"""Creates (idempotently) the streams, consumer and buckets the engine uses: only the control
plane (at its start) and ``durable setup`` call this; workers open what exists
(``durable._store.open_store``).

- ``<P>_JOURNAL``: one append-only journal per invocation, its steps on ``<p>.journal.<id>.s``
  and the entry carrying its outcome on ``<p>.journal.<id>.f``; every entry is appended with
  the expected last sequence on ``<p>.journal.<id>.*`` (the entry before it), which is the
  fence. Once stored, a final entry is republished on core NATS as ``<p>.journaled.<id>``, so
  control planes hear of every outcome from the server itself, one message per invocation.
- ``<P>_WORK``: "drive invocation X" items, one subject per invocation keeping its newest
  item, routed by service (``<p>.work.run.<service>.<lane>.<id>``); each (service, lane)
  has a durable pull consumer, created by :func:`ensure_run_consumer` when a worker hosting
  it registers (control/routes.py); unacked items are redelivered after ack_wait, so a dead
  worker's invocation moves on. Message ids dedupe repeated enqueues. It also holds the
  message schedules of durable timers (``<p>.work.timer.<id>.<step>``, firing a wake-up
  onto ``<p>.work.wake.<service>.<id>``) and of delayed sends (``<p>.work.delay.<id>``,
  firing the work item itself); no consumer takes the schedules.
- KV ``<p>_invocations``: the mutable record of each invocation, changed only by CAS.
- KV ``<p>_workers``: live workers and the handlers they serve, refreshed by heartbeats.
- ``<P>_INBOX``: exclusive invocations of each virtual object key, in arrival order
  (``<p>.inbox.<object>.<key token>``); KV ``<p>_keys`` says which one holds each key.
- KV ``<p>_state``: the state of each object key or workflow id, one value per key.
"""

from __future__ import annotations

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    RePublish,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

from durable.contract import EngineConfig

# Records hold an input and an output, each up to max_payload_bytes, plus metadata.
_RECORD_OVERHEAD = 64 * 1024


def _stream_configs(cfg: EngineConfig) -> list[StreamConfig]:
    value_limit = 2 * cfg.max_payload_bytes + _RECORD_OVERHEAD
    return [
        StreamConfig(
            name=cfg.journal_stream,
            subjects=[f"{cfg.prefix}.journal.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=cfg.replicas,
            allow_direct=True,
            max_msg_size=value_limit,
            duplicate_window=cfg.duplicate_window,
            republish=_journal_republish(cfg),
        ),
        StreamConfig(
            name=cfg.work_stream,
            subjects=[f"{cfg.prefix}.work.>"],
            # Limits, not WorkQueue: an ack then only moves the consumer's state instead of
            # deleting (and fsyncing) the item, one write less per invocation. The newest
            # item per invocation is kept, and replaces any older one.
            retention=RetentionPolicy.LIMITS,
            max_msgs_per_subject=1,
            storage=StorageType.FILE,
            num_replicas=cfg.replicas,
            allow_direct=True,
            duplicate_window=cfg.duplicate_window,
            # Durable timers and delayed sends are message schedules on this stream.
            allow_msg_schedules=True,
        ),
        StreamConfig(
            name=cfg.inbox_stream,
            subjects=[f"{cfg.prefix}.inbox.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=cfg.replicas,
            allow_direct=True,
            duplicate_window=cfg.duplicate_window,
        ),
    ]


def _journal_republish(cfg: EngineConfig) -> RePublish:
    # The server republishes an entry only after storing it (after the fsync with
    # sync_interval "always", after the quorum's commit when replicated), and never one
    # refused by the fence: hearing of it is as good as reading it back.
    return RePublish(
        src=f"{cfg.prefix}.journal.*.f", dest=f"{cfg.prefix}.journaled.{{{{wildcard(1)}}}}"
    )


async def ensure_resources(js: JetStreamContext, cfg: EngineConfig) -> None:
    """Create what is missing; leave what exists (and its data) untouched, except for
    adding the journal's republish to a store made before the engine used it."""
    for sc in _stream_configs(cfg):
        assert sc.name is not None
        try:
            info = await js.stream_info(sc.name)
        except NotFoundError:
            try:
                await js.add_stream(sc)
            except BadRequestError:
                # Another process created it between our check and our create.
                await js.stream_info(sc.name)
            continue
        have = info.config.republish
        want = sc.republish
        changed = False
        if want is not None and (have is None or (have.src, have.dest) != (want.src, want.dest)):
            info.config.republish = want
            changed = True
        if sc.allow_msg_schedules and not info.config.allow_msg_schedules:
            info.config.allow_msg_schedules = True
            changed = True
        if changed:
            await js.update_stream(info.config)
    await _ensure_work_consumer(js, cfg)
    await _bucket(js, cfg, cfg.invocations_bucket, 2 * cfg.max_payload_bytes)
    # A dead worker's entry ages out after a day, so a handler stays known (and Invoke keeps
    # accepting it) across restarts and deploys, but not forever.
    await _bucket(js, cfg, cfg.workers_bucket, ttl=24 * 3600.0)
    await _bucket(js, cfg, cfg.state_bucket, cfg.max_state_bytes)
    await _bucket(js, cfg, cfg.locks_bucket)


async def provision(nc: NATS, cfg: EngineConfig) -> None:
    """Create whatever of the engine's streams, work consumer and buckets is missing."""
    await ensure_resources(nc.jetstream(), cfg)


async def _ensure_work_consumer(js: JetStreamContext, cfg: EngineConfig) -> None:
    """The one shared consumer of stores made before routing by service exists only there
    (control/routes.py drains it); a store made before timers gets the schedules filtered
    out of it."""
    try:
        info = await js.consumer_info(cfg.work_stream, cfg.legacy_consumer)
    except NotFoundError:
        return
    if sorted(info.config.filter_subjects or []) == sorted(cfg.legacy_filters):
        return
    info.config.filter_subjects = cfg.legacy_filters
    info.config.filter_subject = None
    await js.add_consumer(cfg.work_stream, info.config)


def run_consumer_config(cfg: EngineConfig, service: str, lane: str) -> ConsumerConfig:
    """The consumer of one (service, lane), shared by the workers that host it."""
    return ConsumerConfig(
        durable_name=cfg.run_consumer(service, lane),
        filter_subjects=cfg.run_filters(service, lane),
        ack_policy=AckPolicy.EXPLICIT,
        # Items queued before the first worker of a service registered are delivered too.
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=cfg.ack_wait,
        # Never give up on an invocation: redelivery is how a dead worker's work moves on.
        max_deliver=-1,
        max_ack_pending=100_000,
        max_waiting=4096,
    )


async def ensure_run_consumer(
    js: JetStreamContext, cfg: EngineConfig, service: str, lane: str
) -> None:
    """Create the consumer of one (service, lane) unless it exists; one that exists is left
    as it is (its ack wait is the one it was created with, which workers read)."""
    name = cfg.run_consumer(service, lane)
    try:
        await js.consumer_info(cfg.work_stream, name)
        return
    except NotFoundError:
        pass
    try:
        await js.add_consumer(cfg.work_stream, run_consumer_config(cfg, service, lane))
    except BadRequestError:
        # Another control plane created it first, with its own settings.
        await js.consumer_info(cfg.work_stream, name)


async def _bucket(
    js: JetStreamContext,
    cfg: EngineConfig,
    name: str,
    payload_bytes: int | None = None,
    *,
    ttl: float | None = None,
) -> None:
    """A file-backed KV bucket of one revision per key, direct gets on; values bounded by
    ``payload_bytes`` plus room for the message around them."""
    kvc = KeyValueConfig(
        bucket=name,
        history=1,
        ttl=ttl,
        storage=StorageType.FILE,
        replicas=cfg.replicas,
        max_value_size=payload_bytes + _RECORD_OVERHEAD if payload_bytes is not None else -1,
        direct=True,
    )
    try:
        await js.key_value(kvc.bucket)
    except NotFoundError:
        try:
            await js.create_key_value(kvc)
        except BadRequestError:
            await js.key_value(kvc.bucket)  # another process created it first
