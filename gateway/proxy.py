"""The OpenAI-compatible data plane: `/v1/*`, routed by `model` to a profile's server.

Each request: authenticate (cached), read the body once, take `model`, borrow the server
(started on demand), forward the bytes, and pass the answer back as it arrives. A stream goes
on chunk by chunk, never re-framed; when the client leaves, the upstream request is closed at
once so the model stops generating. The request path touches no database.

The endpoint is a plain ASGI app (not a request/response function) so it can watch for the
client's disconnect while it waits for the model, and so nothing buffers a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import aiohttp
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from gateway.auth import Principal, require_user
from gateway.auto_profiles import profile_on_demand
from gateway.errors import (
    BadGateway,
    BadRequest,
    Forbidden,
    GatewayError,
    NotFound,
    ServiceUnavailable,
    error_response,
    openai_error_body,
    openai_error_response,
)
from gateway.fleet.placement import LOCAL_NODE
from gateway.fleet.registry import UNASSIGNED_HEADER, KnownNode
from gateway.http import parse_json, read_body
from gateway.limiter import refusal
from gateway.request_id import request_id_of
from gateway.runtime import Gateway
from gateway.serving.errors import ModelTooLarge, NotOnThisMachine, QueueTimeout, StartFailed
from gateway.serving.manager import Lease, ManagedServer
from gateway.settings import Settings
from gateway.upstream_errors import openai_status, to_openai_error
from gateway.usage import USAGE_MODEL_CHARS, RequestTap, tokens_in

log = logging.getLogger("mlx_manager.proxy")

ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/audio/transcriptions",
    "/v1/images/generations",
    "/v1/images/edits",
)
# Request headers that never go upstream: credentials stay with the gateway, hop-by-hop
# headers belong to each connection, and aiohttp sets its own length.
_DROP_REQUEST = frozenset(
    {
        "authorization",
        "cookie",
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "upgrade",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "x-request-id",
        "expect",
    }
)
# Where OpenAI clients land when their base URL lacks the /v1 (http://host:8080 instead of
# http://host:8080/v1): each gets a 404 that says so instead of the admin page's 404.
MISTYPED = (
    "/chat/completions",
    "/completions",
    "/embeddings",
    "/responses",
    "/audio/transcriptions",
    "/audio/translations",
    "/audio/speech",
    "/images/generations",
    "/images/edits",
    "/moderations",
    "/models",
    "/models/{model_id:path}",
)
_ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
_KEEP_RESPONSE = frozenset({"content-type", "content-encoding", "cache-control", "retry-after"})
_STREAM_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


INLINE_BODY_BYTES = 256 * 1024
T = TypeVar("T")


class ModelNotFound(NotFound):
    code = "model_not_found"


class UnsupportedEndpoint(NotFound):
    code = "unsupported_endpoint"


class NoNodeAvailable(ServiceUnavailable):
    code = "no_node_available"


# Why this machine could not take a request that another node may: its start failed, the
# model does not fit under its cap, memory did not free up in time, or the profile left it.
_PLACE_ELSEWHERE = (StartFailed, ModelTooLarge, QueueTimeout, NotOnThisMachine)


# Times one request waits for a node to be told of its profile (each wait: up to the queue
# timeout for a heartbeat) before it is answered 503 no_node_available.
_MAX_HEARTBEAT_WAITS = 2


class NodeLacksProfile(Exception):
    """The node was not given the profile yet (or any more): wait for its next heartbeat."""


class NodeUnreachable(Exception):
    """A node could not be reached before any byte of its answer: try another node."""


# The POST endpoints each server declares (its OpenAPI document), read at most once per start:
# server -> (the process it was read from, the endpoints, or None when it has no such document).
_DECLARED: weakref.WeakKeyDictionary[ManagedServer, tuple[object, frozenset[str] | None]] = (
    weakref.WeakKeyDictionary()
)


def _gateway(scope: Scope) -> Gateway:
    gateway: Gateway = scope["app"].state.gateway
    return gateway


class ProxyEndpoint:
    """POST /v1/<endpoint>: route by model, borrow the server, forward, relay."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gateway = _gateway(scope)
        request = Request(scope, receive)
        try:
            principal = await require_user(request, scope="inference")
            gateway.usage.admit()  # 503 while the usage spool is full (gateway/usage.py)
        except GatewayError as exc:
            await error_response(exc, openai_shape=True)(scope, receive, send)
            return
        tap = RequestTap(started=time.monotonic())

        async def tapped_send(message: Message) -> None:
            if message["type"] == "http.response.body":
                if tap.first_byte is None:
                    tap.first_byte = time.monotonic()
                tap.saw(message.get("body", b""))
                if not message.get("more_body", False) and not tap.accounted:
                    # Spooled before the last byte leaves: a client that read its whole
                    # answer is accounted even if the gateway dies right after.
                    _account(gateway, scope, principal, tap)
            elif message["type"] == "http.response.start":
                tap.status = message["status"]
            await send(message)

        try:
            await self._handle(gateway, scope, receive, tapped_send, request, principal, tap)
        finally:
            if not tap.accounted:
                _account(gateway, scope, principal, tap)

    async def _handle(
        self,
        gateway: Gateway,
        scope: Scope,
        receive: Receive,
        send: Send,
        request: Request,
        principal: Principal,
        tap: RequestTap,
    ) -> None:
        try:
            model, content_type, body = await read_routed(request, gateway.settings)
            tap.model = model
            server = await _resolve_or_create(gateway, principal, model)
            tap.profile = server.name
            # Limits (gateway/limits.py) before any server is started or borrowed; a caller
            # without limits costs nothing here.
            decision = await gateway.limiter.admit(principal)
            if decision is not None:
                if not decision.admitted:
                    raise refusal(decision)
                send = _with_headers(send, decision.headers())
            if model != server.name:
                body = await _off_loop_if_large(
                    body, _rewrite_alias, content_type, body, model, server.name
                )
        except GatewayError as exc:
            await error_response(exc, openai_shape=True)(scope, receive, send)
            return
        work: Coroutine[Any, Any, object]
        if server.profile.nodes is not None:  # placed among nodes (gateway/fleet)
            work = serve_on_node(gateway, scope, receive, send, server, body)
        else:
            work = serve_local(gateway, scope, receive, send, server, body)
        await until_disconnect(receive, work)


async def until_disconnect(receive: Receive, work: Coroutine[Any, Any, object]) -> None:
    """Run `work`, racing it against the client leaving (which cancels it: the upstream
    request closes and the server is released)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_wait_for_disconnect(receive))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()  # closes the upstream request; releases the server
        gone.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def serve_local(
    gateway: Gateway,
    scope: Scope,
    receive: Receive,
    send: Send,
    server: ManagedServer,
    body: bytes,
    *,
    leave: tuple[type[GatewayError], ...] = (),
) -> GatewayError | None:
    """Borrow this machine's server for `server`'s profile (started on demand), forward.
    Counted as on the node `local` while it lasts (its in-flight and queued requests). A
    failure to get a server of a kind in `leave` is returned, unanswered: the caller may
    place the request on another node."""
    with gateway.fleet.sending(LOCAL_NODE, server.name):
        try:
            lease = await gateway.servers.acquire(server)
        except leave as exc:
            return exc
        except GatewayError as exc:
            await error_response(exc, openai_shape=True)(scope, receive, send)
            return None
        await _serve_lease(gateway, scope, receive, send, lease, body)
    return None


async def _serve_lease(
    gateway: Gateway, scope: Scope, receive: Receive, send: Send, lease: Lease, body: bytes
) -> None:
    try:
        await _forward(gateway, scope, send, lease, body)
    except GatewayError as exc:  # raised only before anything was sent
        await error_response(exc, openai_shape=True)(scope, receive, send)
    finally:
        lease.release()


def _account(gateway: Gateway, scope: Scope, principal: Principal, tap: RequestTap) -> None:
    """Metrics are labelled by profile (a bounded set); the usage row keeps the name the
    client sent, already bounded by MLX_MANAGER_MAX_MODEL_NAME_BYTES and cut to the column."""
    tap.accounted = True
    now = time.monotonic()
    prompt, completion = tokens_in(bytes(tap.tail)) if tap.status < 400 else (0, 0)
    status = tap.status or 499  # nothing sent: the client went away first
    endpoint = scope["path"]
    first_byte = None if tap.first_byte is None else tap.first_byte - tap.started
    gateway.metrics.observe_request(
        tap.profile or None, endpoint, status, now - tap.started, first_byte, prompt, completion
    )
    gateway.usage.record(
        request_id=request_id_of(scope),
        user_id=principal.user_id,
        key_id=principal.key_id,
        model=tap.model[:USAGE_MODEL_CHARS],
        endpoint=endpoint,
        status=status,
        prompt_tokens=prompt,
        completion_tokens=completion,
        latency_ms=round((now - tap.started) * 1000, 2),
        ttfb_ms=None if first_byte is None else round(first_byte * 1000, 2),
    )
    gateway.limiter.spend(principal, prompt + completion)


def _with_headers(send: Send, headers: dict[str, str]) -> Send:
    """`send` adding `headers` (the caller's x-ratelimit-* state) to the response's start."""
    extra = [(name.encode(), value.encode()) for name, value in headers.items()]

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return sending


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def read_routed(request: Request, settings: Settings) -> tuple[str, str, bytes]:
    """A /v1 request's `model`, content type and body (bounded by MLX_MANAGER_MAX_BODY_MB; the
    model by MLX_MANAGER_MAX_MODEL_NAME_BYTES): what the gateway and a node route by."""
    body = await read_body(request, settings.max_body_bytes)
    content_type = request.headers.get("content-type", "")
    model, body = await route_fields(
        request.scope, content_type, body, settings.max_model_name_bytes
    )
    return model, content_type, body


async def route_fields(
    scope: Scope, content_type: str, body: bytes, limit: int
) -> tuple[str, bytes]:
    """The requested model: the JSON body's `model`, or the form field for uploads."""
    if content_type.startswith("multipart/form-data"):
        model = await _form_model(scope, body)
    else:
        data = await _off_loop_if_large(body, parse_json, body)
        if not isinstance(data, dict):
            raise BadRequest("request body must be a JSON object")
        model = data.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", param="model", code="missing_model")
    check_model_name(model, limit)
    return model, body


def check_model_name(model: str, limit: int) -> None:
    """Refuse a name no profile can have, before it reaches a log, a metric or a usage row.

    Why: the name is the one free-form string a client sends that the gateway keeps; an
    unbounded one (megabytes, control characters) would bloat the usage table for good and
    smuggle escapes into logs.
    """
    size = len(model.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise BadRequest(
            f"the model name is {size} bytes long; model names are at most {limit} bytes "
            "(MLX_MANAGER_MAX_MODEL_NAME_BYTES); GET /v1/models lists the available ones",
            param="model",
            code="invalid_model",
        )
    if not model.isprintable():
        raise BadRequest(
            "the model name contains control or other non-printable characters; "
            "GET /v1/models lists the available ones",
            param="model",
            code="invalid_model",
        )


async def _off_loop_if_large(body: bytes, func: Callable[..., T], *args: Any) -> T:
    """Small bodies (almost all) inline; a long context or a big upload in a thread, so one
    request never stalls every other stream for the seconds its JSON takes."""
    if len(body) <= INLINE_BODY_BYTES:
        return func(*args)
    return await asyncio.to_thread(func, *args)


async def _form_model(scope: Scope, body: bytes) -> Any:
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return {"type": "http.disconnect"}
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, replay).form()
    except Exception as exc:
        raise BadRequest(f"could not read the multipart form: {exc}") from exc
    try:
        return form.get("model")
    finally:
        await form.close()


async def _resolve_or_create(gateway: Gateway, principal: Principal, model: str) -> ManagedServer:
    """Like `_resolve`, but a cached MLX model without a profile gets one (JIT profiles)."""
    if gateway.servers.resolve(model) is None and principal.may_use(model):
        server = await profile_on_demand(gateway, model)
        if server is not None:
            return server
    return _resolve(gateway, principal, model)


def _resolve(gateway: Gateway, principal: Principal, model: str) -> ManagedServer:
    server = gateway.servers.resolve(model)
    if server is None:
        raise ModelNotFound(
            f"The model '{model}' does not exist; GET /v1/models lists the available ones",
            param="model",
        )
    if not (principal.may_use(model) or principal.may_use(server.name)):
        raise Forbidden(
            f"this API key may not use the model '{model}'",
            param="model",
            code="model_not_allowed",
        )
    return server


def _rewrite_alias(content_type: str, body: bytes, model: str, name: str) -> bytes:
    """Aliases reach the server as the profile's name (what it serves); else bytes unchanged."""
    if model == name:
        return body
    if content_type.startswith("multipart/form-data"):
        return _rewrite_form_model(content_type, body, name)
    data = json.loads(body)
    data["model"] = name
    return json.dumps(data, ensure_ascii=False).encode()


class _ModelFields:
    """python-multipart callbacks noting where each `model` field's value lies in the body.

    The parser hands data callbacks slices of the very buffer it was given, so a value that
    arrives as slices of `body` is located exactly; anything else (a value the parser had to
    hold back, which only a CR in it causes, and names are printable) is refused.
    """

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.spans: list[tuple[int, int]] = []
        self.located = True
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self._in_model = False
        self._span: tuple[int, int] | None = None

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self.part_begin,
            "on_header_field": self.header_field,
            "on_header_value": self.header_value,
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
        }

    def part_begin(self) -> None:
        self._headers = {}
        self._in_model = False
        self._span = None

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def header_end(self) -> None:
        self._headers[self._field.strip().lower()] = self._value.strip()
        self._field = self._value = b""

    def headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._in_model = options.get(b"name") == b"model" and b"filename" not in options

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._in_model:
            return
        if data is not self.body or (self._span is not None and self._span[1] != start):
            self.located = False
        self._span = (start if self._span is None else self._span[0], end)

    def part_end(self) -> None:
        if self._in_model:
            if self._span is None:
                self.located = False
            else:
                self.spans.append(self._span)


def _rewrite_form_model(content_type: str, body: bytes, name: str) -> bytes:
    """The upload with each `model` field's value replaced by `name`; every other byte as sent.

    Parts are found by parsing, as the model server will: replacing the first matching bytes
    anywhere could edit an uploaded file that happens to contain them.
    """
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    fields = _ModelFields(body)
    try:
        if not boundary:
            raise MultipartParseError("no boundary in the Content-Type")
        parser = MultipartParser(boundary, fields.callbacks())  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise BadRequest(f"could not read the multipart form: {exc}") from exc
    if not fields.located or not fields.spans:
        raise BadRequest("could not find the multipart form's model field", param="model")
    out = bytearray()
    done = 0
    for start, end in fields.spans:
        out += body[done:start]
        out += name.encode()
        done = end
    out += body[done:]
    return bytes(out)


def _upstream_headers(scope: Scope) -> dict[str, str]:
    headers = {
        key: value for key, value in Headers(scope=scope).items() if key not in _DROP_REQUEST
    }
    headers["x-request-id"] = request_id_of(scope)
    return headers


async def _forward(gateway: Gateway, scope: Scope, send: Send, lease: Lease, body: bytes) -> None:
    url = f"http://127.0.0.1:{lease.port}{scope['path']}"
    query = scope.get("query_string", b"")
    if query:
        url += "?" + query.decode("latin-1")
    started = time.monotonic()
    try:
        upstream = await gateway.http.request(
            scope["method"], url, data=body, headers=_upstream_headers(scope)
        )
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        raise _unreachable(lease.server, exc) from exc
    try:
        content_type = upstream.headers.get("content-type", "")
        if content_type.startswith("text/event-stream") and upstream.status < 400:
            gateway.metrics.open_streams.inc()
            try:
                await _relay_stream(upstream, send)
            finally:
                gateway.metrics.open_streams.dec()
        else:
            await _relay_body(gateway, scope, upstream, send, lease.server)
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        log.warning(
            "%s: upstream failed after %.1f s: %s",
            lease.server.name,
            time.monotonic() - started,
            exc,
        )
        raise
    finally:
        upstream.close()


def _unreachable(server: ManagedServer, exc: Exception) -> BadGateway:
    return BadGateway(
        f"the model server for '{server.name}' closed the connection or is not reachable "
        f"({type(exc).__name__}); it may have crashed; retrying starts it again"
    )


async def _relay_stream(upstream: aiohttp.ClientResponse, send: Send) -> None:
    headers = [h for h in _response_headers(upstream) if h[0] != b"cache-control"]
    headers.extend(_STREAM_HEADERS)
    await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
    async for chunk in upstream.content.iter_any():
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _relay_body(
    gateway: Gateway,
    scope: Scope,
    upstream: aiohttp.ClientResponse,
    send: Send,
    server: ManagedServer,
) -> None:
    try:
        data = await upstream.read()
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        raise _unreachable(server, exc) from exc
    status = upstream.status
    if status == 404:
        await _check_endpoint(gateway, server, scope["path"])
    if status >= 400:
        data = json.dumps(to_openai_error(status, data)).encode()
        status = openai_status(status)
        headers = [(b"content-type", b"application/json")]
    else:
        headers = _response_headers(upstream)
    headers.append((b"content-length", str(len(data)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data, "more_body": False})


async def _check_endpoint(gateway: Gateway, server: ManagedServer, path: str) -> None:
    """After a 404: if the server declares its endpoints and `path` is not one, say so.

    mlx-openai-server, for one, has no /v1/completions; its bare `Not Found` would read as a
    wrong model or URL. Asked only after a 404, so requests that work cost nothing.
    """
    declared = await _declared_endpoints(gateway, server)
    if declared is None or path in declared:
        return
    offered = sorted(declared.intersection(ENDPOINTS))
    raise UnsupportedEndpoint(
        f"the model server of '{server.name}' has no POST {path}; it serves "
        + (", ".join(offered) if offered else "none of the /v1 endpoints this gateway relays")
        + (" (for text generation, use /v1/chat/completions)" if path == "/v1/completions" else "")
    )


async def _declared_endpoints(gateway: Gateway, server: ManagedServer) -> frozenset[str] | None:
    process = server.process
    cached = _DECLARED.get(server)
    if cached is not None and cached[0] is process:
        return cached[1]
    declared = await _read_openapi(gateway, server)
    if server.process is process:
        _DECLARED[server] = (process, declared)
    return declared


async def _read_openapi(gateway: Gateway, server: ManagedServer) -> frozenset[str] | None:
    """The POST paths of the server's OpenAPI document (FastAPI serves one), else None."""
    if server.port is None:
        return None
    url = f"http://127.0.0.1:{server.port}/openapi.json"
    timeout = aiohttp.ClientTimeout(total=gateway.settings.endpoint_probe_timeout)
    try:
        async with gateway.http.get(url, timeout=timeout) as response:
            if response.status != 200:
                return None
            document = json.loads(await response.read())
    except (aiohttp.ClientError, TimeoutError, ValueError, RecursionError) as exc:
        log.info("%s: could not read %s: %s", server.name, url, exc)
        return None
    paths = document.get("paths") if isinstance(document, dict) else None
    if not isinstance(paths, dict):
        return None
    return frozenset(
        path
        for path, methods in paths.items()
        if isinstance(path, str) and isinstance(methods, dict) and "post" in methods
    )


def _response_headers(upstream: aiohttp.ClientResponse) -> list[tuple[bytes, bytes]]:
    return [
        (key.lower().encode("latin-1"), value.encode("latin-1"))
        for key, value in upstream.headers.items()
        if key.lower() in _KEEP_RESPONSE
    ]


# ---- profiles on nodes (gateway/fleet) -------------------------------------------------------


async def serve_on_node(
    gateway: Gateway,
    scope: Scope,
    receive: Receive,
    send: Send,
    server: ManagedServer,
    body: bytes,
) -> None:
    """Forward to the node placement picks (gateway/fleet/placement.py); a node that cannot
    be reached before any byte reached the client is taken out of rotation here and the
    request goes, once, to another node. Usage and limits stay with the gateway, as local.
    Placed on `local` (this machine), it is served as a local profile is, with its errors."""
    tried: list[str] = []  # nodes that failed here: never tried again for this request
    attempts = waited_for_heartbeat = 0
    failure: Exception | None = None
    local_error: GatewayError | None = None
    while attempts < 2:
        attempts += 1
        allowed = server.profile.nodes or []  # read again: a retry follows a move
        node = await gateway.fleet.place(
            server.name,
            allowed,
            server.need_bytes,
            frozenset(tried),
            within=gateway.settings.queue_timeout,
        )
        if node is None:
            break
        if node.name == LOCAL_NODE:
            local_error = await serve_local(
                gateway, scope, receive, send, server, body, leave=_PLACE_ELSEWHERE
            )
            if local_error is None:  # served, or answered (a deleted profile: no node helps)
                return
            tried.append(LOCAL_NODE)  # would not start or fit here: another node may
            continue
        try:
            with gateway.fleet.sending(node.name, server.name):
                await _forward_to_node(gateway, scope, send, node, body)
            return
        except NodeLacksProfile:  # moved there just now: its next heartbeat brings it
            gateway.fleet.lacks(node.name, server.name)
            if waited_for_heartbeat < _MAX_HEARTBEAT_WAITS:
                waited_for_heartbeat += 1
                attempts -= 1  # not a failure of the node: it is told with its next heartbeat
        except NodeUnreachable as exc:
            tried.append(node.name)
            gateway.fleet.refused(node.name, str(exc))
            failure = exc
        except GatewayError as exc:  # raised only before anything was sent
            await error_response(exc, openai_shape=True)(scope, receive, send)
            return
    error: GatewayError
    if local_error is not None:  # the most specific reason there is (its own status)
        error = local_error
    elif failure is not None:
        error = BadGateway(  # the cause is in the log: node addresses stay internal
            f"could not reach the node(s) {', '.join(tried)} for '{server.name}'; they are out "
            "of rotation until they report again"
        )
    else:
        retry = str(max(1, math.ceil(gateway.settings.node_timeout)))
        hint = ""
        if allowed == [LOCAL_NODE] and not gateway.settings.local_node:
            hint = " (this gateway runs no models: MLX_MANAGER_LOCAL_NODE is off)"
        error = NoNodeAvailable(
            f"no node may serve '{server.name}' now: the nodes it may run on "
            f"({', '.join(allowed)}) are down or have not reported{hint}; GET /api/nodes "
            "lists them",
            headers={"Retry-After": retry},
        )
    await error_response(error, openai_shape=True)(scope, receive, send)


async def _forward_to_node(
    gateway: Gateway, scope: Scope, send: Send, node: KnownNode, body: bytes
) -> None:
    """The same path and body to the node's /v1, with the node token instead of the client's;
    the node's answer relayed as it is (it is already in OpenAI's shape)."""
    url = node.url.rstrip("/") + scope["path"]
    query = scope.get("query_string", b"")
    if query:
        url += "?" + query.decode("latin-1")
    headers = _upstream_headers(scope)
    token = gateway.settings.node_token_map.get(node.name, gateway.settings.node_token)
    if token is None:  # it registered with a token since removed from this gateway's list
        raise NodeUnreachable(f"no token for node {node.name} in MLX_MANAGER_NODE_TOKENS")
    headers["authorization"] = f"Bearer {token}"
    try:
        upstream = await _while_reporting(
            gateway, node, gateway.http.request(scope["method"], url, data=body, headers=headers)
        )
    except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as exc:
        raise NodeUnreachable(f"{type(exc).__name__}: {exc}") from exc
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        raise BadGateway(f"node {node.name} failed to answer ({type(exc).__name__})") from exc
    try:
        if upstream.status == 404 and UNASSIGNED_HEADER in upstream.headers:
            raise NodeLacksProfile()
        if upstream.status == 401:
            raise BadGateway(
                f"node {node.name} refused this gateway's node token: its MLX_MANAGER_NODE_TOKEN "
                "must be the gateway's (shared) one, or its own entry in the gateway's "
                "MLX_MANAGER_NODE_TOKENS"
            )
        content_type = upstream.headers.get("content-type", "")
        if content_type.startswith("text/event-stream") and upstream.status < 400:
            gateway.metrics.open_streams.inc()
            try:
                idle = gateway.settings.node_stream_idle_timeout
                await _relay_node_stream(upstream, send, node.name, idle)
            finally:
                gateway.metrics.open_streams.dec()
            return
        try:
            data = await _while_reporting(gateway, node, upstream.read())
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise BadGateway(f"node {node.name} broke off its answer ({exc})") from exc
        out = _response_headers(upstream)
        out.append((b"content-length", str(len(data)).encode()))
        await send({"type": "http.response.start", "status": upstream.status, "headers": out})
        await send({"type": "http.response.body", "body": data, "more_body": False})
    finally:
        upstream.close()


async def _while_reporting(gateway: Gateway, node: KnownNode, work: Coroutine[Any, Any, T]) -> T:
    """`work`, given up when `node` stops heartbeating (MLX_MANAGER_NODE_TIMEOUT) first.

    A node that hangs (SIGSTOP, a frozen machine, a cut cable) accepts nothing and says
    nothing; without this, a request waiting for its answer would wait forever. A node busy
    loading a model or generating keeps heartbeating, so long answers are never cut short.
    Nothing has reached the client yet, so the request may go to another node.
    """
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=gateway.fleet.refresh_interval)
            if done:
                return task.result()
            current = gateway.fleet.get(node.name)
            if current is None or not gateway.fleet.is_up(current):
                raise NodeUnreachable(
                    f"node {node.name} stopped reporting before it answered "
                    f"(no heartbeat for MLX_MANAGER_NODE_TIMEOUT, {gateway.fleet.timeout:g} s)"
                )
    finally:
        if not task.done():
            task.cancel()
            task.add_done_callback(_discard)


def _discard(task: asyncio.Task[Any]) -> None:
    """What a request given up on still produced: its error read, its response closed."""
    if task.cancelled():
        return
    if task.exception() is None and isinstance(task.result(), aiohttp.ClientResponse):
        task.result().close()


async def _relay_node_stream(
    upstream: aiohttp.ClientResponse, send: Send, node: str, idle: float
) -> None:
    """Like `_relay_stream`, but a node that goes silent for `idle` seconds (hung, or cut off
    by the network) or breaks the connection ends the stream with an SSE error event in
    OpenAI's shape, so the client learns it instead of waiting forever."""
    headers = [h for h in _response_headers(upstream) if h[0] != b"cache-control"]
    headers.extend(_STREAM_HEADERS)
    await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
    problem = None
    while True:
        try:
            chunk = await asyncio.wait_for(upstream.content.readany(), idle)
        except TimeoutError:
            problem = (
                f"node {node} sent nothing for {idle:g} s (MLX_MANAGER_NODE_STREAM_IDLE_TIMEOUT); "
                "the stream was ended"
            )
            break
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            problem = f"the connection to node {node} broke mid-stream ({type(exc).__name__})"
            break
        if not chunk:
            break
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    if problem is not None:
        log.warning("%s", problem)
        event = openai_error_body(problem, "server_error", "node_stream_failed")
        data = b"data: " + json.dumps(event).encode() + b"\n\n"
        await send({"type": "http.response.body", "body": data, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


# ---- model listing --------------------------------------------------------------------------


def _model_entry(gateway: Gateway, server: ManagedServer, model_id: str) -> dict[str, Any]:
    created = server.profile.created_at
    return {
        "id": model_id,
        "object": "model",
        "created": int(created.timestamp()) if created else 0,
        "owned_by": "mlx-manager",
        "profile": server.name,
        "model_type": server.profile.model_type,
        "state": gateway.state_of(server),
    }


def _visible_models(gateway: Gateway, principal: Principal) -> list[dict[str, Any]]:
    entries = []
    for server in gateway.servers.servers():
        for model_id in (server.name, *server.profile.aliases):
            if principal.may_use(model_id) or principal.may_use(server.name):
                entries.append(_model_entry(gateway, server, model_id))
    return entries


async def list_models(request: Request) -> Response:
    gateway = _gateway(request.scope)
    principal = await require_user(request, scope="inference")
    return JSONResponse({"object": "list", "data": _visible_models(gateway, principal)})


async def get_model(request: Request) -> Response:
    gateway = _gateway(request.scope)
    principal = await require_user(request, scope="inference")
    model_id = request.path_params["model_id"]
    server = _resolve(gateway, principal, model_id)
    return JSONResponse(_model_entry(gateway, server, model_id))


async def wrong_base_url(request: Request) -> Response:
    """404 for an OpenAI path outside /v1 (or under /v1/v1), naming the base URL to use."""
    path = request.url.path
    if path.startswith("/v1/v1/"):
        right = path.removeprefix("/v1")
        problem = "the base URL ends in /v1 twice"
    else:
        right = "/v1" + path
        problem = "the base URL lacks /v1"
    message = (
        f"{request.method} {path} is not an endpoint of this gateway: {problem}. "
        f"Set the client's base URL to end in a single /v1 (http://<host>:<port>/v1), so this "
        f"request goes to {right}"
    )
    return openai_error_response(404, message, code="wrong_base_url")


def routes() -> list[Route]:
    endpoint = ProxyEndpoint()
    return [
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
        *(Route(path, endpoint, methods=["POST"]) for path in ENDPOINTS),
        Route("/v1/v1/{rest:path}", wrong_base_url, methods=_ANY_METHOD),
        *(Route(path, wrong_base_url, methods=_ANY_METHOD) for path in MISTYPED),
    ]
