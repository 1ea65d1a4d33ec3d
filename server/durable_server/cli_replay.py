"""``durable replay``: check stored journals against code before deploying it.

It lists the invocations of the module's handlers through ``DurableControl`` (``--target``;
newest first, back to ``--since``), reads each one's record and journal straight from
JetStream (``--nats``, ``--prefix``: the read rights of a worker), and replays the journal
against the module's code with a replay-only context (``durable._worker.replayer``):
nothing runs, nothing is written. It reports every invocation the code would not replay
(non-deterministic, or raising), as a table or with ``--json`` one JSON object, and exits
1 when there is any, so a deploy pipeline can stop on it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterator

from durable.contract import (
    Client,
    EngineConfig,
    Registry,
    Verdict,
    Waker,
    add_nats_auth_flags,
    connect_nats,
    load_modules,
    open_store,
    replay_one,
)
from durable.contract import RecordNotFound as _RecordNotFound
from durable_server._tables import format_table
from durable_server.cli_views import Progress, add_since_flag, since

_AddCommand = argparse.ArgumentParser


def add_replay_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--module", action="append", required=True, help="module with the handlers to check"
    )
    p.add_argument("--handler", default="", metavar="H", help="only this handler")
    add_since_flag(p)
    p.add_argument("--limit", type=int, default=0, metavar="N", help="check at most N (newest)")
    p.add_argument(
        "--code-version",
        default=None,
        help="the version this code will run as; invocations pinned to another are skipped "
        "(default: the digest a worker would derive)",
    )
    p.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS URL of the store")
    p.add_argument("--prefix", default="durable", help="namespace of streams and buckets")
    p.add_argument("--replicas", type=int, default=1, help="JetStream replicas; 3 on a cluster")
    add_nats_auth_flags(p)


async def _ids(client: Client, registry: Registry, args: argparse.Namespace) -> AsyncIterator[str]:
    since_time = since(args.since)
    names = {h.full_name for h in registry}
    if args.handler and args.handler not in names:
        raise SystemExit(f"error: the modules define no handler {args.handler}")
    handlers = [args.handler] if args.handler else sorted(names)
    seen = 0
    for handler in handlers:
        async for summary in client.list_all(
            handler=handler, page_size=1000, created_after=since_time
        ):
            yield summary.id
            seen += 1
            if args.limit and seen >= args.limit:
                return


async def cmd_replay(client: Client, args: argparse.Namespace) -> int:
    services, _ = load_modules(args.module)
    registry = Registry(services)
    version = args.code_version or registry.code_version()
    cfg = EngineConfig(
        nats_url=args.nats,
        prefix=args.prefix,
        replicas=args.replicas,
        nats_creds=args.nats_creds,
        nats_ca=args.nats_ca,
        nats_cert=args.nats_cert,
        nats_key=args.nats_key,
    )
    nc = await connect_nats(cfg, "durable-replay", wait=10.0)
    progress = Progress(sys.stderr)
    found = []
    checked = 0
    try:
        store = await open_store(nc, cfg)
        waker = Waker(nc.jetstream(), cfg, store.records, store.work, keys=store.keys)
        async for invocation_id in _ids(client, registry, args):
            try:
                record = (await store.records.get(invocation_id)).record
            except _RecordNotFound:
                continue  # not written yet (no step journaled either) or purged since
            loaded = await store.journal.load(invocation_id)
            result = await replay_one(
                registry,
                record,
                loaded.entries,
                journal=store.journal,
                waker=waker,
                version=version,
            )
            checked += 1
            if result.verdict in (Verdict.NON_DETERMINISTIC, Verdict.RAISED):
                found.append(result)
            progress.update(f"replayed {checked}, {len(found)} would break")
    finally:
        progress.done()
        await nc.drain()
    if args.json:
        print(
            json.dumps(
                {
                    "version": version,
                    "checked": checked,
                    "failing": [
                        {
                            "invocation_id": r.invocation_id,
                            "handler": r.handler,
                            "verdict": str(r.verdict),
                            "step": r.steps,
                            "detail": r.detail,
                        }
                        for r in found
                    ],
                },
                indent=2,
            )
        )
    else:
        print(f"replayed {checked} invocations against version {version}")
        if found:
            rows = [(r.invocation_id, r.handler, str(r.verdict), r.steps, r.detail) for r in found]
            print(format_table(("ID", "HANDLER", "VERDICT", "STEP", "DETAIL"), rows, max_width=90))
        else:
            print("every one replays on this code")
    return 1 if found else 0
