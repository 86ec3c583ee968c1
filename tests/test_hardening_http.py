"""The HTTP edge under abuse (issue 11): head size, slow heads and bodies, Host, proxies.

These run the gateway the way users do, as a real `python -m gateway serve` subprocess, because
the limits live in the uvicorn configuration that `serve` builds; the clients are raw sockets so
every byte on the wire is the test's choice.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support.gateway_process import GatewayProcess, serve_environment

SECRET = "edge-test-secret-" + "e" * 40
MAX_HEADER_BYTES = 4096
HEADER_TIMEOUT = 1
BODY_TIMEOUT = 3
# Generous bound on how long the client waits for the server to act: a safety net so a broken
# gateway fails the test instead of hanging it, never the thing asserted.
PATIENCE = 60


class ServeProcess(GatewayProcess):
    """A gateway with some settings, healthy, that tests talk raw HTTP to."""

    def __init__(self, root: Path, **settings: str) -> None:
        env = serve_environment(root / "home", SECRET, **settings)
        super().__init__(env, root / "gateway.log", cwd=root)
        self.wait_healthy_sync(PATIENCE)

    def stop(self) -> None:
        self.terminate()

    @contextmanager
    def connect(self) -> Iterator[socket.socket]:
        with socket.create_connection(("127.0.0.1", self.port), timeout=PATIENCE) as sock:
            yield sock


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    server = ServeProcess(
        tmp_path_factory.mktemp("edge"),
        max_header_bytes=str(MAX_HEADER_BYTES),
        header_timeout=str(HEADER_TIMEOUT),
        body_timeout=str(BODY_TIMEOUT),
    )
    try:
        yield server
    finally:
        server.stop()


def read_response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def read_one_response(sock: socket.socket) -> bytes:
    """One response with a content-length, leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed early: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return data


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response.split(b" ", 2)[1])


def head_of_size(size: int, path: str = "/health") -> bytes:
    """A GET whose request line and headers are exactly `size` bytes, padded with one header."""
    start = f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nx-pad: ".encode()
    end = b"\r\n\r\n"
    padding = size - len(start) - len(end)
    assert padding >= 0
    return start + b"a" * padding + end


# Header size


def test_a_head_at_the_limit_is_served(edge: ServeProcess):
    request = head_of_size(MAX_HEADER_BYTES)
    assert len(request) == MAX_HEADER_BYTES
    with edge.connect() as sock:
        sock.sendall(request)
        response = read_one_response(sock)
    assert status_of(response) == 200


def test_a_head_one_byte_over_the_limit_is_431(edge: ServeProcess):
    with edge.connect() as sock:
        sock.sendall(head_of_size(MAX_HEADER_BYTES + 1))
        response = read_response(sock)
    assert status_of(response) == 431
    assert b'"code": "headers_too_large"' in response
    assert b"MLX_MANAGER_MAX_HEADER_BYTES" in response


def test_an_endless_header_is_cut_off_near_the_limit(edge: ServeProcess):
    """A header that never ends: the gateway answers and closes long before it is all sent."""
    sent = 0
    chunk = b"a" * 16384
    with edge.connect() as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nx-big: ")
        try:
            for _ in range(64 * 1024 * 1024 // len(chunk)):  # up to 64 MiB
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = read_response(sock)
    assert sent < 32 * 1024 * 1024, "the gateway kept reading an endless header"
    if response:  # the 431 may be lost to the reset of a socket we were still writing to
        assert status_of(response) == 431


def test_many_small_headers_over_the_limit_are_431(edge: ServeProcess):
    lines = b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 40) for i in range(200))
    with edge.connect() as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n" + lines + b"\r\n")
        response = read_response(sock)
    assert status_of(response) == 431


# Read timeouts


def test_a_client_that_stalls_mid_headers_is_disconnected(edge: ServeProcess):
    with edge.connect() as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nx-half: ")
        response = read_response(sock)  # returns only once the gateway closes
    assert status_of(response) == 408
    assert b'"code": "header_timeout"' in response


def test_a_connection_that_sends_nothing_is_closed(edge: ServeProcess):
    with edge.connect() as sock:
        assert read_response(sock) == b""


def test_a_client_that_stalls_mid_body_is_disconnected(edge: ServeProcess):
    with edge.connect() as sock:
        sock.sendall(
            b"POST /api/auth/login HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            b"content-type: application/json\r\ncontent-length: 100\r\n\r\n"
            b'{"email": '
        )
        response = read_response(sock)
    assert status_of(response) == 408
    assert b'"code": "body_timeout"' in response


def test_a_body_that_keeps_arriving_is_not_cut(edge: ServeProcess):
    """The body clock measures silence, not the whole upload."""
    body = b'{"email": "nobody@example.com", "password": "wrong-password"}'
    with edge.connect() as sock:
        sock.sendall(
            b"POST /api/auth/login HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            b"content-type: application/json\r\n" + f"content-length: {len(body)}\r\n\r\n".encode()
        )
        for i in range(0, len(body), 8):
            sock.sendall(body[i : i + 8])
            time.sleep(BODY_TIMEOUT / 6)
        response = read_one_response(sock)
    assert status_of(response) == 401


def test_an_idle_keep_alive_connection_outlives_the_header_timeout(edge: ServeProcess):
    """Between requests only uvicorn's keep-alive timeout (5 s) applies, not the head clock."""
    request = b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
    with edge.connect() as sock:
        sock.sendall(request)
        assert status_of(read_one_response(sock)) == 200
        time.sleep(HEADER_TIMEOUT * 2)
        sock.sendall(request)
        assert status_of(read_one_response(sock)) == 200


# Forwarded headers


def failed_sign_ins(server: ServeProcess, forwarded_for: list[str]) -> list[int]:
    """One failed sign-in per claimed client address, each for a different email."""
    statuses = []
    for i, address in enumerate(forwarded_for):
        response = httpx.post(
            f"{server.url}/api/auth/login",
            json={"email": f"nobody{i}@example.com", "password": "wrong-password"},
            headers={"x-forwarded-for": address},
            trust_env=False,
            timeout=PATIENCE,
        )
        statuses.append(response.status_code)
    return statuses


def test_forwarded_for_is_ignored_unless_the_proxy_is_trusted(tmp_path: Path):
    """A local client cannot dodge the per-address throttle by naming another address."""
    server = ServeProcess(tmp_path, login_max_failures_per_address="2")
    try:
        statuses = failed_sign_ins(server, ["198.51.100.1", "198.51.100.2", "198.51.100.3"])
    finally:
        server.stop()
    assert statuses == [401, 401, 429]


def test_a_trusted_proxys_forwarded_for_is_the_client_address(tmp_path: Path):
    server = ServeProcess(tmp_path, login_max_failures_per_address="2", trusted_proxies="127.0.0.1")
    try:
        statuses = failed_sign_ins(server, ["198.51.100.1", "198.51.100.2", "198.51.100.3"])
        again = failed_sign_ins(server, ["198.51.100.1", "198.51.100.1"])
    finally:
        server.stop()
    assert statuses == [401, 401, 401]
    assert again == [401, 429]
