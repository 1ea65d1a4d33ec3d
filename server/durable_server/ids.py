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

_ID_RE = re.compile(r"^inv_[a-z2-7]{26}$")


def _b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()[:26]


def new_invocation_id() -> str:
    """A fresh id: 48 bits of milliseconds then 80 random bits."""
    ms = int(time.time() * 1000)
    return "inv_" + _b32(ms.to_bytes(6, "big") + os.urandom(10))


def idempotent_invocation_id(handler: str, key: str, idempotency_key: str) -> str:
    """The id every Invoke of (handler, key, idempotency_key) gets."""
    digest = hashlib.sha256("\x00".join((handler, key, idempotency_key)).encode()).digest()
    return "inv_" + _b32(digest[:17])


def is_valid_invocation_id(value: str) -> bool:
    return bool(_ID_RE.match(value))
