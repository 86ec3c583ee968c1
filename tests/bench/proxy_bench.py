"""Proxy benchmark: the stub upstream measured directly and through the gateway, same run.

    make bench            (or: .venv/bin/python -m tests.bench.proxy_bench)

Starts a real gateway (`python -m gateway serve`) with authentication on, a fast stub model
server as a `command` profile, and drives both with an aiohttp client: requests/s and p50/p99
at concurrency 1 and 32 without streaming, and 32-chunk streams/s at concurrency 32. Prints each
figure, the ratio gateway/direct, and whether the targets hold. Numbers, not a pass/fail test:
shared machines are noisy, so targets live here, not in the unit tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.support.stub_server import STUB_SCRIPT, free_port

BODY = json.dumps(
    {"model": "bench", "messages": [{"role": "user", "content": "Say something short."}]}
).encode()
STREAM_BODY = json.dumps(
    {
        "model": "bench",
        "stream": True,
        "messages": [{"role": "user", "content": "Say something longer."}],
    }
).encode()


@dataclass
class Result:
    label: str
    requests: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def drive(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    body: bytes,
    concurrency: int,
    total: int,
    stream: bool,
) -> Result:
    latencies: list[float] = []
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                if stream:
                    async for _ in response.content.iter_any():
                        pass
                else:
                    await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{url} answered {response.status}")
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Result("", total, time.perf_counter() - started, latencies)


Cases = dict[str, Result]  # "c1", "c32", "stream32"


async def measure(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    bodies: tuple[bytes, bytes],
    counts: tuple[int, int, int],
) -> Cases:
    """The three cases every benchmark reports: non-stream at c=1 and c=32, streams at c=32."""
    body, stream_body = bodies
    n1, n32, ns = counts
    return {
        "c1": await drive(session, url, headers, body, 1, n1, False),
        "c32": await drive(session, url, headers, body, 32, n32, False),
        "stream32": await drive(session, url, headers, stream_body, 32, ns, True),
    }


async def bench_key(
    session: aiohttp.ClientSession, base: str, profiles: list[dict[str, object]]
) -> str:
    """Register the first (admin) user on a fresh gateway, create `profiles`, return an API
    key for /v1."""
    creds = {"email": "bench@example.com", "password": "bench-password"}
    await (await session.post(base + "/api/auth/register", json=creds)).read()
    login = await (await session.post(base + "/api/auth/login", json=creds)).json()
    admin = {"Authorization": f"Bearer {login['access_token']}"}
    key = await (
        await session.post(base + "/api/keys", json={"name": "bench"}, headers=admin)
    ).json()
    for profile in profiles:
        response = await session.post(base + "/api/profiles", json=profile, headers=admin)
        assert response.status == 201, await response.text()
    secret: str = key["key"]
    return secret


def compare(names: tuple[str, str], a: Cases, b: Cases) -> float:
    """Print the cases side by side with the ratio b/a; return b's added p50 at c=1 (ms)."""
    print(f"\n{'case':<34}{names[0]:>12}{names[1]:>12}{'ratio':>8}")
    lines = [
        ("non-stream c=1   req/s", a["c1"].rate, b["c1"].rate),
        ("non-stream c=1   p50 ms", a["c1"].pct(0.5), b["c1"].pct(0.5)),
        ("non-stream c=1   p99 ms", a["c1"].pct(0.99), b["c1"].pct(0.99)),
        ("non-stream c=32  req/s", a["c32"].rate, b["c32"].rate),
        ("non-stream c=32  p50 ms", a["c32"].pct(0.5), b["c32"].pct(0.5)),
        ("non-stream c=32  p99 ms", a["c32"].pct(0.99), b["c32"].pct(0.99)),
        ("32-chunk streams c=32  streams/s", a["stream32"].rate, b["stream32"].rate),
    ]
    for label, left, right in lines:
        print(f"{label:<34}{left:>12.1f}{right:>12.1f}{right / left:>8.2f}")
    added = b["c1"].pct(0.5) - a["c1"].pct(0.5)
    print(f"{'added p50 latency at c=1 (ms)':<34}{added:>32.2f}")
    return added


def verdict(checks: list[tuple[str, bool]]) -> int:
    """PASS or MISS per target; the exit status `make bench` fails on."""
    print()
    for label, ok in checks:
        print(f"{'PASS' if ok else 'MISS'}  {label}")
    return 0 if all(ok for _, ok in checks) else 1


async def wait_http(url: str, deadline: float = 60) -> None:
    end = time.monotonic() + deadline
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < end:
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


async def main(scale: float) -> int:
    home = Path(tempfile.mkdtemp(prefix="mlx-bench-"))
    gw_port, stub_port = free_port(), free_port()
    env = {
        **os.environ,
        "MLX_MANAGER_HOME": str(home),
        "MLX_MANAGER_JWT_SECRET": secrets.token_urlsafe(48),
        "MLX_MANAGER_IDLE_TTL": "0",
        "MLX_MANAGER_LOG_LEVEL": "warning",
    }
    profile_to = os.environ.get("BENCH_PROFILE")  # cProfile the gateway into this file
    runner = ["-m", "cProfile", "-o", profile_to] if profile_to else []
    gateway = subprocess.Popen(
        [sys.executable, *runner, "-m", "gateway", "serve", "--port", str(gw_port)], env=env
    )
    stub_args = ["--quiet", "--chunks", "32"]
    direct = subprocess.Popen(
        [sys.executable, str(STUB_SCRIPT), "--port", str(stub_port), *stub_args],
        stdout=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{gw_port}"
        await wait_http(base + "/health")
        await wait_http(f"http://127.0.0.1:{stub_port}/health")
        command = [sys.executable, str(STUB_SCRIPT), "--port", "{port}", *stub_args]
        async with aiohttp.ClientSession() as session:
            key = await bench_key(session, base, [{"name": "bench", "command": command}])
        auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        plain = {"Content-Type": "application/json"}
        targets = {
            "direct": (f"http://127.0.0.1:{stub_port}/v1/chat/completions", plain),
            "gateway": (base + "/v1/chat/completions", auth),
        }
        n1, n32, ns = int(1000 * scale), int(6000 * scale), int(1500 * scale)
        rows: dict[str, Cases] = {}
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            for url, headers in targets.values():  # warm-up (also starts the server)
                await drive(session, url, headers, BODY, 8, 200, False)
            for name, (url, headers) in targets.items():
                rows[name] = await measure(
                    session, url, headers, (BODY, STREAM_BODY), (n1, n32, ns)
                )
        added = compare(("direct", "gateway"), rows["direct"], rows["gateway"])
        return verdict(
            [
                ("gateway >= 1000 req/s at c=32", rows["gateway"]["c32"].rate >= 1000),
                ("added p50 <= 1 ms at c=1", added <= 1.0),
                (
                    "streams >= 0.5 x direct",
                    rows["gateway"]["stream32"].rate >= 0.5 * rows["direct"]["stream32"].rate,
                ),
            ]
        )
    finally:
        stop(gateway, direct)


def stop(*processes: subprocess.Popen[bytes]) -> None:
    """SIGTERM them all, then wait for each (a gateway stops its model servers first)."""
    for proc in processes:
        proc.terminate()
    for proc in processes:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply request counts")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.scale)))
