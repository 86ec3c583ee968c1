"""The echo upstream: a tiny model-server stand-in that records raw requests, run as a script.

`python tests/support/echo_upstream.py --port P --events FILE` serves an aiohttp app that
records each request's raw body and headers, and answers as the request's `x-echo-*` headers
say (status, content type, body, delay, a crash mid-body). The stub model server
(tests/support/stub_server.py) records parsed fields only; byte-for-byte forwarding and header
handling need the raw request.

Each request is recorded as a `request` event: `path`, `query`, `method`, `headers` (lower-case
names), `body_b64` (the raw body), `request_id`. The answer follows the request's headers:
`x-echo-status` (default 200), `x-echo-content-type` (default application/json),
`x-echo-body` or `x-echo-body-b64` (default a small JSON object), `x-echo-delay` (seconds to
wait first; a client that leaves meanwhile is recorded as a `cancelled` event), and
`x-echo-die: mid-body` (send the headers and part of the body, record `dying`, and exit at
once, like a crash). An `answered` event follows each complete answer.

The gateway runs this file as a script, so it imports only the standard library and aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

ECHO_SCRIPT = Path(__file__).resolve()


def echo_command(events: Path) -> list[str]:
    """A gateway `command` profile running the echo upstream with the gateway's `{port}`."""
    return [sys.executable, str(ECHO_SCRIPT), "--port", "{port}", "--events", str(events)]


class _EchoEvents:
    def __init__(self, path: str) -> None:
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives with the server

    def emit(self, event: str, **fields: Any) -> None:
        record = {"event": event, "ts": time.time(), "pid": os.getpid(), **fields}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()


def _echo_app(events: _EchoEvents) -> web.Application:
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def echo(request: web.Request) -> web.Response:
        raw = await request.read()
        request_id = request.headers.get("x-request-id")
        events.emit(
            "request",
            method=request.method,
            path=request.path,
            query=request.query_string,
            headers={k.lower(): v for k, v in request.headers.items()},
            body_b64=base64.b64encode(raw).decode(),
            request_id=request_id,
        )
        delay = float(request.headers.get("x-echo-delay", "0"))
        if delay:
            try:
                await asyncio.sleep(delay)
            except asyncio.CancelledError:
                events.emit("cancelled", path=request.path, request_id=request_id)
                raise
        status = int(request.headers.get("x-echo-status", "200"))
        content_type = request.headers.get("x-echo-content-type", "application/json")
        if "x-echo-body-b64" in request.headers:
            data = base64.b64decode(request.headers["x-echo-body-b64"])
        elif "x-echo-body" in request.headers:
            data = request.headers["x-echo-body"].encode()
        else:
            data = json.dumps({"echo": True, "path": request.path, "bytes": len(raw)}).encode()
        if request.headers.get("x-echo-die") == "mid-body":
            # Crash after the headers and part of the body: the answer is cut short.
            response = web.StreamResponse(status=status, headers={"Content-Type": content_type})
            response.content_length = len(data) + 100
            await response.prepare(request)
            await response.write(data)
            events.emit("dying", path=request.path, request_id=request_id)
            os._exit(3)
        events.emit("answered", path=request.path, request_id=request_id, status=status)
        return web.Response(body=data, status=status, headers={"Content-Type": content_type})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/health", health)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def _serve_echo(port: int, events_path: str) -> None:
    runner = web.AppRunner(
        _echo_app(_EchoEvents(events_path)), handler_cancellation=True, access_log=None
    )
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"echo: listening on http://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description="Echo upstream for the proxy tests.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--events", required=True)
    args = parser.parse_args()
    asyncio.run(_serve_echo(args.port, args.events))


if __name__ == "__main__":
    main()
