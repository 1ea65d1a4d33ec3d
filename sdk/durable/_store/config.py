"""Settings shared by the control plane and the workers.

One frozen dataclass so that both processes derive the same stream, bucket and subject names
from one prefix, and so tests can run several isolated engines on one nats-server.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import urllib.parse

_PREFIX_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")  # fullmatch: "$" matches before a newline

MiB = 1024 * 1024

#: The lane of invocations any version of their service's code may run.
ANY_LANE = "_"
_LANE_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")


def lane_of(version: str) -> str:
    """The subject token of a code version's lane: ``v`` and the version when it is a plain
    token (``v2024-06-01``), else ``h`` and a digest of it (a version like ``1.4.2``)."""
    if _LANE_RE.fullmatch(version):
        return f"v{version}"
    digest = hashlib.sha256(version.encode()).hexdigest()[:20]
    return f"h{digest}"


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Where the engine keeps its data and the limits it enforces."""

    nats_url: str = "nats://127.0.0.1:4222"
    """One URL or a comma-separated list (a cluster)."""
    nats_creds: str = ""
    """A NATS credentials file (user JWT and nkey seed), for servers in operator mode."""
    nats_ca: str = ""
    """PEM file of the CA that signed the NATS servers' certificates (TLS to NATS)."""
    nats_cert: str = ""
    """PEM client certificate for NATS servers that verify clients (with ``nats_key``)."""
    nats_key: str = ""
    """The client certificate's private key."""
    prefix: str = "durable"
    """Namespace of every subject, stream and bucket; lets engines share a NATS account."""
    replicas: int = 1
    """JetStream replicas for the engine's streams and buckets (3 on a cluster)."""
    ack_wait: float = 30.0
    """Seconds a worker may hold an invocation without a heartbeat before it is redelivered."""
    max_payload_bytes: int = 1 * MiB
    """Largest input or output accepted, in bytes."""
    duplicate_window: float = 120.0
    """JetStream duplicate window for work items, seconds."""
    heartbeat_interval: float = 5.0
    """Seconds between worker registry heartbeats."""
    pending_record_after: float = 5.0
    """Seconds after Invoke at which the control plane writes the PENDING record of an
    invocation that no worker has claimed (and so created) yet."""
    reconcile_after: float = 10.0
    """A PENDING invocation with no work item for this long is enqueued again."""
    running_record_after: float = 0.2
    """Seconds a fresh invocation runs before its worker writes its RUNNING record; shorter
    ones write their record once, finished."""
    max_state_bytes: int = 4 * MiB
    """Largest state of one virtual object key or workflow id, all entries together."""
    retention: float = 7 * 24 * 3600.0
    """Seconds an ended invocation is kept before it is purged; 0 keeps them forever."""
    max_waiters: int = 10_000
    """Most requests one control plane holds open while they wait (Invoke with wait,
    AwaitResult, WatchWorkflow); beyond it they get RESOURCE_EXHAUSTED at once."""
    max_wait: float = 300.0
    """Longest a single Invoke with wait or AwaitResult holds before it answers "not done
    yet" (the client then asks again), whatever timeout the request asked for."""

    def __repr__(self) -> str:
        # The URL may carry a password or token: never print it.
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        shown["nats_url"] = redact_url(self.nats_url)
        return f"EngineConfig({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def __post_init__(self) -> None:
        if not _PREFIX_RE.fullmatch(self.prefix):
            raise ValueError(
                f"prefix {self.prefix!r} must be lowercase letters, digits or '_', "
                "start with a letter, at most 32 characters"
            )
        if self.max_waiters < 1:
            raise ValueError(f"max_waiters must be at least 1, not {self.max_waiters}")
        if not self.max_wait > 0:
            raise ValueError(f"max_wait must be a positive number of seconds, not {self.max_wait}")

    # Names derived from the prefix: one place, so that no two modules disagree.
    @property
    def journal_stream(self) -> str:
        return f"{self.prefix.upper()}_JOURNAL"

    def journal_subject(self, invocation_id: str, *, final: bool = False) -> str:
        """Where one journal's entries go: steps on ``.s``; the entry that carries the
        outcome on ``.f``, so that the stream can republish outcomes alone."""
        return f"{self.prefix}.journal.{invocation_id}.{'f' if final else 's'}"

    def journal_seal_subject(self, invocation_id: str) -> str:
        """The control plane's mark on a journal that no worker has written yet (``.c``):
        not an entry, but it moves the fence; see ``Journal.seal``."""
        return f"{self.prefix}.journal.{invocation_id}.c"

    def journal_filter(self, invocation_id: str) -> str:
        """Every entry of one journal, in order; also the scope of its fence."""
        return f"{self.prefix}.journal.{invocation_id}.*"

    def awakeable_subject(self, invocation_id: str, index: int) -> str:
        """Where an awakeable's resolution is stored, at most once (``.a.<step>``): beside
        the journal, outside its fence, so an early resolve cannot fence the worker."""
        return f"{self.prefix}.journal.{invocation_id}.a.{index}"

    def promise_subject(self, run_id: str, name_token: str) -> str:
        """Where a workflow promise's resolution is stored, at most once, beside the
        journal of the workflow's run invocation."""
        return f"{self.prefix}.journal.{run_id}.p.{name_token}"

    @property
    def inbox_stream(self) -> str:
        return f"{self.prefix.upper()}_INBOX"

    def inbox_subject(self, obj: str, key_token: str) -> str:
        """Exclusive invocations of one object key, in arrival order."""
        return f"{self.prefix}.inbox.{obj}.{key_token}"

    @property
    def state_bucket(self) -> str:
        return f"{self.prefix}_state"

    @property
    def locks_bucket(self) -> str:
        return f"{self.prefix}_keys"

    @property
    def work_stream(self) -> str:
        return f"{self.prefix.upper()}_WORK"

    # Work is routed by service: an invocation's items go to a subject that names its
    # service and its lane (``ANY_LANE``, or the code version a pinned invocation stays on),
    # and each (service, lane) has its own consumer, shared by the workers that host it.
    # See "Routing" in docs/architecture.md.

    def run_subject(self, service: str, invocation_id: str, lane: str = "") -> str:
        """Where an invocation's work items go: ``<p>.work.run.<service>.<lane>.<id>``."""
        return f"{self.prefix}.work.run.{service}.{lane or ANY_LANE}.{invocation_id}"

    def run_subject_any_lane(self, service: str, invocation_id: str) -> str:
        """Every lane of one invocation's items, to read its newest (direct get takes a
        wildcard) or to purge them."""
        return f"{self.prefix}.work.run.{service}.*.{invocation_id}"

    def wake_subject(self, service: str, invocation_id: str) -> str:
        """Where a fired timer lands: "look at invocation X", never "drive X" (``wake``)."""
        return f"{self.prefix}.work.wake.{service}.{invocation_id}"

    def timer_subject(self, invocation_id: str, index: int) -> str:
        """The message schedule of one durable timer; fires onto :meth:`wake_subject`."""
        return f"{self.prefix}.work.timer.{invocation_id}.{index}"

    def delay_subject(self, invocation_id: str) -> str:
        """The message schedule of a delayed send; fires onto :meth:`run_subject`."""
        return f"{self.prefix}.work.delay.{invocation_id}"

    def run_filters(self, service: str, lane: str = "") -> list[str]:
        """What the consumer of one (service, lane) takes: its items and, on the shared lane,
        the service's wake-ups."""
        lane = lane or ANY_LANE
        filters = [f"{self.prefix}.work.run.{service}.{lane}.*"]
        if lane == ANY_LANE:
            filters.append(f"{self.prefix}.work.wake.{service}.*")
        return filters

    def run_consumer(self, service: str, lane: str = "") -> str:
        """The durable consumer of one (service, lane): ``run_<service>`` for the shared
        lane, ``run_<service>@<lane>`` for a pinned version's."""
        lane = lane or ANY_LANE
        return f"run_{service}" if lane == ANY_LANE else f"run_{service}@{lane}"

    # Before routing by service (stores made by engine 0.1), every item went to
    # ``<p>.work.<id>`` and every wake-up to ``<p>.work.wake.<id>``, consumed by one shared
    # consumer, ``workers``. A control plane moves what is left there (and what schedules
    # made then still fire there) onto the routed subjects: control/routes.py.

    def legacy_work_subject(self, invocation_id: str) -> str:
        return f"{self.prefix}.work.{invocation_id}"

    def legacy_wake_subject(self, invocation_id: str) -> str:
        return f"{self.prefix}.work.wake.{invocation_id}"

    @property
    def legacy_filters(self) -> list[str]:
        return [f"{self.prefix}.work.*", f"{self.prefix}.work.wake.*"]

    @property
    def legacy_consumer(self) -> str:
        return "workers"

    @property
    def invocations_bucket(self) -> str:
        return f"{self.prefix}_invocations"

    @property
    def workers_bucket(self) -> str:
        return f"{self.prefix}_workers"

    def signal_subject(self, invocation_id: str) -> str:
        """Core NATS subject on which the control plane tells workers about pause/cancel."""
        return f"{self.prefix}.signal.{invocation_id}"

    def journaled_subject(self, invocation_id: str) -> str:
        """Core NATS subject on which the journal stream republishes an invocation's final
        entry once stored (with ``sync_interval: always``, once fsynced)."""
        return f"{self.prefix}.journaled.{invocation_id}"

    def progress_subject(self, invocation_id: str) -> str:
        """Core NATS subject on which workers announce the step they start (not persisted)."""
        return f"{self.prefix}.progress.{invocation_id}"

    @property
    def direct_reads(self) -> bool:
        """Whether reads may use JetStream direct get. On a replicated stream any replica
        answers a direct get, possibly before it has the newest message; reads that decide
        what to do next (records, journals, work items) must then go to the leader."""
        return self.replicas == 1

    @property
    def servers(self) -> list[str]:
        return [u.strip() for u in self.nats_url.split(",") if u.strip()]


def redact_url(url: str) -> str:
    """A NATS URL (or a comma-separated list) fit to print: a password, or a token (a user
    part without a password is NATS's token authentication), becomes ``***``."""
    return ",".join(_redact_one(u) for u in url.split(","))


def _redact_one(url: str) -> str:
    stripped = url.strip()
    try:
        parts = urllib.parse.urlsplit(stripped if "://" in stripped else f"nats://{stripped}")
    except ValueError:
        return "<a NATS URL that does not parse>"
    if "@" not in parts.netloc:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user, has_password, _ = userinfo.partition(":")
    shown = f"{user}:***" if has_password else "***"
    redacted = parts._replace(netloc=f"{shown}@{host}").geturl()
    return redacted if "://" in stripped else redacted.split("://", 1)[1]
