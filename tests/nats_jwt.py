"""NATS decentralized auth for the tests, made here: an operator, an account with
JetStream, and users whose JWTs carry the engine's permission sets, written as ``.creds``
files (a user JWT and its nkey seed), as ``nsc`` would make them."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import nkeys


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@dataclasses.dataclass(frozen=True)
class NKey:
    seed: bytes
    public: str

    @classmethod
    def new(cls, prefix: int) -> NKey:
        seed = nkeys.encode_seed(os.urandom(32), prefix)
        return cls(seed, nkeys.from_seed(bytearray(seed)).public_key.decode())

    def sign(self, data: bytes) -> bytes:
        return bytes(nkeys.from_seed(bytearray(self.seed)).sign(data))


def _jwt(issuer: NKey, subject: str, name: str, claims: dict[str, Any]) -> str:
    body: dict[str, Any] = {
        "iat": int(time.time()),
        "iss": issuer.public,
        "name": name,
        "sub": subject,
        "nats": {"version": 2, **claims},
    }
    body["jti"] = base64.b32encode(hashlib.sha256(json.dumps(body).encode()).digest()).decode()
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    signing = f"{header}.{_b64(json.dumps(body).encode())}"
    return f"{signing}.{_b64(issuer.sign(signing.encode()))}"


_UNLIMITED = {"subs": -1, "data": -1, "payload": -1}


class Operator:
    """One operator and one account with JetStream; users are made per permission set."""

    def __init__(self) -> None:
        self.operator = NKey.new(nkeys.PREFIX_BYTE_OPERATOR)
        self.account = NKey.new(nkeys.PREFIX_BYTE_ACCOUNT)
        self.operator_jwt = _jwt(
            self.operator, self.operator.public, "durable-test", {"type": "operator"}
        )
        limits = {
            **_UNLIMITED,
            "imports": -1,
            "exports": -1,
            "wildcards": True,
            "conn": -1,
            "leaf": -1,
            "mem_storage": -1,
            "disk_storage": -1,
            "streams": -1,
            "consumer": -1,
        }
        self.account_jwt = _jwt(
            self.operator, self.account.public, "ENGINE", {"type": "account", "limits": limits}
        )
        # nats-server runs JetStream only with a system account.
        self.system = NKey.new(nkeys.PREFIX_BYTE_ACCOUNT)
        self.system_jwt = _jwt(self.operator, self.system.public, "SYS", {"type": "account"})

    def server_config(self) -> str:
        return (
            f"operator: {json.dumps(self.operator_jwt)}\n"
            f"system_account: {self.system.public}\n"
            "resolver: MEMORY\n"
            f"resolver_preload: {{\n  {self.account.public}: {json.dumps(self.account_jwt)}\n"
            f"  {self.system.public}: {json.dumps(self.system_jwt)}\n}}\n"
        )

    def creds(self, path: Path, name: str, permissions: dict[str, Any]) -> Path:
        """A ``.creds`` file for a user of the account with ``permissions`` (the
        nats-server config's shape: publish/subscribe allow lists)."""
        user = NKey.new(nkeys.PREFIX_BYTE_USER)
        claims = {
            "type": "user",
            **_UNLIMITED,
            "pub": {"allow": permissions["publish"]["allow"]},
            "sub": {"allow": permissions["subscribe"]["allow"]},
        }
        token = _jwt(self.account, user.public, name, claims)
        path.write_text(
            "-----BEGIN NATS USER JWT-----\n"
            f"{token}\n"
            "------END NATS USER JWT------\n\n"
            "-----BEGIN USER NKEY SEED-----\n"
            f"{user.seed.decode()}\n"
            "------END USER NKEY SEED------\n"
        )
        return path
