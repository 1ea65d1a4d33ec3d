"""The limits on what a client or a handler may send, in one place.

The control plane checks them at the API edge, before anything is stored; the worker checks
the ones a handler can break (keys of calls, state entry and promise names). docs/operating.md's
table of limits lists each with its default, its flag and the status a breach gets.

Keys (object keys, workflow ids), idempotency keys, promise names and state entry names are
free text with two rules: a bounded length, and no control character (Unicode category Cc:
U+0000 to U+001F and U+007F to U+009F, so no NUL and no newline). Without NUL, the fields an
id is derived from are separated unambiguously (see ``ids._encode_fields``); without the
others, a name shown in a log, a table or an error message is what it looks like.
"""

from __future__ import annotations

import re

from durable._codec.jsonrules import MAX_DEPTH as MAX_JSON_DEPTH
from durable._codec.jsonrules import MAX_INTEGER as MAX_JSON_INTEGER
from durable._codec.jsonrules import MIN_INTEGER as MIN_JSON_INTEGER

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_CONTENT_TYPE_CHARS",
    "MAX_IDEMPOTENCY_KEY_CHARS",
    "MAX_JSON_DEPTH",
    "MAX_JSON_INTEGER",
    "MAX_KEY_CHARS",
    "MAX_NAME_CHARS",
    "MAX_PAGE_SIZE",
    "MAX_PAGE_TOKEN_CHARS",
    "MAX_REASON_BYTES",
    "MIN_JSON_INTEGER",
    "QUOTE_CHARS",
    "quote",
    "text_problem",
]

#: Longest object key or workflow id, in characters.
MAX_KEY_CHARS = 256
#: Longest idempotency key, in characters.
MAX_IDEMPOTENCY_KEY_CHARS = 256
#: Longest promise name or state entry name, in characters.
MAX_NAME_CHARS = 256
#: Longest reason of Pause, Cancel, Kill, RejectAwakeable and RejectPromise, in UTF-8 bytes:
#: a reason is shown in tables and carried in records and journal entries, not a payload.
MAX_REASON_BYTES = 4096
#: Longest content_type of a payload sent as bytes.
MAX_CONTENT_TYPE_CHARS = 256
#: Most invocations ListWorkflows returns in one page, and how many when none is asked for.
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 50
#: Longest page token: the server's own are about 100 characters.
MAX_PAGE_TOKEN_CHARS = 512
#: How much of a client's text an error message quotes.
QUOTE_CHARS = 64

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def text_problem(value: str, max_chars: int) -> str | None:
    """Why ``value`` cannot be a key or a name (too long, or a control character in it),
    as the end of a sentence; None when it can."""
    if len(value) > max_chars:
        return f"is {len(value)} characters; at most {max_chars} are allowed"
    bad = _CONTROL.search(value)
    if bad is not None:
        return (
            f"holds the control character U+{ord(bad.group()):04X} at position {bad.start()}; "
            "keys and names may not hold control characters (NUL, newline, tab, ...)"
        )
    if not value.isascii() and _SURROGATE.search(value):
        return "holds an unpaired surrogate, which is not Unicode text"
    return None


def quote(value: str, limit: int = QUOTE_CHARS) -> str:
    """``value`` as an error message quotes it: ``repr`` of at most ``limit`` characters, then
    how long it really is. A status message travels in a gRPC header, which clients cap
    (8 to 16 KiB): echoing a long input whole would replace the real status with a
    transport error."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"
