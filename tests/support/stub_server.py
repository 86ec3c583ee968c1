"""A small, fast OpenAI-compatible stub model server for tests and benchmarks.

Why it exists: the gateway launches model servers as real subprocesses and proxies
``/v1`` traffic to them.  Exercising that for real (process lifecycle, health polling,
streaming, disconnects, crashes, memory caps) needs an upstream that starts in a fraction
of a second, behaves deterministically and can be told to misbehave on demand.  Real MLX
servers are slow to start and need Apple hardware, so this module stands in for them.

It is deliberately a single file that imports only the standard library and ``aiohttp``
(``uvloop`` is used when importable, purely for speed): the gateway runs it as a plain
``command`` profile (``python tests/support/stub_server.py --port P ...``), so it must not
depend on the project being importable.  Importing the module has no side effects; the
test helpers at the bottom (``free_port``, ``stub_argv``, ``start_stub``, ``read_events``)
use only the standard library.

Run ``python tests/support/stub_server.py --help`` for the options.  Magic "prompts" make
the server misbehave on purpose: when the last user message (or prompt / input) is exactly
``__error_500__`` it answers 500, ``__crash__`` kills the process with exit code 3 without
answering, ``__slow__`` sleeps 5 s before answering.

Events file (``--events FILE``): one JSON object per line, appended and flushed
immediately so another process can follow it.  Every line has ``event``, ``ts`` (unix time)
and ``pid``; then, by event:

* ``started``: ``host``, ``port``, ``name`` - once the socket is listening.
* ``request``: ``method``, ``path``, ``model``, ``stream``, ``request_id`` (the
  ``X-Request-Id`` header), ``authorization`` and ``cookie`` (headers, or null) - for every
  ``/v1`` request, before validation.
* ``stream_done``: ``chunks_sent``, ``path``, ``request_id`` - a stream was written
  completely (``chunks_sent`` counts content chunks, so it equals ``--chunks``).
* ``stream_closed_by_client``: ``chunks_sent``, ``path``, ``request_id`` - the client went
  away mid-stream.
* ``crash``: ``path``, ``request_id`` - just before a ``__crash__`` exit.
* ``stopped`` - after a graceful SIGTERM/SIGINT shutdown.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import itertools
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

JSONDict = dict[str, Any]

STUB_SCRIPT: Final = Path(__file__).resolve()
"""Path of this file, for building a subprocess argv."""

LISTENING_PREFIX: Final = "stub: listening on "
"""Start of the stdout line printed once the server accepts connections."""

FATAL_LINE: Final = "stub: fatal: simulated load failure"
"""Start of the stderr line printed by ``--exit-on-start``."""

TRIGGER_ERROR_500: Final = "__error_500__"
TRIGGER_CRASH: Final = "__crash__"
TRIGGER_SLOW: Final = "__slow__"
SLOW_SECONDS: Final = 5.0
CRASH_EXIT_CODE: Final = 3
EMBEDDING_DIMENSIONS: Final = 8
MAX_BODY_BYTES: Final = 256 * 1024 * 1024

# A valid 1x1 PNG, so clients that decode ``b64_json`` get a real image.
_PNG_1X1_B64: Final = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)
_SSE_DONE: Final = b"data: [DONE]\n\n"
_SSE_HEADERS: Final = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class StubConfig:
    """Command-line options, kept in one immutable object so the app is easy to build."""

    port: int
    host: str = "127.0.0.1"
    name: str = "stub"
    startup_delay: float = 0.0
    exit_on_start: int | None = None
    ignore_sigterm: bool = False
    health_status: int = 200
    chunk_delay: float = 0.0
    chunks: int = 8
    events: str | None = None
    memory_mb: int = 0
    quiet: bool = False
    without: tuple[str, ...] = ()


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _http_status(text: str) -> int:
    value = int(text)
    if not 100 <= value <= 599:
        raise argparse.ArgumentTypeError(f"not an HTTP status code: {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Describe the CLI; exposed so tests and docs can introspect it."""
    p = argparse.ArgumentParser(
        prog="stub_server.py", description="Fast OpenAI-compatible stub model server."
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    p.add_argument("--name", default="stub", help="model id reported by the server")
    p.add_argument(
        "--startup-delay",
        type=_non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help="sleep before listening (simulates a slow model load)",
    )
    p.add_argument(
        "--exit-on-start",
        type=int,
        default=None,
        metavar="CODE",
        help="print a fatal line to stderr and exit with CODE instead of listening",
    )
    p.add_argument(
        "--ignore-sigterm", action="store_true", help="ignore SIGTERM (only SIGKILL stops it)"
    )
    p.add_argument(
        "--health-status",
        type=_http_status,
        default=200,
        metavar="N",
        help="status code of GET /health (runtime: POST /_control/health {'status': N})",
    )
    p.add_argument(
        "--chunk-delay",
        type=_non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help="delay between SSE chunks",
    )
    p.add_argument(
        "--chunks",
        type=_non_negative_int,
        default=8,
        metavar="N",
        help="number of content chunks per stream (default 8)",
    )
    p.add_argument("--events", default=None, metavar="FILE", help="append JSON-lines events")
    p.add_argument(
        "--memory-mb",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="allocate and touch N MiB at start so the RSS is real",
    )
    p.add_argument("--quiet", action="store_true", help="do not log each request to stdout")
    p.add_argument(
        "--without",
        action="append",
        default=[],
        metavar="PATH",
        help="serve no route at PATH (404 like FastAPI, and left out of /openapi.json)",
    )
    return p


def parse_args(argv: Sequence[str] | None = None) -> StubConfig:
    """Parse ``argv`` into a :class:`StubConfig`."""
    ns = build_parser().parse_args(argv)
    return StubConfig(
        port=ns.port,
        host=ns.host,
        name=ns.name,
        startup_delay=ns.startup_delay,
        exit_on_start=ns.exit_on_start,
        ignore_sigterm=ns.ignore_sigterm,
        health_status=ns.health_status,
        chunk_delay=ns.chunk_delay,
        chunks=ns.chunks,
        events=ns.events,
        memory_mb=ns.memory_mb,
        quiet=ns.quiet,
        without=tuple(ns.without),
    )


# --------------------------------------------------------------------------- events


class EventLog:
    """Append-only JSON-lines log that tests read from another process.

    Each event is one ``write`` + ``flush`` on an ``O_APPEND`` file, so lines from several
    stubs sharing a file do not interleave and a reader sees an event as soon as it happens.
    """

    def __init__(self, path: str | None) -> None:
        self._fh: IO[str] | None = (
            open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the server
            if path
            else None
        )
        self._pid = os.getpid()

    @property
    def enabled(self) -> bool:
        return self._fh is not None

    def emit(self, event: str, **fields: Any) -> None:
        if self._fh is None:
            return
        record = {"event": event, "ts": time.time(), "pid": self._pid, **fields}
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


# --------------------------------------------------------------------------- helpers


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _sse(obj: Any) -> bytes:
    return b"data: " + _json_bytes(obj) + b"\n\n"


def _sse_event(event: str, obj: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + _json_bytes(obj) + b"\n\n"


_ERROR_CLASSES: Final[dict[int, type[web.HTTPException]]] = {
    400: web.HTTPBadRequest,
    422: web.HTTPUnprocessableEntity,
    500: web.HTTPInternalServerError,
}


def _http_error(status: int, detail: Any) -> web.HTTPException:
    """Build a FastAPI-shaped error (``{"detail": ...}``) that handlers can raise."""
    return _ERROR_CLASSES[status](
        text=json.dumps({"detail": detail}), content_type="application/json"
    )


def _missing(field: str, body: Any) -> web.HTTPException:
    return _http_error(
        422, [{"type": "missing", "loc": ["body", field], "msg": "Field required", "input": body}]
    )


def _wrong_type(loc: list[str | int], kind: str, msg: str, value: Any) -> web.HTTPException:
    return _http_error(422, [{"type": kind, "loc": loc, "msg": msg, "input": value}])


def _text_of(content: Any) -> str:
    """Text of an OpenAI message content: a string or a list of ``{"text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _last_user_text(messages: Iterable[Any]) -> str:
    last = ""
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "user":
            last = _text_of(message.get("content"))
    return last


def _count_tokens(text: str) -> int:
    """A crude, deterministic token count: whitespace-separated words, at least one."""
    return max(1, len(text.split()))


def _usage(prompt_tokens: int, completion_tokens: int) -> JSONDict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _wants_usage(body: JSONDict) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def embedding_for(text: str, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """Deterministic pseudo-embedding in [-1, 1): same text, same vector, in any process."""
    out: list[float] = []
    counter = 0
    while len(out) < dimensions:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        for (word,) in struct.iter_unpack("<I", digest):
            out.append(round(word / 2**31 - 1.0, 6))
        counter += 1
    return out[:dimensions]


class _StdoutAccessLogger(AbstractAccessLogger):
    """One short line per request on stdout (flushed), so gateway log capture sees it."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        sys.stdout.write(
            f"stub: {request.method} {request.path} -> {response.status} ({time * 1000:.1f} ms)\n"
        )
        sys.stdout.flush()


# --------------------------------------------------------------------------- server


class StubServer:
    """Request handlers plus the little mutable state they share (health status, ids)."""

    def __init__(self, config: StubConfig, events: EventLog | None = None) -> None:
        self.config = config
        self.events = events if events is not None else EventLog(config.events)
        self.health_status = config.health_status
        self.created = int(time.time())
        self._ids = itertools.count(1)
        self._id_prefix = f"stub{os.getpid()}"

    # -- plumbing -------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        """Create the aiohttp application with every route registered."""
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        routes = [
            web.get("/health", self.health),
            web.post("/_control/health", self.control_health),
            web.get("/v1/models", self.models),
            web.post("/v1/chat/completions", self.chat_completions),
            web.post("/v1/completions", self.completions),
            web.post("/v1/embeddings", self.embeddings),
            web.post("/v1/responses", self.responses),
            web.post("/v1/audio/transcriptions", self.transcriptions),
            web.post("/v1/images/generations", self.image_generations),
            web.post("/v1/images/edits", self.image_edits),
        ]
        routes = [route for route in routes if route.path not in self.config.without]
        # Like FastAPI's: the routes served, so a client can tell what this server offers.
        openapi = {
            "openapi": "3.1.0",
            "info": {"title": "stub", "version": "1"},
            "paths": {str(route.path): {route.method.lower(): {}} for route in routes},
        }

        async def openapi_json(request: web.Request) -> web.Response:
            return web.json_response(openapi)

        routes.append(web.get("/openapi.json", openapi_json))
        app.add_routes(routes)
        known = frozenset(str(route.path) for route in routes)

        async def fallback(request: web.Request) -> web.Response:
            """FastAPI-style JSON 404/405 instead of aiohttp's plain-text pages."""
            if request.path in known:
                return web.json_response({"detail": "Method Not Allowed"}, status=405)
            return web.json_response({"detail": "Not Found"}, status=404)

        app.router.add_route("*", "/{tail:.*}", fallback)
        return app

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{self._id_prefix}-{next(self._ids)}"

    def _record(self, request: web.Request, model: Any, stream: bool) -> None:
        if not self.events.enabled:
            return
        headers = request.headers
        self.events.emit(
            "request",
            method=request.method,
            path=request.path,
            model=model if isinstance(model, str) else None,
            stream=stream,
            request_id=headers.get("X-Request-Id"),
            authorization=headers.get("Authorization"),
            cookie=headers.get("Cookie"),
        )

    async def _json_body(self, request: web.Request) -> JSONDict:
        """Read a JSON object body, recording the request even when it is invalid."""
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            self._record(request, None, False)
            raise _http_error(400, f"Invalid JSON body: {exc}") from None
        if not isinstance(body, dict):
            self._record(request, None, False)
            raise _wrong_type(
                ["body"],
                "model_attributes_type",
                "Input should be a valid dictionary or object to extract fields from",
                body,
            )
        self._record(request, body.get("model"), body.get("stream") is True)
        return body

    async def _trigger(self, request: web.Request, text: str) -> None:
        """Act on the magic prompts that simulate failures."""
        if text == TRIGGER_ERROR_500:
            raise _http_error(500, "simulated failure")
        if text == TRIGGER_CRASH:
            self.events.emit(
                "crash", path=request.path, request_id=request.headers.get("X-Request-Id")
            )
            sys.stderr.write("stub: fatal: simulated crash mid-request\n")
            sys.stderr.flush()
            sys.stdout.flush()
            os._exit(CRASH_EXIT_CODE)
        if text == TRIGGER_SLOW:
            await asyncio.sleep(SLOW_SECONDS)

    async def _stream(
        self, request: web.Request, frames: Iterable[tuple[bytes, bool]]
    ) -> web.StreamResponse:
        """Write SSE ``frames`` one by one, ``--chunk-delay`` apart, flushing each.

        Each frame is ``(bytes, is_content)``; content frames are what ``chunks_sent``
        counts.  A client that goes away shows up as ``ConnectionResetError`` from
        ``write`` or as cancellation of this handler (``handler_cancellation`` is on), and
        is recorded as ``stream_closed_by_client``.
        """
        delay = self.config.chunk_delay
        request_id = request.headers.get("X-Request-Id")
        response = web.StreamResponse(status=200, headers=_SSE_HEADERS)
        sent = 0
        try:
            await response.prepare(request)
            for index, (frame, is_content) in enumerate(frames):
                if index and delay:
                    await asyncio.sleep(delay)
                await response.write(frame)
                if is_content:
                    sent += 1
            await response.write_eof()
        except ConnectionResetError:
            self.events.emit(
                "stream_closed_by_client",
                chunks_sent=sent,
                path=request.path,
                request_id=request_id,
            )
            return response
        except asyncio.CancelledError:
            self.events.emit(
                "stream_closed_by_client",
                chunks_sent=sent,
                path=request.path,
                request_id=request_id,
            )
            raise
        self.events.emit("stream_done", chunks_sent=sent, path=request.path, request_id=request_id)
        return response

    async def _form(self, request: web.Request) -> tuple[dict[str, str], dict[str, web.FileField]]:
        """Split a multipart/urlencoded form into text fields and (first) file fields."""
        form = await request.post()
        texts: dict[str, str] = {}
        files: dict[str, web.FileField] = {}
        for key, value in form.items():
            if isinstance(value, web.FileField):
                files.setdefault(key.removesuffix("[]"), value)
            elif isinstance(value, str):
                texts.setdefault(key, value)
            else:
                texts.setdefault(key, bytes(value).decode(errors="replace"))
        self._record(request, texts.get("model"), texts.get("stream") == "true")
        return texts, files

    # -- health and models ----------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        """Readiness probe; its status code is what the gateway looks at."""
        return web.json_response({"status": "ok"}, status=self.health_status)

    async def control_health(self, request: web.Request) -> web.Response:
        """Flip the health status at runtime (tests of unhealthy-backend handling)."""
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError) as exc:
            raise _http_error(400, f"Invalid JSON body: {exc}") from None
        status = body.get("status") if isinstance(body, dict) else None
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            raise _wrong_type(
                ["body", "status"], "int_type", "Input should be an HTTP status code", status
            )
        self.health_status = status
        return web.json_response({"status": status})

    async def models(self, request: web.Request) -> web.Response:
        self._record(request, None, False)
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.config.name,
                        "object": "model",
                        "created": self.created,
                        "owned_by": "stub",
                    }
                ],
            }
        )

    # -- chat completions -----------------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._json_body(request)
        if "messages" not in body:
            raise _missing("messages", body)
        messages = body["messages"]
        if not isinstance(messages, list):
            raise _wrong_type(
                ["body", "messages"], "list_type", "Input should be a valid list", messages
            )
        last = _last_user_text(messages)
        await self._trigger(request, last)

        prompt_tokens = max(
            1,
            sum(len(_text_of(m.get("content")).split()) for m in messages if isinstance(m, dict)),
        )
        tool = self._tool_to_call(body)
        completion_id = self._new_id("chatcmpl")
        created = int(time.time())
        model = self.config.name

        if body.get("stream") is True:
            return await self._stream(
                request,
                self._chat_frames(body, completion_id, created, tool, prompt_tokens),
            )

        message: JSONDict
        if tool is not None:
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": self._new_id("call"),
                        "type": "function",
                        "function": {"name": tool, "arguments": "{}"},
                    }
                ],
            }
            finish_reason = "tool_calls"
            completion_tokens = 1
        else:
            reply = f"stub reply to: {last[:40]}"
            message = {"role": "assistant", "content": reply}
            finish_reason = "stop"
            completion_tokens = _count_tokens(reply)
        return web.json_response(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                ],
                "usage": _usage(prompt_tokens, completion_tokens),
            }
        )

    @staticmethod
    def _tool_to_call(body: JSONDict) -> str | None:
        """Name of the first declared tool, unless tools are absent or disabled."""
        tools = body.get("tools")
        if not isinstance(tools, list) or not tools or body.get("tool_choice") == "none":
            return None
        first = tools[0]
        function = first.get("function") if isinstance(first, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        return name if isinstance(name, str) else "tool"

    def _chat_frames(
        self,
        body: JSONDict,
        completion_id: str,
        created: int,
        tool: str | None,
        prompt_tokens: int,
    ) -> Iterator[tuple[bytes, bool]]:
        """Role chunk, N content chunks (or one tool-call chunk), finish, [usage], [DONE]."""
        model = self.config.name

        def chunk(delta: JSONDict, finish_reason: str | None = None) -> bytes:
            return _sse(
                {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "delta": delta,
                            "logprobs": None,
                            "finish_reason": finish_reason,
                        }
                    ],
                }
            )

        yield chunk({"role": "assistant", "content": ""}), False
        if tool is not None:
            call = {
                "index": 0,
                "id": self._new_id("call"),
                "type": "function",
                "function": {"name": tool, "arguments": "{}"},
            }
            yield chunk({"tool_calls": [call]}), True
            completion_tokens, finish_reason = 1, "tool_calls"
        else:
            for i in range(self.config.chunks):
                yield chunk({"content": f"tok{i} "}), True
            completion_tokens, finish_reason = self.config.chunks, "stop"
        yield chunk({}, finish_reason), False
        if _wants_usage(body):
            yield (
                _sse(
                    {
                        "id": completion_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": _usage(prompt_tokens, completion_tokens),
                    }
                ),
                False,
            )
        yield _SSE_DONE, False

    # -- legacy completions ---------------------------------------------------------------

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._json_body(request)
        if "prompt" not in body:
            raise _missing("prompt", body)
        prompt = body["prompt"]
        if isinstance(prompt, list):
            texts = [p for p in prompt if isinstance(p, str)]
            text = texts[-1] if texts else ""
        elif isinstance(prompt, str):
            text = prompt
        else:
            raise _wrong_type(
                ["body", "prompt"], "string_type", "Input should be a valid string", prompt
            )
        await self._trigger(request, text)
        completion_id = self._new_id("cmpl")
        created = int(time.time())
        model = self.config.name
        prompt_tokens = _count_tokens(text)

        def payload(choice_text: str, finish_reason: str | None) -> JSONDict:
            return {
                "id": completion_id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "text": choice_text,
                        "index": 0,
                        "logprobs": None,
                        "finish_reason": finish_reason,
                    }
                ],
            }

        if body.get("stream") is True:

            def frames() -> Iterator[tuple[bytes, bool]]:
                for i in range(self.config.chunks):
                    yield _sse(payload(f"tok{i} ", None)), True
                yield _sse(payload("", "stop")), False
                if _wants_usage(body):
                    usage_chunk = payload("", None)
                    usage_chunk["choices"] = []
                    usage_chunk["usage"] = _usage(prompt_tokens, self.config.chunks)
                    yield _sse(usage_chunk), False
                yield _SSE_DONE, False

            return await self._stream(request, frames())

        reply = f"stub completion of: {text[:40]}"
        result = payload(reply, "stop")
        result["usage"] = _usage(prompt_tokens, _count_tokens(reply))
        return web.json_response(result)

    # -- embeddings -----------------------------------------------------------------------

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        if "input" not in body:
            raise _missing("input", body)
        raw = body["input"]
        inputs: list[str]
        if isinstance(raw, str):
            inputs = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
            inputs = list(raw)
        elif isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
            inputs = [" ".join(map(str, raw))]  # one pre-tokenised input
        elif isinstance(raw, list) and raw and all(isinstance(x, list) for x in raw):
            inputs = [" ".join(map(str, x)) for x in raw]
        else:
            raise _wrong_type(
                ["body", "input"],
                "string_type",
                "Input should be a string, a list of strings or a list of token ids",
                raw,
            )
        await self._trigger(request, inputs[-1])
        dims = body.get("dimensions")
        dimensions = dims if isinstance(dims, int) and 0 < dims <= 4096 else EMBEDDING_DIMENSIONS
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(inputs):
            vector = embedding_for(text, dimensions)
            embedding: list[float] | str = (
                base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
                if as_base64
                else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(_count_tokens(t) for t in inputs)
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": self.config.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    # -- responses API --------------------------------------------------------------------

    async def responses(self, request: web.Request) -> web.StreamResponse:
        body = await self._json_body(request)
        if "input" not in body:
            raise _missing("input", body)
        raw = body["input"]
        if isinstance(raw, str):
            text = raw
        elif isinstance(raw, list):
            text = _last_user_text(
                item for item in raw if isinstance(item, dict) and item.get("role", "user")
            )
        else:
            raise _wrong_type(
                ["body", "input"], "string_type", "Input should be a string or a list", raw
            )
        await self._trigger(request, text)
        response_id = self._new_id("resp")
        message_id = self._new_id("msg")
        created = int(time.time())
        input_tokens = _count_tokens(text)

        def response_object(status: str, reply: str | None, output_tokens: int) -> JSONDict:
            output: list[JSONDict] = []
            if reply is not None:
                output.append(
                    {
                        "type": "message",
                        "id": message_id,
                        "status": "completed",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": reply, "annotations": []}],
                    }
                )
            return {
                "id": response_id,
                "object": "response",
                "created_at": created,
                "status": status,
                "model": self.config.name,
                "output": output,
                "usage": {
                    "input_tokens": input_tokens,
                    "output_tokens": output_tokens,
                    "total_tokens": input_tokens + output_tokens,
                },
            }

        if body.get("stream") is True:

            def frames() -> Iterator[tuple[bytes, bool]]:
                seq = itertools.count()
                created_event = {
                    "type": "response.created",
                    "sequence_number": next(seq),
                    "response": response_object("in_progress", None, 0),
                }
                yield _sse_event("response.created", created_event), False
                parts = []
                for i in range(self.config.chunks):
                    delta = f"tok{i} "
                    parts.append(delta)
                    event = {
                        "type": "response.output_text.delta",
                        "sequence_number": next(seq),
                        "item_id": message_id,
                        "output_index": 0,
                        "content_index": 0,
                        "delta": delta,
                    }
                    yield _sse_event("response.output_text.delta", event), True
                full = "".join(parts)
                done = {
                    "type": "response.output_text.done",
                    "sequence_number": next(seq),
                    "item_id": message_id,
                    "output_index": 0,
                    "content_index": 0,
                    "text": full,
                }
                yield _sse_event("response.output_text.done", done), False
                completed = {
                    "type": "response.completed",
                    "sequence_number": next(seq),
                    "response": response_object("completed", full, self.config.chunks),
                }
                yield _sse_event("response.completed", completed), False

            return await self._stream(request, frames())

        reply = f"stub reply to: {text[:40]}"
        return web.json_response(response_object("completed", reply, _count_tokens(reply)))

    # -- audio and images (multipart) -----------------------------------------------------

    async def transcriptions(self, request: web.Request) -> web.Response:
        texts, files = await self._form(request)
        upload = files.get("file")
        if upload is None:
            raise _missing("file", None)
        size = len(upload.file.read())
        text = f"stub transcription of {upload.filename} ({size} bytes)"
        fmt = texts.get("response_format", "json")
        if fmt in ("text", "srt", "vtt"):
            return web.Response(text=text, content_type="text/plain")
        result: JSONDict = {"text": text}
        if fmt == "verbose_json":
            result.update(language="en", duration=0.0, segments=[])
        return web.json_response(result)

    def _images(self, count: Any, response_format: Any, revised_prompt: str) -> web.Response:
        n = count if isinstance(count, int) and 1 <= count <= 10 else 1
        if response_format == "url":
            item: JSONDict = {"url": f"data:image/png;base64,{_PNG_1X1_B64}"}
        else:
            item = {"b64_json": _PNG_1X1_B64}
        item["revised_prompt"] = revised_prompt
        return web.json_response({"created": int(time.time()), "data": [dict(item)] * n})

    async def image_generations(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        prompt = body.get("prompt")
        if prompt is None:
            raise _missing("prompt", body)
        if not isinstance(prompt, str):
            raise _wrong_type(
                ["body", "prompt"], "string_type", "Input should be a valid string", prompt
            )
        await self._trigger(request, prompt)
        return self._images(body.get("n"), body.get("response_format"), prompt)

    async def image_edits(self, request: web.Request) -> web.Response:
        texts, files = await self._form(request)
        image = files.get("image")
        if image is None:
            raise _missing("image", None)
        prompt = texts.get("prompt")
        if prompt is None:
            raise _missing("prompt", None)
        await self._trigger(request, prompt)
        size = len(image.file.read())
        n = int(texts["n"]) if texts.get("n", "").isdigit() else 1
        return self._images(
            n,
            texts.get("response_format"),
            f"stub edit of {image.filename} ({size} bytes): {prompt}",
        )


# --------------------------------------------------------------------------- process


def _allocate_memory(megabytes: int) -> bytearray:
    """Allocate ``megabytes`` MiB and write to every page so it counts in the RSS."""
    size = megabytes * 1024 * 1024
    ballast = bytearray(size)
    page = 4096
    ballast[::page] = b"\x01" * len(range(0, size, page))
    return ballast


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Use uvloop when it is installed (noticeably faster as a benchmark upstream)."""
    try:
        import uvloop  # optional speed-up, never required
    except ImportError:
        return None
    return uvloop.new_event_loop


async def serve(config: StubConfig) -> int:
    """Listen until SIGTERM/SIGINT, then shut down quickly; return the exit code."""
    server = StubServer(config)
    runner = web.AppRunner(
        server.build_app(),
        handle_signals=False,
        handler_cancellation=True,
        shutdown_timeout=1.0,
        access_log_class=_StdoutAccessLogger,
        access_log=None if config.quiet else logging.getLogger("aiohttp.access"),
    )
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=1024)
    try:
        await site.start()
    except OSError as exc:
        sys.stderr.write(f"stub: fatal: cannot listen on {config.host}:{config.port}: {exc}\n")
        sys.stderr.flush()
        await runner.cleanup()
        return 1

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if not config.ignore_sigterm:  # SIG_IGN must stay in place, so no handler then
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    sys.stdout.write(f"{LISTENING_PREFIX}http://{config.host}:{config.port}\n")
    sys.stdout.flush()
    server.events.emit("started", host=config.host, port=config.port, name=config.name)
    try:
        await stop.wait()
    finally:
        sys.stdout.write("stub: shutting down\n")
        sys.stdout.flush()
        await runner.cleanup()
        server.events.emit("stopped")
        server.events.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: simulate the configured start-up, then serve."""
    config = parse_args(argv)
    if config.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ballast = _allocate_memory(config.memory_mb) if config.memory_mb else None
    if config.startup_delay:
        time.sleep(config.startup_delay)
    if config.exit_on_start is not None:
        sys.stderr.write(f"{FATAL_LINE} (exit code {config.exit_on_start})\n")
        sys.stderr.flush()
        return config.exit_on_start
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(serve(config))
    finally:
        del ballast


# --------------------------------------------------------------------------- test helpers


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the OS for a currently free TCP port (there is a small reuse race; fine in tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def stub_argv(port: int, *args: str, python: str | None = None) -> list[str]:
    """The argv that runs this stub on ``port`` (e.g. for a gateway ``command`` profile)."""
    return [python or sys.executable, str(STUB_SCRIPT), "--port", str(port), *args]


def read_events(path: str | os.PathLike[str]) -> list[JSONDict]:
    """Parse an events file; a missing file means no events yet."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@dataclass
class StubProcess:
    """A running stub subprocess whose stdout/stderr go to files (pipes could fill up)."""

    proc: subprocess.Popen[bytes]
    host: str
    port: int
    stdout_path: Path
    stderr_path: Path

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stdout_text(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def wait_listening(self, timeout: float = 15.0) -> None:
        """Block until the "listening" line appears; raise if the process exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if LISTENING_PREFIX in self.stdout_text():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"stub exited with {self.proc.returncode} before listening:\n"
                    f"{self.stderr_text()}"
                )
            time.sleep(0.02)
        raise TimeoutError(f"stub on port {self.port} not listening after {timeout}s")

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit within ``timeout``; return the code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def kill(self) -> int:
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait()


def start_stub(
    log_dir: str | os.PathLike[str],
    *args: str,
    port: int | None = None,
    host: str = "127.0.0.1",
    wait: bool = True,
    timeout: float = 15.0,
) -> StubProcess:
    """Launch the stub as a real subprocess; by default wait until it is listening.

    stdout/stderr are written to ``<log_dir>/stub-<port>.out|.err``.  On a start-up
    failure the process is killed before the exception propagates.
    """
    port = port if port is not None else free_port(host)
    directory = Path(log_dir)
    directory.mkdir(parents=True, exist_ok=True)
    stdout_path = directory / f"stub-{port}.out"
    stderr_path = directory / f"stub-{port}.err"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            stub_argv(port, "--host", host, *args), stdout=out, stderr=err, stdin=subprocess.DEVNULL
        )
    stub = StubProcess(proc, host, port, stdout_path, stderr_path)
    if wait:
        try:
            stub.wait_listening(timeout)
        except BaseException:
            stub.kill()
            raise
    return stub


if __name__ == "__main__":
    sys.exit(main())
