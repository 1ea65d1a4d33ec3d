"""The security flags of ``durable server`` and ``durable dev``, the bind-safety rule, and
``durable keys new``.

A control plane listening beyond loopback must not serve journals (which hold personal
data and secrets) in the clear to anyone: without TLS and authentication it refuses to
start there, unless ``--insecure`` says the network around it is trusted.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
from pathlib import Path
from typing import Any

import grpc

from durable_server.control.auth import Authenticator, KeyFile, Role, load_plugin, token_digest
from durable_server.control.tls import TlsFiles
from durable_server.nats_permissions import permissions_config


def add_security_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("security (see the README's Security section)")
    g.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve TLS with this certificate")
    g.add_argument("--tls-key", type=Path, metavar="PEM", help="the certificate's private key")
    g.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="PEM",
        help="require client certificates signed by this CA (mutual TLS)",
    )
    g.add_argument(
        "--auth-keys",
        type=Path,
        default=os.environ.get("DURABLE_AUTH_KEYS") or None,
        metavar="TOML",
        help="require credentials: API keys (by SHA-256) and client identities with roles; "
        "re-read when it changes (`durable keys new` makes entries; env DURABLE_AUTH_KEYS)",
    )
    g.add_argument(
        "--auth-plugin",
        metavar="MODULE:ATTR",
        help="another authentication scheme: an object with authenticate(caller)",
    )
    g.add_argument(
        "--reflection",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve gRPC server reflection (what grpcurl and buf curl use without protos)",
    )
    g.add_argument(
        "--insecure",
        action="store_true",
        help="listen beyond loopback without TLS or authentication (a trusted network only)",
    )


def is_loopback(listen: str) -> bool:
    """Whether ``HOST:PORT`` listens on this machine only (never a name or a wildcard)."""
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, or 0.0.0.0 / [::]: reachable from elsewhere


def security_options(args: argparse.Namespace) -> dict[str, Any]:
    """ControlServer's tls, authenticators and reflection from the flags; SystemExit with
    one line for flags that do not go together or a bind that would be unsafe."""
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise SystemExit("error: --tls-cert and --tls-key go together")
        tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca)
        for path in (args.tls_cert, args.tls_key, args.tls_client_ca):
            if path is not None and not path.is_file():
                raise SystemExit(f"error: {path} does not exist")
    elif args.tls_client_ca:
        raise SystemExit("error: --tls-client-ca needs --tls-cert and --tls-key")
    authenticators: list[Authenticator] | None = None
    if args.auth_keys or args.tls_client_ca or args.auth_plugin:
        if args.auth_keys is not None and not args.auth_keys.is_file():
            raise SystemExit(f"error: --auth-keys {args.auth_keys} does not exist")
        authenticators = [
            KeyFile(args.auth_keys, trust_any_client_cert=args.tls_client_ca is not None)
        ]
        if args.auth_plugin:
            try:
                authenticators.append(load_plugin(args.auth_plugin))
            except (ImportError, AttributeError, ValueError) as err:
                raise SystemExit(f"error: --auth-plugin: {err}") from None
    if (
        not is_loopback(args.listen)
        and not args.insecure
        and (tls is None or authenticators is None)
    ):
        missing = " and ".join(
            what
            for what, absent in (("TLS", tls is None), ("authentication", authenticators is None))
            if absent
        )
        raise SystemExit(
            f"error: refusing to listen on {args.listen} without {missing}: anyone who reaches "
            "it could read every journal and steer every invocation. Give --tls-cert/--tls-key "
            "and --auth-keys (or --tls-client-ca), listen on 127.0.0.1, or pass --insecure on a "
            "trusted network"
        )
    return {"tls": tls, "authenticators": authenticators, "reflection": args.reflection}


def add_client_security_flags(p: argparse.ArgumentParser, repeated: bool) -> None:
    """How the CLI reaches a control plane that speaks TLS or wants credentials; each also
    from the environment (DURABLE_TLS=1, DURABLE_CA, DURABLE_CERT, DURABLE_CERT_KEY,
    DURABLE_TOKEN). The client key is ``--cert-key``: ``--key`` names an object key."""
    env = os.environ.get

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if repeated else value

    p.add_argument(
        "--tls",
        action="store_true",
        default=default(env("DURABLE_TLS", "") not in ("", "0", "false")),
        help="connect with TLS (implied by --ca, --cert)",
    )
    p.add_argument(
        "--ca", default=default(env("DURABLE_CA")), metavar="PEM", help="CA to verify the server"
    )
    p.add_argument(
        "--cert", default=default(env("DURABLE_CERT")), metavar="PEM", help="client certificate"
    )
    p.add_argument(
        "--cert-key",
        default=default(env("DURABLE_CERT_KEY")),
        metavar="PEM",
        help="the client certificate's private key",
    )
    p.add_argument(
        "--token",
        default=default(env("DURABLE_TOKEN")),
        metavar="TOKEN",
        help="API key, sent as authorization: Bearer (prefer DURABLE_TOKEN: arguments show in ps)",
    )


def client_security(args: argparse.Namespace) -> dict[str, Any]:
    """Client(...)'s credentials and token from the flags."""
    ca, cert, key = (getattr(args, name, None) for name in ("ca", "cert", "cert_key"))
    out: dict[str, Any] = {"token": getattr(args, "token", None) or None}
    if getattr(args, "tls", False) or ca or cert or key:
        if bool(cert) != bool(key):
            raise SystemExit("error: --cert and --cert-key go together")

        def read(path: str | None) -> bytes | None:
            if path is None:
                return None
            try:
                return Path(path).read_bytes()
            except OSError as err:
                raise SystemExit(f"error: cannot read {path}: {err.strerror}") from None

        out["credentials"] = grpc.ssl_channel_credentials(read(ca), read(key), read(cert))
    return out


def add_keys_command(sub: argparse._SubParsersAction[Any]) -> None:
    keys = sub.add_parser(
        "keys",
        help="make an API key for --auth-keys",
        description="Make an API key: prints the token (give it to the client, once) and "
        "the entry to add to the --auth-keys file (which keeps only its SHA-256).",
    )
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    new = keys_sub.add_parser("new", help="a new key")
    new.add_argument("--name", required=True, help="who holds it (shown in the audit log)")
    new.add_argument(
        "--role",
        dest="roles",
        action="append",
        choices=[r.value for r in Role],
        required=True,
        help="invoke, read or operate (repeatable)",
    )
    new.add_argument(
        "--service", dest="services", action="append", help="only this service (repeatable)"
    )
    new.set_defaults(func=_new_key)


def add_nats_permissions_command(sub: argparse._SubParsersAction[Any]) -> None:
    perms = sub.add_parser(
        "nats-permissions",
        help="print a nats-server accounts block with the control-plane and worker users",
        description="Print a nats-server config block: an account with JetStream holding a "
        "control-plane user (manages the engine's streams) and a worker user (publishes and "
        "subscribes on its own subjects only). Passwords are read by nats-server from the "
        "environment variables named.",
    )
    perms.add_argument("--prefix", default="durable", help="the engine's --prefix")
    perms.add_argument("--control-user", default="durable-control")
    perms.add_argument("--worker-user", default="durable-worker")
    perms.set_defaults(func=_print_permissions)


def _print_permissions(args: argparse.Namespace) -> int:
    block = permissions_config(
        args.prefix,
        control=(args.control_user, "$DURABLE_CONTROL_PASSWORD"),
        worker=(args.worker_user, "$DURABLE_WORKER_PASSWORD"),
    )
    # nats-server reads $NAME as an environment variable only outside quotes.
    block = block.replace('"$DURABLE_CONTROL_PASSWORD"', "$DURABLE_CONTROL_PASSWORD")
    print(block.replace('"$DURABLE_WORKER_PASSWORD"', "$DURABLE_WORKER_PASSWORD"), end="")
    return 0


def _new_key(args: argparse.Namespace) -> int:
    token = "dk_" + secrets.token_urlsafe(32)
    lines = [
        "[[key]]",
        f'name = "{args.name}"',
        "roles = [" + ", ".join(f'"{r}"' for r in sorted(set(args.roles))) + "]",
    ]
    if args.services:
        lines.append("services = [" + ", ".join(f'"{s}"' for s in sorted(set(args.services))) + "]")
    lines.append(f'sha256 = "{token_digest(token)}"')
    print(f"token (give it to the client; it is not stored anywhere): {token}")
    print("add to the --auth-keys file:\n")
    print("\n".join(lines))
    return 0
