"""Invocation ids: time-ordered for fresh invocations, derived for idempotent ones.

An id is ``inv_`` plus 26 lowercase base32 characters, so it is a valid NATS subject token and
KV key. Fresh ids start with the millisecond time, so they sort by creation. An Invoke with an
idempotency key gets an id derived from (handler, key, idempotency key): creating its record
with ``kv.create`` is then the idempotency check itself, with no window after which it lapses.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time

# Used with fullmatch: "$" would also match before a final newline.
_ID_RE = re.compile(r"inv_[a-z2-7]{26}")


def _b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()[:26]


def new_invocation_id() -> str:
    """A fresh id: 48 bits of milliseconds then 80 random bits."""
    ms = int(time.time() * 1000)
    return "inv_" + _b32(ms.to_bytes(6, "big") + os.urandom(10))


def _encode_fields(*fields: str) -> bytes:
    """The bytes an id is hashed from: the fields joined with NUL.

    This is injective because no field can hold a NUL: handler and service names are
    registered names (``[A-Za-z_][A-Za-z0-9_-]*``), and keys, workflow ids and idempotency
    keys are refused with INVALID_ARGUMENT when they hold any control character
    (``limits.text_problem``). So the NULs in the joined string are exactly the separators,
    splitting it at them gives the fields back, and two different tuples of the same length
    never give the same bytes. Every caller passes three fields. The engine's own uses
    (``child_invocation_id``, ``workflow_run_id``) put the domain markers ``\x01child`` and
    ``\x01run`` in a field, which no user field can equal since ``\x01`` is a control
    character, so their ids never meet a client's.

    Ids stored by earlier versions were computed the same way, so every one of them keeps
    resolving, without a migration or an extra read; only requests that could collide (a
    field holding NUL) are now refused, and here as a last guard.
    """
    for field in fields:
        if "\x00" in field:
            raise ValueError("an id field may not contain NUL (it separates the fields)")
    return "\x00".join(fields).encode()


def idempotent_invocation_id(handler: str, key: str, idempotency_key: str) -> str:
    """The id every Invoke of (handler, key, idempotency_key) gets."""
    digest = hashlib.sha256(_encode_fields(handler, key, idempotency_key)).digest()
    return "inv_" + _b32(digest[:17])


def is_valid_invocation_id(value: str) -> bool:
    return _ID_RE.fullmatch(value) is not None


_AWAKEABLE_RE = re.compile(r"awk_([a-z2-7]{26})_([0-9]{1,9})")


def awakeable_id(invocation_id: str, index: int) -> str:
    """The id of the awakeable created at step ``index``: the same on every replay, and it
    names its invocation, so resolving it needs no lookup."""
    return f"awk_{invocation_id[4:]}_{index}"


def parse_awakeable_id(value: str) -> tuple[str, int] | None:
    """(invocation id, step index) of an awakeable id, or None when it is not one."""
    m = _AWAKEABLE_RE.fullmatch(value)
    if m is None:
        return None
    return "inv_" + m.group(1), int(m.group(2))


def child_invocation_id(parent_id: str, index: int) -> str:
    """The id of the invocation a handler starts at step ``index`` (ctx.call, ctx.send):
    a replay derives the same id, so starting it again finds it instead of doubling it."""
    return idempotent_invocation_id("\x01child", parent_id, str(index))


def token(value: str) -> str:
    """A NATS subject token and KV key for any string (object keys, promise names): the
    same string always gives the same token."""
    return _b32(hashlib.sha256(value.encode()).digest()[:17])


def workflow_run_id(handler: str, workflow_id: str) -> str:
    """The id of a workflow's run invocation: one per (workflow run handler, id), so a second
    Invoke finds the first instead of starting another run."""
    return idempotent_invocation_id(handler, workflow_id, "\x01run")


def service_of(handler: str) -> str:
    """The service, virtual object or workflow a full handler name belongs to:
    ``"orders/checkout"`` gives ``"orders"``."""
    return handler.split("/", 1)[0]
