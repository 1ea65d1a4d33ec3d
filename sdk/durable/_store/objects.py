"""Virtual object keys: who holds each key, who waits for it, and the key's state.

**Exclusivity.** An exclusive invocation of (object, key) is appended to the key's inbox
(``<p>.inbox.<object>.<key token>``; the stream's order is arrival order), then tries to take
the key by creating its lock (``kv.create`` in ``<p>_keys``). Only the lock's holder gets a
work item. When the holder ends, :meth:`KeyQueue.release` hands the lock to the next message
of the inbox (a CAS) and that invocation is enqueued; with no next message it deletes the lock
(CAS) and looks at the inbox once more, so an invocation that arrived meanwhile, and saw the
lock still taken, is not forgotten. A worker checks that an exclusive invocation holds its
key before running it, so a stray work item (a Resume, a redelivery) can never run two at
once.

**State.** All the state of one key is one KV value (``ObjectState``): an invocation's
changes are written in one CAS, so readers see all of them or none. The journal holds each
change as a STATE step; the worker writes the state at the end of every attempt, and again
from the journal when a later attempt finds the outcome journaled but not applied.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from nats.js import JetStreamContext
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from durable._store.config import EngineConfig
from durable._store.ids import token
from durable.internal.v1 import storage_pb2

log = logging.getLogger("durable.objects")

StoredPayload = storage_pb2.StoredPayload
Changes = dict[str, StoredPayload | None]


def lock_key(obj: str, key: str) -> str:
    return f"{obj}.{token(key)}"


class KeyQueue:
    """The inbox and the lock of every object key."""

    def __init__(self, js: JetStreamContext, cfg: EngineConfig, locks: KeyValue) -> None:
        self._js = js
        self._cfg = cfg
        self._locks = locks

    async def enqueue(self, obj: str, key: str, invocation_id: str) -> bool:
        """Queue an exclusive invocation; True when it holds the key now (then the caller
        enqueues its work item)."""
        ack = await self._js.publish(
            self._cfg.inbox_subject(obj, token(key)),
            invocation_id.encode(),
            headers={"Nats-Msg-Id": f"inbox:{invocation_id}"},
        )
        lock = storage_pb2.KeyLock(holder=invocation_id, inbox_seq=ack.seq)
        try:
            await self._locks.create(lock_key(obj, key), lock.SerializeToString())
            return True
        except KeyWrongLastSequenceError:
            return await self.holder(obj, key) == invocation_id

    async def ensure_queued(self, obj: str, key: str, invocation_id: str) -> None:
        """Queue ``invocation_id`` on its key unless its inbox message is there already: the
        Invoke that created its record may have died (or timed out) before publishing it.
        Reads the key's line, so this is for repairs, not for every Invoke."""
        seq = 0
        while (nxt := await self._next(obj, key, seq)) is not None:
            if nxt[0] == invocation_id:
                return
            seq = nxt[1]
        await self._js.publish(
            self._cfg.inbox_subject(obj, token(key)),
            invocation_id.encode(),
            headers={"Nats-Msg-Id": f"inbox:{invocation_id}"},
        )

    async def take_if_free(self, obj: str, key: str) -> str | None:
        """When nobody holds the key but someone waits in its inbox, hand the key to the
        first in line; returns that one's id (the caller makes sure it has a work item).

        A key is left free with a line only when a process died (or JetStream timed out)
        between an inbox publish and the lock's creation, or inside :meth:`release`.
        """
        if await self._lock(obj, key) is not None:
            return None
        first = await self._next(obj, key, 0)
        if first is None:
            return None
        claim = storage_pb2.KeyLock(holder=first[0], inbox_seq=first[1])
        try:
            await self._locks.create(lock_key(obj, key), claim.SerializeToString())
        except KeyWrongLastSequenceError:
            return None  # taken meanwhile: its taker enqueues it
        log.info("key %s/%s was free with a line; handed it to %s", obj, key, first[0])
        return first[0]

    async def holder(self, obj: str, key: str) -> str | None:
        current = await self._lock(obj, key)
        return current[0].holder if current else None

    async def held_revision(self, obj: str, key: str, invocation_id: str) -> int | None:
        """The revision of the lock entry by which ``invocation_id`` holds the key (each
        handover writes it anew, so a later holder's is higher); None when it does not hold
        the key (any more)."""
        current = await self._lock(obj, key)
        if current is None or current[0].holder != invocation_id:
            return None
        return current[1]

    async def _lock(self, obj: str, key: str) -> tuple[storage_pb2.KeyLock, int] | None:
        try:
            entry = await self._locks.get(lock_key(obj, key))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        lock = storage_pb2.KeyLock()
        lock.ParseFromString(entry.value)
        return lock, int(entry.revision or 0)

    async def _next(self, obj: str, key: str, after: int) -> tuple[str, int] | None:
        try:
            msg = await self._js.get_msg(
                self._cfg.inbox_stream,
                seq=after + 1,
                subject=self._cfg.inbox_subject(obj, token(key)),
                next=True,
                direct=self._cfg.direct_reads,
            )
        except NotFoundError:
            return None
        return (msg.data or b"").decode(), int(msg.seq or 0)

    async def _forget(self, seq: int) -> None:
        """Drop a released holder's inbox message: the lock has moved past it for good."""
        with contextlib.suppress(NotFoundError, APIError):
            await self._js.delete_msg(self._cfg.inbox_stream, seq)

    async def release(self, obj: str, key: str, invocation_id: str) -> str | None:
        """Hand the key from ``invocation_id`` to the next in line; returns that one's id
        (the caller enqueues it), or None. Does nothing unless ``invocation_id`` holds it."""
        for _ in range(50):
            current = await self._lock(obj, key)
            if current is None or current[0].holder != invocation_id:
                return None
            lock, revision = current
            nxt = await self._next(obj, key, lock.inbox_seq)
            name = lock_key(obj, key)
            try:
                if nxt is not None:
                    handed = storage_pb2.KeyLock(holder=nxt[0], inbox_seq=nxt[1])
                    await self._locks.update(name, handed.SerializeToString(), last=revision)
                    await self._forget(lock.inbox_seq)
                    return nxt[0]
                await self._locks.delete(name, last=revision)
            except KeyWrongLastSequenceError:
                continue
            await self._forget(lock.inbox_seq)
            # Free now; someone may have queued after our look and seen the lock taken.
            late = await self._next(obj, key, lock.inbox_seq)
            if late is None:
                return None
            claim = storage_pb2.KeyLock(holder=late[0], inbox_seq=late[1])
            try:
                await self._locks.create(name, claim.SerializeToString())
            except KeyWrongLastSequenceError:
                return None  # that one took it itself
            return late[0]
        raise RuntimeError(f"lock of {obj}/{key}: too much write contention")


class StateStore:
    """One ``ObjectState`` per object key or workflow id."""

    def __init__(self, kv: KeyValue, max_bytes: int) -> None:
        self._kv = kv
        self._max_bytes = max_bytes

    async def load(self, obj: str, key: str) -> dict[str, StoredPayload]:
        state, _ = await self._get(obj, key)
        return dict(state.entries)

    async def _get(self, obj: str, key: str) -> tuple[storage_pb2.ObjectState, int]:
        state = storage_pb2.ObjectState()
        try:
            entry = await self._kv.get(lock_key(obj, key))
        except KeyNotFoundError:
            return state, 0
        if entry.value:
            state.ParseFromString(entry.value)
        return state, int(entry.revision or 0)

    async def apply(
        self, obj: str, key: str, changes: Changes, cleared_all: bool, holder: int = 0
    ) -> bool:
        """Apply an invocation's changes in one write; False when refused.

        ``holder``: the revision of the lock entry by which an exclusive invocation holds the
        key (``KeyQueue.held_revision``). Its changes are applied once: under the same
        revision again, or under an earlier one than the last applied (a late apply, see
        ``ObjectState.applied_lock_revision``), nothing is written. 0 (a workflow's run, its
        state's only writer) applies unconditionally; the same changes again give the same
        state.
        """
        change = _applier(changes, cleared_all)
        return await self.edit(obj, key, change, holder=holder) is not None

    async def check(self, obj: str, key: str, changes: Changes, cleared_all: bool) -> None:
        """Raise StateTooLarge if applying the changes would exceed the limit."""
        state, _ = await self._get(obj, key)
        entries = dict(state.entries)
        _applier(changes, cleared_all)(entries)
        self._fits(obj, key, storage_pb2.ObjectState(entries=entries).SerializeToString())

    def _fits(self, obj: str, key: str, data: bytes) -> None:
        if len(data) > self._max_bytes:
            raise StateTooLarge(
                f"the state of {obj}/{key} would be {len(data)} bytes; the limit is "
                f"{self._max_bytes} bytes (--max-state-bytes)"
            )

    async def edit(
        self,
        obj: str,
        key: str,
        change: Callable[[dict[str, StoredPayload]], None],
        *,
        holder: int = 0,
    ) -> dict[str, StoredPayload] | None:
        """CAS ``change`` into the key's state; returns the state written. With ``holder``
        (see :meth:`apply`): None, writing nothing, once the state holds the changes of that
        holder or a later one."""
        for _ in range(50):
            state, revision = await self._get(obj, key)
            if holder and state.applied_lock_revision >= holder:
                return None
            entries = dict(state.entries)
            change(entries)
            written = storage_pb2.ObjectState(
                entries=entries,
                applied_lock_revision=max(holder, state.applied_lock_revision),
            )
            data = written.SerializeToString()
            self._fits(obj, key, data)
            try:
                if revision:
                    await self._kv.update(lock_key(obj, key), data, last=revision)
                else:
                    await self._kv.create(lock_key(obj, key), data)
                return entries
            except KeyWrongLastSequenceError:
                continue
        raise RuntimeError(f"state of {obj}/{key}: too much write contention")

    async def delete(self, obj: str, key: str) -> None:
        with contextlib.suppress(KeyNotFoundError):
            await self._kv.purge(lock_key(obj, key))


def _applier(changes: Changes, cleared_all: bool) -> Callable[[dict[str, StoredPayload]], None]:
    def change(entries: dict[str, StoredPayload]) -> None:
        if cleared_all:
            entries.clear()
        for name, value in changes.items():
            if value is None:
                entries.pop(name, None)
            else:
                entries[name] = value

    return change


class StateTooLarge(Exception):
    """A key's state would exceed the limit."""
