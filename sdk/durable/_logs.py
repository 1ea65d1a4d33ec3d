"""The engine's log lines: text for people (the default) or one JSON object per line
(``--log-format json``) for log pipelines, each naming the invocation it concerns.

A worker sets the invocation a task works on (:func:`about`), its handler and attempt once
it knows them, and the step it is at (:func:`at_step`); every line logged from that task
then carries ``invocation_id``, ``handler``, ``attempt`` and ``step``. No payload is ever
put on a line (README, Security).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
from typing import Any

#: What the current task's log lines are about: invocation id, handler, attempt, step.
_scope: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "durable_log_scope", default=None
)


def about(invocation_id: str, **fields: Any) -> None:
    """From now on, this task's lines concern ``invocation_id`` (a task's context is its
    own, so this never leaks into another task)."""
    _scope.set({"invocation_id": invocation_id, **fields})


def note(**fields: Any) -> None:
    """Add what became known (``handler``, ``attempt``) to this task's invocation."""
    scope = _scope.get()
    if scope is not None:
        scope.update(fields)


def at_step(index: int) -> None:
    """This task's invocation is at step ``index``."""
    scope = _scope.get()
    if scope is not None:
        scope["step"] = index


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the
    invocation fields when the line concerns one, and the exception when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        scope = _scope.get()
        if scope:
            line.update(scope)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(level: str, fmt: str) -> None:
    """Set up the root logger for an engine process: ``fmt`` is ``text`` or ``json``."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(
        level=getattr(logging, str(level).upper(), logging.INFO), handlers=[handler], force=True
    )
