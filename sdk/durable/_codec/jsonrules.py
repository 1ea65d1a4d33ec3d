"""The rules every JSON value follows, wherever it enters the engine.

One place for them, used by every path a JSON value takes into storage: an Invoke's input
(``json``, or ``data`` with content type ``application/json``), awakeable and promise
resolutions, SetObjectState, and in the worker a handler's step results, outputs, state
values and call inputs. A stored value that follows them can always be handed back through
the API exactly as it came in:

* it is JSON (RFC 8259): no ``NaN``/``Infinity``, no unpaired surrogate (``"\\ud800"``),
  which no UTF-8 string (so no protobuf string) can carry;
* numbers are finite (``1e999`` would be infinity);
* integers lie within -2**63 .. 2**64-1, what int64 and uint64 hold; larger ones must travel
  as strings (most languages' JSON decoders cannot read them without loss);
* objects and arrays nest at most :data:`MAX_DEPTH` (32) levels. A ``google.protobuf.Value``
  costs a protobuf decoder up to three nested messages per level (Value, Struct and the map
  entry), and decoders stop at 100 (Python, C++, Java), so 32 levels are the most a response
  carrying the value can hold (measured: 33 levels of objects fail to parse in
  ``WatchWorkflowResponse``).

Refusals raise :class:`JsonRuleError`, naming where the bad value sits, e.g.
``input.items[3].qty``. Pure: no I/O, no global state.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

__all__ = [
    "MAX_DEPTH",
    "MAX_INTEGER",
    "MIN_INTEGER",
    "JsonRuleError",
    "check",
    "parse",
    "too_deep",
]

#: Deepest nesting of objects and arrays (a scalar is at depth 0, ``[1]`` at depth 1).
MAX_DEPTH = 32
#: Smallest integer accepted (int64's minimum).
MIN_INTEGER = -(2**63)
#: Largest integer accepted (uint64's maximum).
MAX_INTEGER = 2**64 - 1

_MAX_DIGITS = len(str(MAX_INTEGER))  # 20: any longer literal is out of range
_SURROGATE = re.compile("[\ud800-\udfff]")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_RANGE = "-2**63 .. 2**64-1"


class JsonRuleError(ValueError):
    """A JSON value that breaks a rule; the message names the path of the bad value."""


class _Bad:
    """What the parser's hooks put in place of a number that breaks a rule, so that the
    walk can report it with its path (the hooks do not know where they are)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class _Found(Exception):
    """A rule broken somewhere below; each level of the walk adds its step to the path."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.steps: list[str] = []


def _integer_problem(n: int) -> str | None:
    if MIN_INTEGER <= n <= MAX_INTEGER:
        return None
    shown = str(n) if n.bit_length() <= 128 else f"an integer of {n.bit_length()} bits"
    return f"{shown} is outside the 64-bit integer range ({_RANGE}); send it as a string"


def _parse_int(text: str) -> int | _Bad:
    if len(text.lstrip("-")) > _MAX_DIGITS:
        return _Bad(
            f"an integer of {len(text.lstrip('-'))} digits is outside the 64-bit integer "
            f"range ({_RANGE}); send it as a string"
        )
    n = int(text)
    problem = _integer_problem(n)
    return n if problem is None else _Bad(problem)


def _parse_float(text: str) -> float | _Bad:
    number = float(text)
    if math.isfinite(number):
        return number
    shown = text if len(text) <= 24 else text[:20] + "..."
    return _Bad(f"{shown} is not a finite number; send it as a string")


def _parse_constant(name: str) -> _Bad:
    return _Bad(f"{name} is not a JSON number")


def parse(data: bytes | str, path: str) -> Any:
    """Parse JSON text and check it against every rule; the Python value it holds.

    Raises :class:`JsonRuleError` when the text is not JSON or breaks a rule.
    """
    try:
        value = json.loads(
            data,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
        )
    except RecursionError:
        raise too_deep(path) from None
    except ValueError as err:  # includes UnicodeDecodeError
        raise JsonRuleError(f"{path} is not JSON: {_short(str(err))}") from None
    check(value, path)
    return value


def check(value: Any, path: str) -> None:
    """Check a Python value about to be stored as JSON (``None``, ``bool``, ``int``,
    ``float``, ``str``, and ``dict``/``list``/``tuple`` of those).

    Other types are left for the encoder to refuse. Raises :class:`JsonRuleError`.
    """
    try:
        _walk(value, 0)
    except _Found as found:
        where = path + "".join(reversed(found.steps))
        raise JsonRuleError(f"{_short(where, 200)}: {found.reason}") from None


def _fine_scalar(item: Any) -> bool:
    """True for the common scalars that need no closer look (the walk's fast path)."""
    kind = type(item)
    if kind is str:
        return bool(item.isascii())  # O(1) in CPython; other strings get the surrogate check
    if kind is int:
        return bool(MIN_INTEGER <= item <= MAX_INTEGER)
    if kind is float:
        return bool(item - item == 0.0)  # false for NaN and the infinities
    return item is None or kind is bool


def _walk(value: Any, depth: int) -> None:
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            raise _Found(_nesting(""))
        key: object = None
        try:
            for key, item in value.items():
                if isinstance(key, str) and not key.isascii() and _SURROGATE.search(key):
                    raise _Found("the key holds an unpaired surrogate, which is not Unicode text")
                if not _fine_scalar(item):
                    _walk(item, depth + 1)
        except _Found as found:
            found.steps.append(_key_step(key))
            raise
    elif isinstance(value, list | tuple):
        if depth >= MAX_DEPTH:
            raise _Found(_nesting(""))
        index = 0
        try:
            for index, item in enumerate(value):  # noqa: B007 (the except reads index)
                if not _fine_scalar(item):
                    _walk(item, depth + 1)
        except _Found as found:
            found.steps.append(f"[{index}]")
            raise
    elif isinstance(value, str):
        if not value.isascii() and _SURROGATE.search(value):
            raise _Found("the string holds an unpaired surrogate, which is not Unicode text")
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        problem = _integer_problem(value)
        if problem is not None:
            raise _Found(problem)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _Found(f"{value} is not a finite number; JSON has no NaN or infinities")
    elif isinstance(value, _Bad):
        raise _Found(value.reason)


def too_deep(path: str) -> JsonRuleError:
    """The refusal of a value nested too deep to even walk (Python's recursion limit)."""
    return JsonRuleError(_nesting(path))


def _key_step(key: object) -> str:
    text = str(key)
    if _IDENTIFIER.fullmatch(text):
        return f".{text}"
    return f"[{json.dumps(_short(text, 40))}]"


def _nesting(path: str) -> str:
    where = f"{path} " if path else ""
    return (
        f"{where}nests objects and arrays deeper than {MAX_DEPTH} levels, more than "
        "protobuf clients can read back"
    ).strip()


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
