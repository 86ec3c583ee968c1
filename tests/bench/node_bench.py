"""Node benchmark: a profile on the gateway's machine vs the same profile on a node, same run.

    .venv/bin/python -m tests.bench.node_bench [--scale 0.5]

Starts a real gateway (`python -m gateway serve`, nodes enabled) and a real node
(`python -m gateway node`) on 127.0.0.1, and two stub profiles: `local` (a server the gateway
runs) and `remote` (the same stub, run by the node). Drives both through the gateway with an
aiohttp client: p50/p99 and requests/s at concurrency 1 and 32 without streaming, and 32-chunk
streams/s at concurrency 32. The figure the issue names: added p50 at c=1 through a node over
a local server (target <= 1 ms). Numbers, not a pass/fail test (shared machines are noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from tests.bench.proxy_bench import (
    BODY,
    STREAM_BODY,
    Cases,
    bench_key,
    compare,
    drive,
    measure,
    stop,
    verdict,
    wait_http,
)
from tests.support.stub_server import STUB_SCRIPT, free_port


def _env(home: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLX_MANAGER_")}
    env.update(
        MLX_MANAGER_HOME=str(home),
        MLX_MANAGER_JWT_SECRET=secrets.token_urlsafe(48),
        MLX_MANAGER_IDLE_TTL="0",
        MLX_MANAGER_LOG_LEVEL="warning",
    )
    env.update({f"MLX_MANAGER_{k.upper()}": v for k, v in settings.items()})
    return env


async def main(scale: float) -> int:
    root = Path(tempfile.mkdtemp(prefix="mlx-node-bench-"))
    token = secrets.token_urlsafe(48)
    gw_port, node_port = free_port(), free_port()
    base = f"http://127.0.0.1:{gw_port}"
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(gw_port)],
        env=_env(root / "gateway", node_token=token),
    )
    node = subprocess.Popen(
        [sys.executable, "-m", "gateway", "node", "--port", str(node_port)],
        env=_env(
            root / "node",
            node_token=token,
            gateway_url=base,
            node_name="n1",
            default_port_start="11240",
        ),
    )
    try:
        await wait_http(base + "/health")
        await wait_http(f"http://127.0.0.1:{node_port}/health")
        command = [sys.executable, str(STUB_SCRIPT), "--port", "{port}", "--quiet"]
        command += ["--chunks", "32"]
        profiles: list[dict[str, object]] = [
            {"name": name, "command": command, "nodes": nodes}
            for name, nodes in (("local", None), ("remote", ["n1"]))
        ]
        async with aiohttp.ClientSession() as session:
            key = await bench_key(session, base, profiles)
        auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        url = base + "/v1/chat/completions"
        bodies = {
            name: (
                BODY.replace(b'"bench"', f'"{name}"'.encode()),
                STREAM_BODY.replace(b'"bench"', f'"{name}"'.encode()),
            )
            for name in ("local", "remote")
        }
        n1, n32, ns = int(1000 * scale), int(4000 * scale), int(1000 * scale)
        rows: dict[str, Cases] = {}
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            deadline = time.monotonic() + 60
            while True:  # the node learns its profile with its next heartbeat
                async with session.post(url, data=bodies["remote"][0], headers=auth) as r:
                    await r.read()
                    if r.status == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"remote never answered: {r.status}")
                await asyncio.sleep(0.2)
            for body, _ in bodies.values():  # warm-up
                await drive(session, url, auth, body, 8, 200, False)
            for name, pair in bodies.items():
                rows[name] = await measure(session, url, auth, pair, (n1, n32, ns))
        added = compare(("local", "node"), rows["local"], rows["remote"])
        return verdict([("added p50 <= 1 ms at c=1 over a local server", added <= 1.0)])
    finally:
        stop(node, gateway)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply request counts")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.scale)))
