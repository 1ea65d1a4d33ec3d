"""Retry policy with exponential backoff, per handler and per ``ctx.run``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random


def _seconds(value: float | dt.timedelta) -> float:
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How a failed attempt is retried: exponential backoff with jitter, optionally bounded.

    Any exception other than :class:`~durable.TerminalError` is retried under this policy.
    On a handler, a retry re-runs the handler from its journal (completed steps are not run
    again). On ``ctx.run``, a retry re-runs just that step in place; when its attempts are
    used up the step fails with a ``TerminalError`` that is journaled like a result.
    """

    initial_interval: float | dt.timedelta = 0.1
    """Delay before the first retry."""
    backoff_coefficient: float = 2.0
    """Each delay is the previous one times this."""
    maximum_interval: float | dt.timedelta = 60.0
    """Delays never exceed this."""
    maximum_attempts: int | None = None
    """Attempts in all, the first included; None retries without end."""
    jitter: float = 0.1
    """Each delay is randomly shortened or lengthened by up to this fraction."""

    def __post_init__(self) -> None:
        if _seconds(self.initial_interval) < 0 or _seconds(self.maximum_interval) < 0:
            raise ValueError("retry intervals must not be negative")
        if self.backoff_coefficient < 1:
            raise ValueError("backoff_coefficient must be at least 1")
        if self.maximum_attempts is not None and self.maximum_attempts < 1:
            raise ValueError("maximum_attempts must be at least 1 (or None for no limit)")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = _seconds(self.initial_interval) * self.backoff_coefficient ** max(0, attempt - 1)
        base = min(base, _seconds(self.maximum_interval))
        if self.jitter:
            base *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(0.0, base)

    def gives_up_after(self, attempt: int) -> bool:
        """True when ``attempt`` failed attempts use the policy up."""
        return self.maximum_attempts is not None and attempt >= self.maximum_attempts


DEFAULT_HANDLER_RETRY = RetryPolicy(initial_interval=0.5, maximum_interval=60.0)
