"""The HTTP edge: what uvicorn must enforce before the app sees a request.

uvicorn's default parser (httptools) has no bound on the request line and headers, and no
read timeouts: a client could send 500 MiB of headers, or a few header bytes a minute, and hold
memory and a connection for as long as it likes. h11 has a size bound but no timeouts either,
and is several times slower on the proxy path. So the gateway keeps httptools and adds three
limits in a small protocol subclass:

- the head (request line and headers) may be at most `max_header_bytes` (431 otherwise),
  counted while it arrives, so memory stays bounded by the limit plus one read;
- the whole head must arrive within `header_timeout` of its first byte (or of the connection
  opening), else 408 and close: this is what stops slow-header (slowloris) clients;
- while the app waits for the body, the client must send something every `body_timeout`
  seconds, else 408 (or a close, if the answer already started). Time the gateway itself
  spends not reading (flow control, `Expect: 100-continue` not yet answered) never counts.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.settings import Settings

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def _error_bytes(status: int, message: str, code: str) -> bytes:
    """A complete `connection: close` answer in the `/api` error shape, for the raw socket."""
    body = json.dumps({"detail": message, "code": code}).encode()
    head = (
        f"HTTP/1.1 {status} ".encode()
        + _REASONS[status]
        + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
    )
    return head + body


class EdgeLimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head size limit and header/body read timeouts."""

    max_header_bytes = 32 * 1024
    header_timeout = 30.0
    body_timeout = 60.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False
        self._head_received = 0
        self._rejected = False
        self._between_requests = True
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    # Connection events

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that never sends a byte is a held socket too: the head clock starts now.
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return
        if self._between_requests and self._header_timer is None:
            self._arm_header_timer()
        super().data_received(data)
        if self._in_head and not self._rejected:
            # The head is still incomplete, so (nearly) every byte of this read belongs to it;
            # counting reads, not parsed parts, also bounds a single endless header value,
            # which the parser buffers before any callback sees it.
            self._head_received += len(data)
            if self._head_received > self.max_header_bytes:
                self._reject_head()

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_received = 0
        if self._header_timer is None:
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._between_requests = False
        self._cancel_header_timer()
        if self._head_size() > self.max_header_bytes:
            self._reject_head()
            return
        super().on_headers_complete()
        self._arm_body_timer()

    def on_body(self, body: bytes) -> None:
        if self._rejected:
            return
        super().on_body(body)
        if self._body_timer is not None:
            self._arm_body_timer()

    def on_message_complete(self) -> None:
        if self._rejected:
            return
        self._cancel_body_timer()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.pipeline:
            # Idle until the next request: uvicorn's keep-alive timeout governs until its first
            # byte arrives (data_received then starts the head clock).
            self._between_requests = True

    # Limits

    def _head_size(self) -> int:
        """Bytes of the head as sent in canonical form: request line, `name: value` lines."""
        size = len(self.parser.get_method()) + 1 + len(self.url) + len(" HTTP/1.1\r\n") + 2
        for name, value in self.headers:
            size += len(name) + len(value) + 4
        return size

    def _reject_head(self) -> None:
        self._reject(
            431,
            f"the request line and headers are larger than {self.max_header_bytes} bytes "
            "(MLX_MANAGER_MAX_HEADER_BYTES)",
            "headers_too_large",
        )

    def _reject(self, status: int, message: str, code: str) -> None:
        self._rejected = True
        self._in_head = False
        self._cancel_header_timer()
        self._cancel_body_timer()
        if not self.transport.is_closing():
            self.transport.write(_error_bytes(status, message, code))
            self.transport.close()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if not self._in_head:
            # Nothing of a request arrived: there is nobody to answer, just let go.
            self._rejected = True
            self.transport.close()
            return
        self._reject(
            408,
            f"the request headers did not arrive within {self.header_timeout:g} s "
            "(MLX_MANAGER_HEADER_TIMEOUT)",
            "header_timeout",
        )

    def _arm_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
        self._body_timer = self.loop.call_later(self.body_timeout, self._body_timed_out)

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None or not cycle.more_body:
            return
        if self.flow.read_paused or cycle.waiting_for_100_continue:
            # The gateway is the one not reading (the app has not asked yet): not a stall.
            self._arm_body_timer()
            return
        if cycle.response_started:
            self._rejected = True
            self.transport.close()
            return
        self._reject(
            408,
            f"the request body stalled: nothing arrived for {self.body_timeout:g} s "
            "(MLX_MANAGER_BODY_TIMEOUT)",
            "body_timeout",
        )


def edge_protocol(settings: Settings) -> type[EdgeLimitedProtocol]:
    """The protocol class uvicorn instantiates per connection, carrying these settings."""
    return type(
        "GatewayHttpProtocol",
        (EdgeLimitedProtocol,),
        {
            "max_header_bytes": settings.max_header_bytes,
            "header_timeout": settings.header_timeout,
            "body_timeout": settings.body_timeout,
        },
    )


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """What `serve` passes to uvicorn for the edge: the limited protocol and proxy trust.

    uvicorn believes `X-Forwarded-For` from 127.0.0.1 by default (or `FORWARDED_ALLOW_IPS`),
    so any local process, or a proxy that passes the header through unchecked, could choose
    the address the sign-in throttle counts. Forwarded headers are read only from the
    addresses in MLX_MANAGER_TRUSTED_PROXIES, and never when it is unset.
    """
    options: dict[str, Any] = {"http": edge_protocol(settings)}
    trusted = [p.strip() for p in (settings.trusted_proxies or "").split(",") if p.strip()]
    if trusted:
        options.update(proxy_headers=True, forwarded_allow_ips=trusted)
    else:
        options.update(proxy_headers=False)
    return options
