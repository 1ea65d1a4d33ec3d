"""``durable console``: a web console that is a DurableControl client like any other.

The browser loads one static page (``static/``: HTML, a script and a stylesheet, no build
step) and calls DurableControl through this process, which only translates: a ``POST
/api/<Method>`` carries the method's request message in protobuf's canonical JSON and
gets its response message back the same way (``GET /api/WatchWorkflow`` streams the
responses as server-sent events). The calls go over gRPC with the console's channel
credentials (``--tls``/``--ca``/``--cert``) and with the token the person typed into the
page, else the console's ``--token``; the control plane authenticates and authorizes them
as any client's, and a refusal comes back to the page with its gRPC code, message and
``ErrorInfo`` reason. So the console has no semantics of its own: what it shows and does is
what DurableControl answers.

A page of another site cannot call the API: every ``/api`` request must carry the
``X-Durable-Console`` header, which a browser only sends cross-site after a CORS preflight
this server never grants. Bound to a non-loopback address, a console holding a ``--token``
would lend it to anyone who reaches it; it refuses to start so unless told ``--insecure``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from importlib import resources
from typing import Any

import grpc
import grpc.aio
from aiohttp import web
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from durable.v1 import control_pb2, control_pb2_grpc
from durable_server.cli_security import is_loopback

log = logging.getLogger("durable.console")

_SERVICE = control_pb2.DESCRIPTOR.services_by_name["DurableControl"]
#: Unary methods by name: what POST /api/<Method> may call.
_UNARY = {m.name: m for m in _SERVICE.methods if not m.server_streaming}
_HEADER = "X-Durable-Console"
#: Which HTTP status carries which gRPC code (the page reads the code from the body).
_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
#: Where ``durable console`` and ``durable dev`` serve the page by default.
DEFAULT_CONSOLE = "127.0.0.1:8055"
#: Seconds one unary call may take (Invoke with wait and AwaitResult are not for the page).
RPC_TIMEOUT = 30.0


class Console:
    """The console's HTTP server and its DurableControl channel."""

    def __init__(
        self,
        target: str,
        listen: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        insecure: bool = False,
    ) -> None:
        host, _, port = listen.rpartition(":")
        self.host, self.port = host or "127.0.0.1", int(port)
        if token and not insecure and not is_loopback(f"{self.host}:{self.port}"):
            raise SystemExit(
                f"error: the console would listen on {listen} holding a --token: anyone who "
                "reaches it could act with that key. Listen on 127.0.0.1 (people then type "
                "their own token into the page), or pass --insecure"
            )
        self._target = target
        self._credentials = credentials
        self._token = token
        self._channel: grpc.aio.Channel | None = None
        self._stub: control_pb2_grpc.DurableControlAsyncStub | None = None
        self._runner: web.AppRunner | None = None
        self.address = ""

    async def start(self) -> Console:
        if self._credentials is not None:
            self._channel = grpc.aio.secure_channel(self._target, self._credentials)
        else:
            self._channel = grpc.aio.insecure_channel(self._target)
        self._stub = control_pb2_grpc.DurableControlStub(self._channel)
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/WatchWorkflow", self._watch)
        app.router.add_post("/api/{method}", self._call)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or ()
        bound = sockets[0].getsockname() if sockets else (self.host, self.port)
        self.address = f"http://{bound[0]}:{bound[1]}/"
        log.info("console on %s (DurableControl at %s)", self.address, self._target)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._channel is not None:
            await self._channel.close(None)

    async def __aenter__(self) -> Console:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- pages --------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(
            text=_asset("index.html"),
            content_type="text/html",
            headers={"Content-Security-Policy": _CSP, "X-Frame-Options": "DENY"},
        )

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        types = {"console.js": "application/javascript", "console.css": "text/css"}
        if name not in types:
            raise web.HTTPNotFound()
        return web.Response(text=_asset(name), content_type=types[name])

    # -- DurableControl ---------------------------------------------------------------

    def _metadata(self, request: web.Request) -> tuple[tuple[str, str], ...]:
        """The person's token (typed into the page) or else the console's own."""
        given = request.headers.get("Authorization", "")
        if given.lower().startswith("bearer ") and given[7:].strip():
            return (("authorization", f"Bearer {given[7:].strip()}"),)
        return (("authorization", f"Bearer {self._token}"),) if self._token else ()

    async def _call(self, request: web.Request) -> web.Response:
        if request.headers.get(_HEADER) != "1":
            return _refusal(403, "FORBIDDEN", f"API calls need the {_HEADER}: 1 header")
        method = _UNARY.get(request.match_info["method"])
        if method is None:
            return _refusal(404, "NOT_FOUND", "no such DurableControl method")
        message = _message_class(method.input_type)()
        try:
            json_format.Parse(await request.text() or "{}", message)
        except json_format.ParseError as err:
            what = method.input_type.name
            return _refusal(400, "INVALID_ARGUMENT", f"the request is not a valid {what}: {err}")
        assert self._stub is not None
        rpc = getattr(self._stub, method.name)
        try:
            response = await rpc(message, metadata=self._metadata(request), timeout=RPC_TIMEOUT)
        except grpc.aio.AioRpcError as err:
            return _rpc_refusal(err)
        return web.json_response(json_format.MessageToDict(response))

    async def _watch(self, request: web.Request) -> web.StreamResponse:
        """WatchWorkflow as server-sent events: one ``message`` event per response, then
        ``end``; an ``rpcerror`` event carries a refusal."""
        if request.headers.get(_HEADER) != "1":
            return _refusal(403, "FORBIDDEN", f"API calls need the {_HEADER}: 1 header")
        invocation_id = request.query.get("invocation_id", "")
        watch = control_pb2.WatchWorkflowRequest(invocation_id=invocation_id)
        metadata = self._metadata(request)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        assert self._stub is not None
        call = self._stub.WatchWorkflow(watch, metadata=metadata)
        try:
            async for update in call:
                data = json.dumps(json_format.MessageToDict(update))
                await response.write(f"event: message\ndata: {data}\n\n".encode())
            await response.write(b"event: end\ndata: {}\n\n")
        except grpc.aio.AioRpcError as err:
            body = _error_body(err)
            await response.write(f"event: rpcerror\ndata: {json.dumps(body)}\n\n".encode())
        except ConnectionResetError:
            return response  # the page went elsewhere: the call is cancelled below
        finally:
            call.cancel()
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response


_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; frame-ancestors 'none'"
)


def _asset(name: str) -> str:
    return resources.files("durable_server.console").joinpath("static", name).read_text()


def _message_class(descriptor: Any) -> Any:
    return getattr(control_pb2, descriptor.name)


def _error_body(err: grpc.aio.AioRpcError) -> dict[str, Any]:
    body: dict[str, Any] = {"code": err.code().name, "message": err.details() or ""}
    with contextlib.suppress(Exception):
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
        for detail in status.details if status is not None else ():
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                body["reason"] = info.reason
                body["metadata"] = dict(info.metadata)
    return body


def _rpc_refusal(err: grpc.aio.AioRpcError) -> web.Response:
    return web.json_response(_error_body(err), status=_HTTP.get(err.code(), 500))


def _refusal(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


async def run_console(target: str, listen: str, security: dict[str, Any], insecure: bool) -> None:
    """``durable console``: serve until SIGINT/SIGTERM."""
    from durable.contract import until_signalled

    async with Console(
        target,
        listen,
        credentials=security.get("credentials"),
        token=security.get("token"),
        insecure=insecure,
    ) as console:
        print(f"durable console on {console.address} (DurableControl at {target})", flush=True)
        await until_signalled()
