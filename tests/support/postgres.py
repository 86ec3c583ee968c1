"""A real PostgreSQL server for the tests: one private cluster per session, a fresh database
per test.

The cluster lives in a temporary folder (data and unix socket) and listens on a free
127.0.0.1 port; it is built with the machine's own `initdb` and `postgres` binaries (Debian's
`postgresql-NN` package, Homebrew's or Postgres.app's; `make test` installs Debian's when
missing, see scripts/install-postgres.sh). PostgreSQL refuses to run as root, so under uid 0
the server runs as the unprivileged `postgres` user (the Debian package creates it) and owns
its folder; otherwise it runs as the current user. Durability is switched off (fsync,
synchronous commit, full page writes): a crashed test server is thrown away anyway, and this
keeps `CREATE DATABASE` and each commit cheap on a busy 2-core machine.

As a pytest plugin (listed in tests/conftest.py's `pytest_plugins`) this module gives:
- `postgres_server`: the session's server, started on first use;
- `postgres_url`: a `postgresql+asyncpg://` URL of a new, empty database for one test;
- `private_postgres`: a server of one test's own, for outages (stop, hang, restart);
- `database_url`: None (SQLite, the default) or a fresh PostgreSQL URL, for the tests marked
  `@pytest.mark.both_databases`, which run once on each (ids `sqlite` and `postgresql`).
  tests/conftest.py's `settings` fixture takes it, so every fixture built on `settings`
  (`gateway`, `client`, `admin_token`) follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

RUN_AS = "postgres"  # the unprivileged user the server runs as when the tests run as root
START_TIMEOUT = 60.0
DATABASES = ("sqlite", "postgresql")


class PostgresUnavailable(RuntimeError):
    """No usable PostgreSQL binaries or user; the message says how to get them."""


def find_bindir() -> Path:
    """The folder holding `initdb` and `postgres`: $MLX_MANAGER_TEST_PG_BINDIR, the newest
    Debian /usr/lib/postgresql/NN/bin, `pg_config --bindir`, or `initdb` on PATH."""
    configured = os.environ.get("MLX_MANAGER_TEST_PG_BINDIR")
    candidates: list[Path] = [Path(configured)] if configured else []
    debian = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    debian.sort(
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
    )
    candidates += [Path(p).parent for p in reversed(debian)]
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, check=True, text=True
            )
            candidates.append(Path(out.stdout.strip()))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, postgres) not found: run `make test` (installs "
        "Debian's postgresql as root), install PostgreSQL, or set MLX_MANAGER_TEST_PG_BINDIR"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# Looked up here, in the parent: between fork and exec the child may only make the call (a
# dlopen there could wait forever on a loader lock another thread held at the fork).
_PRCTL = ctypes.CDLL(None).prctl if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the server's child process (after it took the postgres user's ids, which would clear
    the setting): stop with a fast shutdown if pytest dies without cleaning up, so a killed
    test run leaves no cluster behind. Linux only; elsewhere a no-op."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGINT))


@dataclass
class PostgresServer:
    """A private PostgreSQL cluster; `start()` builds and runs it, `stop()` removes it."""

    bindir: Path
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mlx-manager-pg-")))
    port: int = 0
    user: str = "postgres"  # the database superuser name (not the OS user)
    startup_seconds: float = 0.0
    databases: int = 0  # how many `create_database` made
    process: subprocess.Popen[bytes] | None = None
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def _as_owner(self) -> dict[str, Any]:
        """Popen arguments running a child as the cluster's OS user (see module docstring)."""
        if os.geteuid() != 0:
            return {}
        try:
            entry = pwd.getpwnam(RUN_AS)
        except KeyError as exc:
            raise PostgresUnavailable(
                f"running as root, PostgreSQL needs an unprivileged user {RUN_AS!r} to run as "
                "(Debian's postgresql package creates it)"
            ) from exc
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def start(self) -> None:
        began = time.monotonic()
        owner = self._as_owner()
        if owner:
            os.chown(self.root, owner["user"], owner["group"])
        self.root.chmod(0o700)
        initdb = subprocess.run(
            [
                str(self.bindir / "initdb"),
                "--pgdata",
                str(self.data),
                "--username",
                self.user,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            ],
            cwd=self.root,
            capture_output=True,
            check=False,
            **owner,
        )
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed: {initdb.stdout.decode()}{initdb.stderr.decode()}")
        self.port = _free_port()
        self._launch(owner)
        self.startup_seconds = time.monotonic() - began

    def _launch(self, owner: dict[str, Any]) -> None:
        """Run `postgres` on the cluster's folder and port and wait until it answers."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(self.bindir / "postgres"),
                    "-D",
                    str(self.data),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.root),
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=300",
                    # PostgreSQL waits for a lock forever by default: a test stuck behind a
                    # transaction left open fails with "lock timeout" instead (like SQLite's
                    # busy timeout in the gateway).
                    "-c",
                    "lock_timeout=30s",
                ],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # sets PR_SET_PDEATHSIG
                **owner,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        async def ping() -> None:
            connection = await asyncpg.connect(
                host="127.0.0.1", port=self.port, user=self.user, database="postgres", timeout=2
            )
            await connection.close()

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited at start:\n{self.log.read_text()}")
            try:
                asyncio.run(ping())
                return
            except (OSError, asyncpg.PostgresError) as exc:
                if time.monotonic() > deadline:
                    log = self.log.read_text()
                    message = f"postgres not ready after {START_TIMEOUT} s ({exc}):\n{log}"
                    raise RuntimeError(message) from exc
                time.sleep(0.05)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/{database}"

    async def _admin(self, statement: str) -> None:
        connection = await asyncpg.connect(
            host="127.0.0.1", port=self.port, user=self.user, database="postgres"
        )
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    async def create_database(self) -> str:
        """A new empty database; its name."""
        self.databases = next(self._names)
        name = f"test_{os.getpid()}_{self.databases}"
        await self._admin(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return name

    async def drop_database(self, name: str) -> None:
        # WITH (FORCE) ends connections a test left open (a pool not disposed on failure).
        await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def halt(self) -> None:
        """Stop the server but keep its data: an outage, ended by `restart()`."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown: disconnect clients, stop
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        """Start the halted server again on the same port, with the same data."""
        self.halt()
        self._launch(self._as_owner())

    def stop(self) -> None:
        self.halt()
        shutil.rmtree(self.root, ignore_errors=True)


# ---- the pytest plugin -----------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_databases: run the test on SQLite and on a real PostgreSQL server"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("both_databases") is None:
        return
    if "database_url" not in metafunc.fixturenames:
        metafunc.fixturenames.append("database_url")
    metafunc.parametrize("database_url", DATABASES, indirect=True, ids=DATABASES)


_STARTED: list[PostgresServer] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The server's start-up time in the run's summary: the cost the PostgreSQL runs add."""
    for server in _STARTED:
        terminalreporter.write_line(
            f"PostgreSQL test server ({server.bindir}): started in "
            f"{server.startup_seconds:.2f} s, {server.databases} test databases"
        )


@pytest.fixture
async def private_postgres() -> AsyncIterator[PostgresServer]:
    """A PostgreSQL server of one test's own, free to be stopped, hung (SIGSTOP) and restarted
    without disturbing the session's shared server."""
    server = PostgresServer(find_bindir())
    try:
        await asyncio.to_thread(server.start)
        yield server
    finally:
        await asyncio.to_thread(server.stop)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer(find_bindir())
    _STARTED.append(server)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
async def postgres_url(postgres_server: PostgresServer) -> AsyncIterator[str]:
    name = await postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        await postgres_server.drop_database(name)


@pytest.fixture
def database_url(request: pytest.FixtureRequest) -> str | None:
    """None = the default SQLite file; for `both_databases` tests, the PostgreSQL run gets a
    fresh database's URL."""
    if getattr(request, "param", "sqlite") == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return None
