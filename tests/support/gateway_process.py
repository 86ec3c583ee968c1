"""`python -m gateway serve` as a real process, for the tests that need what an in-process
gateway cannot give: a SIGKILL, a restart on the same home, several gateways (replicas) on one
database, uvicorn's own HTTP edge.

`serve_environment` builds the child's environment from a clean slate (no `MLX_MANAGER_*` of
the test run leaks in); the process runs in `cwd` (default: its log's folder) so no stray
`.env` from the working tree is read.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.stub_server import free_port
from tests.support.waiting import wait_until, wait_until_sync

# Generous: a safety net so a broken gateway fails the test instead of hanging it.
START_PATIENCE = 60.0


def serve_environment(home: Path, secret: str, **settings: str) -> dict[str, str]:
    """The environment of a gateway on `home`: idle servers kept, health checks off (tests
    decide when things happen), plus `settings` (`idle_ttl="5"` is MLX_MANAGER_IDLE_TTL)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLX_MANAGER_")}
    env.pop("FORWARDED_ALLOW_IPS", None)
    env.update(
        MLX_MANAGER_HOME=str(home),
        MLX_MANAGER_JWT_SECRET=secret,
        MLX_MANAGER_IDLE_TTL="0",
        MLX_MANAGER_HEALTH_CHECK_INTERVAL="3600",
        # Model servers from a random first port: replicas and other test runs on this
        # machine must not race for one port (a test sets it to share or to collide).
        MLX_MANAGER_DEFAULT_PORT_START=str(random.randrange(20000, 31000, 10)),
    )
    env.update({f"MLX_MANAGER_{key.upper()}": value for key, value in settings.items()})
    return env


def loopback_address(n: int) -> str:
    """127.0.0.`n` where this machine can bind it (Linux: all of 127/8 is loopback), else
    127.0.0.1 (macOS has only that without an alias): nodes on distinct addresses, like
    distinct machines, wherever the system allows."""
    address = f"127.0.0.{n}"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((address, 0))
    except OSError:
        return "127.0.0.1"
    return address


class GatewayProcess:
    """One `python -m gateway serve` on a free port of `host` (127.0.0.1), its output in
    `log`."""

    def __init__(
        self,
        env: dict[str, str],
        log: Path,
        *,
        port: int | None = None,
        cwd: Path | None = None,
        command: str = "serve",
        host: str = "127.0.0.1",
    ) -> None:
        """`command` "node" runs `python -m gateway node` (a node, tests/test_nodes.py)."""
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.log = log
        argv = [sys.executable, "-m", "gateway", command, "--host", host, "--port", str(self.port)]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd or log.parent,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"gateway exited:\n{self.log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/health", timeout=2, trust_env=False).status_code == 200
        except httpx.TransportError:
            return False

    async def wait_healthy(self, timeout: float = START_PATIENCE) -> None:
        async def healthy() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited:\n{self.log.read_text()[-3000:]}")
            try:
                async with httpx.AsyncClient(timeout=2, trust_env=False) as http:
                    return (await http.get(f"{self.url}/health")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_until(healthy, timeout=timeout, interval=0.1, message=f"{self.url}/health")

    def wait_healthy_sync(self, timeout: float = START_PATIENCE) -> None:
        wait_until_sync(self._healthy, timeout=timeout, interval=0.1, message=f"{self.url}/health")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no cleanup, as a crash or the OOM killer would."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self) -> None:
        """An orderly stop (SIGTERM); SIGKILL if it has not exited in time."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()
