"""The NATS permission sets of the engine's two roles, for one prefix, and a nats-server
config block that puts them in an account of their own (``durable nats-permissions``
prints it; tests/test_nats_auth.py runs the engine under it).

- **worker**: publish and subscribe on its own subjects, read the engine's streams and
  buckets, take work from the work consumers, read journals through ephemeral ordered
  consumers; no stream or durable-consumer management (``durable._store`` says why each is
  needed). A worker can still write any invocation's records and journals of its prefix:
  the unit of isolation between teams is the prefix, or better the account.
- **control plane**: the whole JetStream API of the account (it provisions the streams,
  buckets and work consumers) and the engine's subjects.

Give each engine (prefix) its own account, so neither role reaches another engine's data.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import urllib.parse
from typing import Any


def worker_permissions(prefix: str) -> dict[str, Any]:
    p, P = prefix, prefix.upper()
    buckets = [f"{p}_invocations", f"{p}_workers", f"{p}_keys", f"{p}_state"]
    publish = [
        # The engine's own subjects: journal entries, work items and timers, object
        # inboxes, progress announcements, gRPC-over-NATS calls.
        f"{p}.journal.>",
        f"{p}.work.>",
        f"{p}.inbox.>",
        f"{p}.progress.>",
        f"{p}.grpc.>",
        *(f"$KV.{b}.>" for b in buckets),
        # Reads.
        "$JS.API.DIRECT.GET.>",
        "$JS.API.STREAM.MSG.GET.>",
        "$JS.API.STREAM.INFO.>",
        "$JS.API.CONSUMER.INFO.>",
        # Work: pull requests, acks and in-progress renewals.
        f"$JS.API.CONSUMER.MSG.NEXT.{P}_WORK.>",
        f"$JS.ACK.{P}_WORK.>",
        # An object key's inbox entry is deleted once its invocation took the key.
        f"$JS.API.STREAM.MSG.DELETE.{P}_INBOX",
        # Ephemeral ordered consumers: a journal on a cluster, the workers bucket's keys.
        f"$JS.API.CONSUMER.CREATE.{P}_JOURNAL",
        f"$JS.API.CONSUMER.CREATE.{P}_JOURNAL.>",
        f"$JS.API.CONSUMER.CREATE.KV_{p}_workers",
        f"$JS.API.CONSUMER.CREATE.KV_{p}_workers.>",
        f"$JS.API.CONSUMER.DELETE.{P}_JOURNAL.>",
        f"$JS.API.CONSUMER.DELETE.KV_{p}_workers.>",
        "$JS.FC.>",
        # Replies: to gRPC-over-NATS callers.
        "_INBOX.>",
    ]
    subscribe = ["_INBOX.>", f"{p}.signal.>", f"{p}.grpc.>"]
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}


def control_permissions(prefix: str) -> dict[str, Any]:
    p = prefix
    buckets = [f"{p}_invocations", f"{p}_workers", f"{p}_keys", f"{p}_state"]
    publish = [f"{p}.>", "$JS.API.>", "$JS.ACK.>", "$JS.FC.>", *(f"$KV.{b}.>" for b in buckets)]
    publish.append("_INBOX.>")
    subscribe = ["_INBOX.>", f"{p}.>"]
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}


def permissions_config(
    prefix: str,
    *,
    control: tuple[str, str],
    worker: tuple[str, str],
    account: str = "DURABLE",
) -> str:
    """A nats-server ``accounts`` block: one account with JetStream, a control-plane user and
    a worker user (names and passwords given), each with its permission set."""
    q = json.dumps

    def user(name: str, password: str, perms: dict[str, Any]) -> str:
        return f"{{user: {q(name)}, password: {q(password)}, permissions: {q(perms)}}}"

    users = ",\n      ".join(
        [
            user(*control, control_permissions(prefix)),
            user(*worker, worker_permissions(prefix)),
        ]
    )
    return (
        f"accounts {{\n  {account} {{\n    jetstream: enabled\n    users: [\n      {users}\n"
        "    ]\n  }\n}\n"
    )


@dataclasses.dataclass(frozen=True)
class DevUsers:
    """The users ``durable dev --nats-auth`` starts its embedded nats-server with."""

    passwords: dict[str, str]
    config: str

    def url(self, server_url: str, role: str) -> str:
        """``server_url`` with the user of ``role`` (control or worker) in it."""
        parts = urllib.parse.urlsplit(server_url)
        user = f"durable-{role}"
        netloc = f"{user}:{self.passwords[role]}@{parts.netloc}"
        return parts._replace(netloc=netloc).geturl()


def dev_nats_users(prefix: str) -> DevUsers:
    """A control-plane and a worker user with passwords made now (nothing to configure)."""
    passwords = {role: secrets.token_urlsafe(18) for role in ("control", "worker")}
    config = permissions_config(
        prefix,
        control=("durable-control", passwords["control"]),
        worker=("durable-worker", passwords["worker"]),
    )
    return DevUsers(passwords, config)
