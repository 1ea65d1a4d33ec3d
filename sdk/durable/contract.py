"""The contract between this package (the sdk) and the engine (``durable_server``).

Not for user code. The engine's distribution, ``durable-nats-server``, is released with the
sdk at the same version and imports from the sdk only through this module (and the public
``durable``, ``durable.errors``, and the generated ``durable.v1`` / ``durable.internal.v1``
stubs); a test (tests/test_boundaries.py) holds it to that. What is here is what both
sides must agree on to share one store: the names and formats of streams, buckets and
subjects, the record and journal operations, ids, payload encoding and request limits, and
the worker runtime that ``durable dev`` and ``durable server --module`` host in-process.

Nothing here is stable for third parties: names may change in any release, together with
the server that uses them.
"""

from durable import _codec as codec
from durable import _metrics as metrics
from durable import _tracing as tracing
from durable._client import DEFAULT_TARGET, Client, parse_status
from durable._codec import (
    from_value,
    is_message_type,
    json_schema,
    json_type,
    preview,
    to_payload,
    to_value,
    value_to_json_bytes,
)
from durable._codec import jsonrules as json_rules
from durable._handlers import HandlerDef, Registry
from durable._limits import (
    DEFAULT_PAGE_SIZE,
    MAX_CONTENT_TYPE_CHARS,
    MAX_IDEMPOTENCY_KEY_CHARS,
    MAX_KEY_CHARS,
    MAX_NAME_CHARS,
    MAX_PAGE_SIZE,
    MAX_PAGE_TOKEN_CHARS,
    MAX_REASON_BYTES,
    quote,
    text_problem,
)
from durable._store import Store, open_store, patience
from durable._store.completions import NotAnAwakeable, TooFarAhead, TooManyPromises
from durable._store.config import ANY_LANE, EngineConfig, lane_of, redact_url
from durable._store.ids import (
    awakeable_id,
    idempotent_invocation_id,
    is_valid_invocation_id,
    new_invocation_id,
    parse_awakeable_id,
    service_of,
    token,
    workflow_run_id,
)
from durable._store.journal import JournalFenced, LoadedJournal
from durable._store.objects import StateTooLarge
from durable._store.patience import at_start_up
from durable._store.records import (
    MutationRefused,
    Record,
    RecordNotFound,
    RecordStore,
    Versioned,
    is_terminal,
    now_ts,
    status_name,
)
from durable._store.waking import AlreadyCompleted, Waker
from durable._store.workqueue import lane_of_record
from durable._worker.cli import (
    ShowDefaults,
    add_engine_flags,
    add_nats_auth_flags,
    add_telemetry_flags,
    add_worker_flags,
    engine_config,
    grpc_endpoints,
    handler_names,
    load_modules,
    run,
    run_worker,
    until_signalled,
)
from durable._worker.replayer import Verdict, replay_one
from durable._worker.runtime import Worker, connect_nats

__all__ = [
    "ANY_LANE",
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_TARGET",
    "MAX_CONTENT_TYPE_CHARS",
    "MAX_IDEMPOTENCY_KEY_CHARS",
    "MAX_KEY_CHARS",
    "MAX_NAME_CHARS",
    "MAX_PAGE_SIZE",
    "MAX_PAGE_TOKEN_CHARS",
    "MAX_REASON_BYTES",
    "AlreadyCompleted",
    "Client",
    "EngineConfig",
    "HandlerDef",
    "JournalFenced",
    "LoadedJournal",
    "MutationRefused",
    "NotAnAwakeable",
    "Record",
    "RecordNotFound",
    "RecordStore",
    "Registry",
    "ShowDefaults",
    "StateTooLarge",
    "Store",
    "TooFarAhead",
    "TooManyPromises",
    "Verdict",
    "Versioned",
    "Waker",
    "Worker",
    "add_engine_flags",
    "add_nats_auth_flags",
    "add_telemetry_flags",
    "add_worker_flags",
    "at_start_up",
    "awakeable_id",
    "codec",
    "connect_nats",
    "engine_config",
    "from_value",
    "grpc_endpoints",
    "handler_names",
    "idempotent_invocation_id",
    "is_message_type",
    "is_terminal",
    "is_valid_invocation_id",
    "json_rules",
    "json_schema",
    "json_type",
    "lane_of",
    "lane_of_record",
    "load_modules",
    "metrics",
    "new_invocation_id",
    "now_ts",
    "open_store",
    "parse_awakeable_id",
    "parse_status",
    "patience",
    "preview",
    "quote",
    "redact_url",
    "replay_one",
    "run",
    "run_worker",
    "service_of",
    "status_name",
    "text_problem",
    "to_payload",
    "to_value",
    "token",
    "tracing",
    "until_signalled",
    "value_to_json_bytes",
    "workflow_run_id",
]
