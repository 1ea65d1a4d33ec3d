"""Plain-text tables and field lists for the ``durable`` CLI, without extra dependencies.

Tables size each column to its widest cell (capped, with an ellipsis), narrow the widest
columns further so a row fits the terminal when output goes to one, underline the header,
right-align numeric columns and never leave trailing spaces, so output reads well in a
terminal and diffs cleanly in tests.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterable, Sequence

__all__ = ["format_fields", "format_table", "terminal_width", "truncate"]

_GAP = "  "
_ELLIPSIS = "…"


def truncate(text: str, width: int) -> str:
    """Cut ``text`` to at most ``width`` characters, marking the cut with an ellipsis."""
    if width <= 0:
        return ""
    if len(text) <= width:
        return text
    return text[: width - 1] + _ELLIPSIS


#: Narrowest a column is cut to (or its header, when wider) to fit the terminal.
_MIN_COLUMN = 8


def terminal_width() -> int | None:
    """Columns of the terminal stdout writes to; None when it is not a terminal."""
    if not sys.stdout.isatty():
        return None
    return shutil.get_terminal_size().columns


def _fit(widths: list[int], floors: list[int], limit: int) -> list[int]:
    """Narrow the widest columns, one character at a time, until a row fits ``limit``."""
    widths = list(widths)
    floors = [min(f, w) for f, w in zip(floors, widths, strict=True)]
    while sum(widths) + len(_GAP) * (len(widths) - 1) > limit:
        room = [w - f for w, f in zip(widths, floors, strict=True)]
        if max(room) <= 0:
            break  # as narrow as it goes: the terminal wraps what is left
        widest = max(range(len(widths)), key=lambda i: widths[i] if room[i] > 0 else -1)
        widths[widest] -= 1
    return widths


def _cell(value: object) -> str:
    if value is None:
        return ""
    text = str(value)
    # One row per line: newlines and tabs inside a cell would break the grid.
    return " ".join(text.split()) if any(c in text for c in "\n\r\t") else text


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def format_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    max_width: int = 60,
    width: int | None = None,
) -> str:
    """Render ``rows`` under ``headers`` as an aligned text table (no trailing newline).

    Cells are converted with ``str`` (``None`` is blank) and cut to ``max_width``
    characters. A row fits in ``width`` characters (default: the terminal's, when stdout is
    one; no limit otherwise) by narrowing the widest columns, never below their header nor
    an id column (header ending in ``ID``). A
    column whose non-blank cells are all numbers is right-aligned. The header is followed by
    a line of dashes as wide as each column.
    """
    raw = [list(row) for row in rows]
    grid = [[truncate(_cell(v), max_width) for v in row] for row in raw]
    ncols = len(headers)
    for i, row in enumerate(grid):
        if len(row) != ncols:
            raise ValueError(f"row {i} has {len(row)} cells, expected {ncols}")
    widths = [len(h) for h in headers]
    for row in grid:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    limit = terminal_width() if width is None else width
    if limit is not None:
        # Ids are what a person copies into the next command: never cut them.
        floors = [
            w if h.endswith("ID") else max(len(h), _MIN_COLUMN)
            for h, w in zip(headers, widths, strict=True)
        ]
        widths = _fit(widths, floors, limit)
        grid = [[truncate(c, w) for c, w in zip(row, widths, strict=True)] for row in grid]
    numeric = [
        any(row[i] is not None and row[i] != "" for row in raw)
        and all(_is_number(row[i]) for row in raw if row[i] is not None and row[i] != "")
        for i in range(ncols)
    ]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if right else c.ljust(w)
            for c, w, right in zip(cells, widths, numeric, strict=True)
        ]
        return _GAP.join(parts).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(row) for row in grid)
    return "\n".join(out)


def format_fields(fields: Iterable[tuple[str, object]], *, skip_blank: bool = True) -> str:
    """Render ``(label, value)`` pairs as aligned ``label  value`` lines (no trailing newline).

    Blank values (``None`` or ``""``) are left out unless ``skip_blank`` is false, so a
    view lists only what is known.
    """
    pairs = [(label, _cell(value)) for label, value in fields]
    if skip_blank:
        pairs = [(label, value) for label, value in pairs if value]
    width = max((len(label) for label, _ in pairs), default=0)
    return "\n".join(f"{label.ljust(width)}{_GAP}{value}".rstrip() for label, value in pairs)
