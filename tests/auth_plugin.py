"""An --auth-plugin for tests/test_authz.py: accepts "authorization: Signed <name>.<sig>"
where sig is an HMAC of the name, standing in for a JWT verifier."""

from __future__ import annotations

import hashlib
import hmac

from durable_server.control.auth import Caller, Principal, Role, Unauthenticated

SECRET = b"plugin-test-secret"


def sign(name: str) -> str:
    return f"Signed {name}.{hmac.new(SECRET, name.encode(), hashlib.sha256).hexdigest()}"


class SignedNames:
    """Names signed with SECRET get the read role."""

    def authenticate(self, caller: Caller) -> Principal | None:
        value = caller.metadata.get("authorization", "")
        if not value.startswith("Signed "):
            return None  # not this scheme's: another one may accept it
        name = value[len("Signed ") :].partition(".")[0]
        if not hmac.compare_digest(sign(name), value):
            raise Unauthenticated("the signature does not match")
        return Principal(name, frozenset({Role.READ}))


plugin = SignedNames()
