"""Details of the invocations a phase left stuck, read before its processes stop: the stored
record, the newest work item, the work consumer, for an exclusive object invocation the key's
lock and inbox, and the log lines of every process that name the invocation. A stuck
invocation is a finding for a person; this is what they would look up first.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import nats
from nats.js.errors import KeyNotFoundError, NotFoundError

from durable._store.config import EngineConfig
from durable._store.ids import token
from durable.internal.v1 import storage_pb2
from durable.v1 import types_pb2

LOG_LINES = 8


async def diagnose(
    cfg: EngineConfig, stuck: list[dict[str, Any]], logs: Path, limit: int = 10
) -> list[dict[str, Any]]:
    if not stuck:
        return []
    nc = await nats.connect(cfg.servers, max_reconnect_attempts=3, connect_timeout=5)
    out = []
    try:
        js = nc.jetstream(timeout=5.0)
        records = await js.key_value(cfg.invocations_bucket)
        locks = await js.key_value(cfg.locks_bucket)
        consumer: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            ci = await js.consumer_info(cfg.work_stream, cfg.run_consumer("chaos"))
            consumer = {
                "pending": ci.num_pending,
                "ack_pending": ci.num_ack_pending,
                "redelivered": ci.num_redelivered,
                "ack_floor": ci.ack_floor.stream_seq if ci.ack_floor else None,
            }
        for s in stuck[:limit]:
            inv = s["id"]
            d: dict[str, Any] = {"id": inv, "consumer": consumer}
            try:
                entry = await records.get(inv)
                r = storage_pb2.InvocationRecord()
                r.ParseFromString(entry.value or b"")
                d["record"] = {
                    "revision": entry.revision,
                    "status": types_pb2.InvocationStatus.Name(r.status),
                    "generation": r.generation,
                    "attempt": r.attempt,
                    "worker_id": r.worker_id,
                }
            except KeyNotFoundError:
                d["record"] = None
            try:
                msg = await js.get_msg(cfg.work_stream, subject=cfg.run_subject_any_lane("*", inv))
                item = storage_pb2.WorkItem()
                item.ParseFromString(msg.data or b"")
                d["work_item"] = {
                    "seq": msg.seq,
                    "generation": item.generation,
                    "reason": item.reason,
                    "fresh": item.HasField("initial"),
                }
            except NotFoundError:
                d["work_item"] = None
            try:  # a stored awakeable resolution, beside the journal
                await js.get_msg(
                    cfg.journal_stream, seq=1, next=True, subject=f"{cfg.prefix}.journal.{inv}.a.*"
                )
                d["awakeable_resolution_stored"] = True
            except NotFoundError:
                d["awakeable_resolution_stored"] = False
            if s.get("key"):
                d["key"] = await _key(js, locks, cfg, s["handler"].split("/")[0], s["key"], inv)
            d["log_lines"] = _log_lines(logs, inv)
            out.append(d)
    finally:
        await nc.close()
    return out


async def _key(js: Any, locks: Any, cfg: EngineConfig, obj: str, key: str, inv: str) -> Any:
    lock: dict[str, Any] | None = None
    try:
        entry = await locks.get(f"{obj}.{token(key)}")
        held = storage_pb2.KeyLock()
        held.ParseFromString(entry.value or b"")
        lock = {"holder": held.holder, "inbox_seq": held.inbox_seq, "revision": entry.revision}
    except KeyNotFoundError:
        lock = None
    inbox: list[tuple[int, str]] = []
    seq = 0
    with contextlib.suppress(NotFoundError):
        for _ in range(1000):
            msg = await js.get_msg(
                cfg.inbox_stream, seq=seq + 1, subject=cfg.inbox_subject(obj, token(key)), next=True
            )
            seq = int(msg.seq or 0)
            inbox.append((seq, (msg.data or b"").decode()))
    return {
        "object_key": key,
        "lock": lock,
        "inbox": inbox[:20],
        "in_inbox": any(i == inv for _, i in inbox),
    }


def _log_lines(logs: Path, inv: str) -> list[str]:
    found = []
    for path in sorted(logs.glob("*.log")):
        with contextlib.suppress(OSError), path.open(errors="replace") as f:
            found += [f"{path.name}: {line.rstrip()[:300]}" for line in f if inv in line]
    return found[:LOG_LINES]
