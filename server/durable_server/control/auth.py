"""Who may call DurableControl, and for what: authentication, roles per RPC, services.

With no authentication configured (``durable dev`` on loopback) every call is allowed.
Once a key file (``--auth-keys``), a client CA (``--tls-client-ca``) or a plug-in
(``--auth-plugin``) is given, every DurableControl call must authenticate:

- a bearer token (``authorization: Bearer <token>`` metadata), checked against the key
  file, which stores only each token's SHA-256 (``durable keys new`` makes both);
- or a client certificate verified against the client CA (mTLS): its subject's common name
  is the principal, with the roles the key file lists for it (``[[identity]]``), or, with no
  key file, every role;
- or whatever a plug-in accepts: ``module:attribute`` naming an object with the
  :class:`Authenticator` method, consulted after the key file.

Each RPC needs one role (:data:`ROLE_OF`): ``invoke`` (start invocations and complete what
they wait for), ``read`` (see invocations, their payloads and state) or ``operate`` (steer,
end, purge and edit state). Credentials may be limited to some services; a call about
another service is PERMISSION_DENIED, List without a handler filter too, and Stats and
ListHandlers show only the allowed services. Health is always open; reflection is open
while it is enabled (``--no-reflection`` turns it off). Every ``operate`` call is logged on
``durable.audit`` with the caller, the RPC and its target (never a payload).

The key file (TOML; reloaded when it changes)::

    [[key]]
    name = "ci"                 # who, in the audit log and in refusals
    roles = ["invoke", "read"]
    services = ["orders"]       # optional: only these services
    sha256 = "9f86d0..."        # of the token; the token itself is never stored

    [[identity]]
    common_name = "billing.internal"   # a client certificate's subject CN (mTLS)
    roles = ["operate", "read"]
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import importlib
import logging
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import grpc

from durable.contract import parse_awakeable_id, service_of
from durable.v1 import control_pb2, errors_pb2
from durable_server.control.errors import Handler, refusal_status

log = logging.getLogger("durable.control")
audit = logging.getLogger("durable.audit")

_SERVICE_PREFIX = "/durable.v1.DurableControl/"


class Role(enum.StrEnum):
    INVOKE = "invoke"
    READ = "read"
    OPERATE = "operate"


#: The role each DurableControl RPC needs.
ROLE_OF: dict[str, Role] = {
    "Invoke": Role.INVOKE,
    "AwaitResult": Role.INVOKE,
    "ResolveAwakeable": Role.INVOKE,
    "RejectAwakeable": Role.INVOKE,
    "ResolvePromise": Role.INVOKE,
    "RejectPromise": Role.INVOKE,
    "GetWorkflow": Role.READ,
    "ListWorkflows": Role.READ,
    "WatchWorkflow": Role.READ,
    "Stats": Role.READ,
    "ListHandlers": Role.READ,
    "GetObjectState": Role.READ,
    "GetServerInfo": Role.READ,
    "Pause": Role.OPERATE,
    "Resume": Role.OPERATE,
    "Cancel": Role.OPERATE,
    "Kill": Role.OPERATE,
    "Purge": Role.OPERATE,
    "SetObjectState": Role.OPERATE,
}


@dataclasses.dataclass(frozen=True)
class Principal:
    """An authenticated caller: its name, roles, and the services it may touch (None:
    all)."""

    name: str
    roles: frozenset[Role]
    services: frozenset[str] | None = None

    def may_touch(self, service: str) -> bool:
        return self.services is None or service in self.services


@dataclasses.dataclass(frozen=True)
class Caller:
    """What a call presents: its metadata and, under mTLS, the verified client
    certificate's subject common name."""

    metadata: Mapping[str, str]
    common_name: str | None

    @property
    def bearer(self) -> str | None:
        value = self.metadata.get("authorization", "")
        scheme, _, token = value.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class Authenticator(Protocol):
    """The one interface of an authentication scheme (the key file, a plug-in): the
    principal a call's credentials stand for, or None when they are not this scheme's
    (another one may accept them). Raise :class:`Unauthenticated` to refuse outright."""

    def authenticate(self, caller: Caller) -> Principal | None: ...


class Unauthenticated(Exception):
    """Credentials were presented and are wrong (not merely someone else's scheme)."""


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class KeyFile:
    """Tokens (by SHA-256) and client identities with their roles, from a TOML file that is
    read again when it changes, so keys rotate without a restart."""

    def __init__(self, path: Path | None, *, trust_any_client_cert: bool = False) -> None:
        self.path = path
        self._trust_any = trust_any_client_cert and path is None
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str, Principal] = {}
        self._identities: dict[str, Principal] = {}
        if path is not None:
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        stat = self.path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        data = tomllib.loads(self.path.read_text())
        keys = {entry["sha256"].lower(): _principal(entry, "key") for entry in data.get("key", [])}
        identities = {
            entry["common_name"]: _principal(entry, "identity")
            for entry in data.get("identity", [])
        }
        self._keys, self._identities, self._stamp = keys, identities, stamp
        log.info("auth keys: %d tokens, %d client identities", len(keys), len(identities))

    def authenticate(self, caller: Caller) -> Principal | None:
        if self.path is not None:
            try:
                self._load()
            except (OSError, tomllib.TOMLDecodeError, KeyError, ValueError) as err:
                log.error("auth keys %s unreadable, keeping the last good ones: %s", self.path, err)
        token = caller.bearer
        if token is not None:
            digest = token_digest(token)
            for known, principal in self._keys.items():
                if hmac.compare_digest(known, digest):
                    return principal
            return None
        if caller.common_name is not None:
            if caller.common_name in self._identities:
                return self._identities[caller.common_name]
            if self._trust_any:
                return Principal(caller.common_name, frozenset(Role))
        return None


def _principal(entry: Mapping[str, Any], what: str) -> Principal:
    name = str(entry.get("name") or entry.get("common_name") or what)
    roles = frozenset(Role(r) for r in entry.get("roles", []))
    services = entry.get("services")
    return Principal(name, roles, frozenset(services) if services is not None else None)


def load_plugin(spec: str) -> Authenticator:
    """``module:attribute``: an Authenticator, or a callable taking no arguments that
    returns one."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--auth-plugin {spec!r} must be module:attribute")
    target = getattr(importlib.import_module(module_name), attr)
    plugin = target if hasattr(target, "authenticate") else target()
    if not hasattr(plugin, "authenticate"):
        raise ValueError(f"--auth-plugin {spec!r} has no authenticate(caller) method")
    return plugin  # type: ignore[no-any-return]


#: Finds the service an invocation belongs to (None when there is no such invocation).
ServiceOf = Callable[[str], Awaitable[str | None]]


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Authenticates and authorizes every DurableControl call; see the module doc."""

    def __init__(
        self,
        authenticators: list[Authenticator],
        service_of_invocation: ServiceOf,
    ) -> None:
        self._authenticators = authenticators
        self._service_of_invocation = service_of_invocation

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or not method.startswith(_SERVICE_PREFIX):
            return handler  # health (and reflection while open)
        rpc = method[len(_SERVICE_PREFIX) :]
        return _guarded(handler, rpc, self)

    async def check(self, rpc: str, request: Any, context: Any) -> Principal:
        """The caller's principal, or abort the call: UNAUTHENTICATED, PERMISSION_DENIED."""
        metadata = {k.lower(): v for k, v in (context.invocation_metadata() or ())}
        names = context.auth_context().get("x509_common_name") or []
        common_name = names[0].decode() if names else None
        caller = Caller(metadata, common_name)
        principal = None
        try:
            for authenticator in self._authenticators:
                principal = authenticator.authenticate(caller)
                if principal is not None:
                    break
        except Unauthenticated as err:
            await _abort(context, errors_pb2.ERROR_REASON_UNAUTHENTICATED, str(err), {})
        if principal is None:
            why = (
                "the token is not one this control plane accepts (unknown or revoked)"
                if caller.bearer is not None
                else "this control plane requires credentials: send a token "
                "(authorization: Bearer ..., --token, DURABLE_TOKEN) or a client certificate"
            )
            await _abort(context, errors_pb2.ERROR_REASON_UNAUTHENTICATED, why, {})
        assert principal is not None
        role = ROLE_OF.get(rpc, Role.OPERATE)
        if role not in principal.roles:
            await _abort(
                context,
                errors_pb2.ERROR_REASON_PERMISSION_DENIED,
                f"{rpc} needs the {role} role; {principal.name} has "
                f"{', '.join(sorted(principal.roles)) or 'none'}",
                {"role": str(role), "principal": principal.name},
            )
        if principal.services is not None:
            service = await self._target_service(request)
            if rpc == "ListWorkflows" and service is None:
                await _abort(
                    context,
                    errors_pb2.ERROR_REASON_PERMISSION_DENIED,
                    f"{principal.name} may list only invocations of "
                    f"{', '.join(sorted(principal.services))}: filter by one of them or its "
                    "handlers",
                    {"role": str(role), "principal": principal.name},
                )
            if service is not None and not principal.may_touch(service):
                await _abort(
                    context,
                    errors_pb2.ERROR_REASON_PERMISSION_DENIED,
                    f"{principal.name} may not touch service {service}",
                    {"role": str(role), "principal": principal.name, "service": service},
                )
        if role == Role.OPERATE:
            audit.info("%s by %s: %s", rpc, principal.name, _target_text(request) or "(no target)")
        return principal

    async def _target_service(self, request: Any) -> str | None:
        handler = getattr(request, "handler", "")
        if handler:
            return service_of(handler)
        # ListWorkflows' service filter, or an object's name.
        named = getattr(request, "service", "") or getattr(request, "object", "")
        if named:
            return str(named)
        invocation_id = getattr(request, "invocation_id", "")
        awakeable = getattr(request, "awakeable_id", "")
        if awakeable:
            parsed = parse_awakeable_id(awakeable)
            invocation_id = parsed[0] if parsed else ""
        if invocation_id:
            return await self._service_of_invocation(invocation_id)
        return None


def _target_text(request: Any) -> str:
    parts = []
    for field in ("invocation_id", "object", "key", "handler"):
        value = getattr(request, field, "")
        if value:
            parts.append(f"{field}={value}")
    return " ".join(parts)


async def _abort(
    context: Any, reason: errors_pb2.ErrorReason.ValueType, message: str, meta: dict[str, str]
) -> None:
    await context.abort_with_status(refusal_status(reason, message, meta))


def narrowed(principal: Principal | None, response: Any) -> Any:
    """Stats and ListHandlers as credentials limited to some services may see them."""
    if principal is None or principal.services is None:
        return response
    allowed = principal.services
    if isinstance(response, control_pb2.ListHandlersResponse):
        kept = [h for h in response.handlers if h.service in allowed]
        return control_pb2.ListHandlersResponse(handlers=kept)
    if isinstance(response, control_pb2.StatsResponse):
        out = control_pb2.StatsResponse()
        counts: dict[int, int] = {}
        for h in response.by_handler:
            if service_of(h.handler) in allowed:
                out.by_handler.add().CopyFrom(h)
                for c in h.by_status:
                    counts[c.status] = counts.get(c.status, 0) + c.count
        for s in response.by_service:
            if s.service in allowed:
                out.by_service.add().CopyFrom(s)
        for status, count in sorted(counts.items()):
            out.by_status.add(status=status, count=count)
        out.total = sum(counts.values())
        return out
    return response


def _guarded(handler: Handler, rpc: str, auth: AuthInterceptor) -> Handler:
    if handler.unary_unary is not None:
        behaviour = handler.unary_unary

        async def unary(request: Any, context: Any) -> Any:
            principal = await auth.check(rpc, request, context)
            return narrowed(principal, await behaviour(request, context))

        return handler._replace(unary_unary=unary)  # type: ignore[attr-defined,no-any-return]
    if handler.unary_stream is not None:
        stream = handler.unary_stream

        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            await auth.check(rpc, request, context)
            async for response in stream(request, context):  # type: ignore[attr-defined]
                yield response

        return handler._replace(unary_stream=streaming)  # type: ignore[attr-defined,no-any-return]
    return handler
