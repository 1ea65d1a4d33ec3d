"""Worker-internal control flow, and the per-invocation flags that Pause and Cancel set.

The signals subclass the SDK's private ``_RuntimeSignal`` (a ``BaseException``) so that a
handler's ``except Exception`` cannot swallow them on their way back to the executor.
"""

from __future__ import annotations

from dataclasses import dataclass

from durable.errors import _RuntimeSignal


class Fenced(_RuntimeSignal):
    """Another worker drives this invocation now; stop without touching it further."""


class RetryAttempt(_RuntimeSignal):
    """A ``ctx.run`` step failed with a retryable error and has no retry policy of its own:
    end this attempt and retry the invocation under the handler's policy."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class ReplayDone(_RuntimeSignal):
    """A replay-only run (``durable replay``) reached a step the journal does not hold:
    everything before it matched, and nothing after it may run."""

    def __init__(self, index: int) -> None:
        super().__init__(f"replayed up to step {index}")
        self.index = index


@dataclass
class ControlFlags:
    """What the control plane asked of a running invocation; read at every new step."""

    pause: bool = False
    cancel: bool = False
    cancel_reason: str = ""
