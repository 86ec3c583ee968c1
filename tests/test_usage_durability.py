"""Usage rows survive what replicas face: a gateway SIGKILLed mid-traffic, PostgreSQL
restarting or down, a batch written twice, a replica of the same machine sharing HOME.

Everything is real: gateways as `python -m gateway serve` processes (or uvicorn in the test's
loop where the test must reach into the recorder), the stub model server as a `command`
profile, SQLite files and PostgreSQL servers (tests/support/postgres.py; the restart and
outage tests run a private server so other tests are unaffected). Every request carries its own
`x-request-id`; the assertions compare the set of ids whose 200 answer the client read in full
with the set of ids in the `usage` table.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy import text

from gateway.db import create_engine, migrate, session_factory
from gateway.settings import load_settings
from gateway.store.usage import record_usage
from gateway.usage import UsageRecorder, encode
from gateway.usage_spool import SPOOL_DIR, SpoolOwner, UsageSpool, parse_segment_name
from tests.conftest import bearer, make_settings
from tests.support import secrets
from tests.support.env import chat_body, port_base, stub_command
from tests.support.gateway import running_gateway
from tests.support.gateway_process import GatewayProcess, serve_environment
from tests.support.postgres import PostgresServer
from tests.support.waiting import wait_until

SECRET = "usage-durability-secret-" + "u" * 40
ADMIN = {"email": "admin@example.com", "password": "admin-password"}
PATIENCE = 60.0
MIB = 1024 * 1024


# ---- settings at their edges -----------------------------------------------------------------


def test_usage_settings_accept_their_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = load_settings(_env_file=None)
    assert defaults.usage_spool_max_bytes == 1024**3
    assert (defaults.usage_flush_interval, defaults.usage_retry_max) == (1, 10)
    assert defaults.usage_flush_timeout == 30
    for values in (
        {"USAGE_SPOOL_MAX_BYTES": str(MIB), "USAGE_FLUSH_INTERVAL": "0.01"},
        {"USAGE_SPOOL_MAX_BYTES": str(1024**4), "USAGE_FLUSH_INTERVAL": "3600"},
        {"USAGE_RETRY_MAX": "3600", "USAGE_FLUSH_TIMEOUT": "3600"},
    ):
        for name, value in values.items():
            monkeypatch.setenv(f"MLX_MANAGER_{name}", value)
        settings = load_settings(_env_file=None)
        for name, value in values.items():
            assert getattr(settings, name.lower()) == float(value)


# ---- the spool's cap, byte for byte (real files) ---------------------------------------------


def test_the_spool_is_full_at_its_cap_and_not_a_byte_before(tmp_path: Path) -> None:
    spool = UsageSpool(tmp_path, MIB)
    spool.open()
    spool.append(b"x" * (MIB - 2) + b"\n")  # MIB - 1 bytes
    assert (spool.pending_bytes, spool.full) == (MIB - 1, False)
    spool.append(b"\n")
    assert (spool.pending_bytes, spool.full) == (MIB, True)
    # Rotated (closed for commit), the bytes still count until committed.
    spool.rotate()
    assert spool.full
    assert len(spool.closed) == 1
    segment = spool.closed[0]
    spool.committed(segment, segment.size - 1)
    assert (spool.pending_bytes, spool.full) == (1, False)
    spool.committed(segment, segment.size)
    assert not segment.path.exists()
    assert spool.pending_bytes == 0
    spool.close()
    assert list((tmp_path / SPOOL_DIR).iterdir()) == []  # the empty current segment went too


def test_segment_names_say_whose_they_are() -> None:
    owner = SpoolOwner("build-host.local", 4242, 1_700_000_000_123)
    name = owner.segment_name(7)
    assert name == "build-host.local-4242-1700000000123-00000007.jsonl"
    assert parse_segment_name(name) == (owner, 7)
    assert parse_segment_name("notes.txt") is None
    assert parse_segment_name("a-b-c.jsonl") is None
    assert SpoolOwner.current().alive()
    assert not SpoolOwner(owner.host, os.getpid(), 1000).alive()  # this pid, another start


# ---- idempotent inserts, on both databases -----------------------------------------------------


def _row(record_id: str, **values: Any) -> dict[str, Any]:
    from datetime import UTC, datetime

    return {
        "record_id": record_id,
        "created_at": datetime.now(UTC),
        "request_id": f"req-{record_id}",
        "user_id": None,
        "key_id": None,
        "model": "m",
        "endpoint": "/v1/chat/completions",
        "status": 200,
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "latency_ms": 1.0,
        "ttfb_ms": None,
        **values,
    }


async def _count(engine: Any, where: str = "1=1") -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text(f"SELECT count(*) FROM usage WHERE {where}"))).scalar())


@pytest.mark.both_databases
async def test_a_batch_written_again_adds_nothing(tmp_path: Path, database_url: str | None) -> None:
    """A commit whose outcome the writer never learned (the connection lost during COMMIT) is
    written again: the second write must add nothing."""
    engine = create_engine(database_url or f"sqlite+aiosqlite:///{tmp_path / 'usage.db'}")
    try:
        await migrate(engine)
        sessions = session_factory(engine)
        batch = [_row(f"{i:032x}") for i in range(50)]
        async with sessions() as session:
            await record_usage(session, batch)
        assert await _count(engine) == 50
        async with sessions() as session:
            await record_usage(session, batch)  # "retried"
        assert await _count(engine) == 50
        # Half old, half new: only the new half lands.
        async with sessions() as session:
            await record_usage(session, batch[25:] + [_row(f"{i:032x}") for i in range(50, 75)])
        assert await _count(engine) == 75
        # A row whose user was deleted since the request lands unowned (the foreign key's own
        # ON DELETE SET NULL), instead of blocking every later batch.
        async with sessions() as session:
            await record_usage(session, [_row("f" * 32, user_id=999_999, key_id=888_888)])
        assert await _count(engine, f"record_id = '{'f' * 32}' AND user_id IS NULL") == 1
    finally:
        await engine.dispose()


@pytest.mark.both_databases
async def test_rows_the_database_refuses_are_set_aside_not_retried_forever(
    tmp_path: Path, database_url: str | None
) -> None:
    engine = create_engine(database_url or f"sqlite+aiosqlite:///{tmp_path / 'usage.db'}")
    try:
        await migrate(engine)
        recorder = UsageRecorder(session_factory(engine), UsageSpool(tmp_path / "home", MIB))
        recorder.spool.open()
        recorder.record(request_id="good-1", model="m", status=200)
        # A row breaking a constraint (status is NOT NULL): refused for its data on both.
        recorder.spool.append(encode({"record_id": "b" * 32, "request_id": "bad", "status": None}))
        recorder.record(request_id="good-2", model="m", status=200)
        await recorder.flush()
        assert await _count(engine, "request_id LIKE 'good-%'") == 2
        assert await _count(engine, "request_id = 'bad'") == 0
        rejected = list((tmp_path / "home" / SPOOL_DIR / "rejected").iterdir())
        assert len(rejected) == 1
        assert b'"request_id":"bad"' in rejected[0].read_bytes()
        assert recorder.spool.pending_bytes == 0
        assert not recorder.spool.full
        await recorder.close()
    finally:
        await engine.dispose()


# ---- gateways as processes -------------------------------------------------------------------


@dataclass
class Outcome:
    """What the client saw of a burst: ids whose 200 it read whole, other answers, failures."""

    sent: list[str] = field(default_factory=list)
    ok: set[str] = field(default_factory=set)
    other: dict[str, int] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)


async def _request(
    http: httpx.AsyncClient, url: str, key: dict[str, str], request_id: str, outcome: Outcome
) -> None:
    outcome.sent.append(request_id)
    try:
        response = await http.post(
            f"{url}/v1/chat/completions",
            json=chat_body("stub"),
            headers={**key, "x-request-id": request_id},
        )
        body = response.json()  # the whole body arrived (Content-Length), else it raised
    except (httpx.TransportError, json.JSONDecodeError):
        outcome.failed.add(request_id)
        return
    if response.status_code == 200 and body["choices"]:
        outcome.ok.add(request_id)
    else:
        outcome.other[request_id] = response.status_code


async def _burst(
    http: httpx.AsyncClient,
    url: str,
    key: dict[str, str],
    prefix: str,
    total: int,
    concurrency: int,
    outcome: Outcome,
) -> None:
    ids = iter(f"{prefix}-{i:05d}" for i in range(total))

    async def worker() -> None:
        for request_id in ids:
            await _request(http, url, key, request_id, outcome)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _usage_ids(url: str, prefix: str) -> list[str]:
    """request_id of every usage row of the burst, duplicates kept."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT request_id FROM usage WHERE request_id LIKE :p"), {"p": f"{prefix}-%"}
            )
            return [row[0] for row in rows]
    finally:
        await engine.dispose()


async def _record_ids_unique(url: str) -> bool:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            query = "SELECT count(*), count(DISTINCT record_id), count(record_id) FROM usage"
            total, distinct, present = (await conn.execute(text(query))).one()
            return bool(total == distinct == present)
    finally:
        await engine.dispose()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(
        timeout=30, trust_env=False, limits=limits, event_hooks=secrets.HOOKS
    ) as client:
        yield client


@pytest.fixture
def processes() -> Iterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    yield started
    for process in started:
        process.terminate()


async def _start(
    processes: list[GatewayProcess], home: Path, log: Path, **settings: str
) -> GatewayProcess:
    values = {"default_port_start": str(port_base()), **settings}
    gateway = GatewayProcess(serve_environment(home, SECRET, **values), log, cwd=home.parent)
    processes.append(gateway)
    await gateway.wait_healthy()
    return gateway


async def _admin(http: httpx.AsyncClient, url: str) -> dict[str, str]:
    response = await http.post(f"{url}/api/auth/register", json=ADMIN)
    assert response.status_code in (201, 409), response.text
    response = await http.post(f"{url}/api/auth/login", json=ADMIN)
    assert response.status_code == 200, response.text
    return bearer(response.json()["access_token"])


async def _prepare(http: httpx.AsyncClient, url: str) -> tuple[dict[str, str], dict[str, str]]:
    """Admin, an inference key, the stub profile, and one answered request (the stub is up and
    the key's login is cached). Returns (admin headers, key headers)."""
    admin = await _admin(http, url)
    response = await http.post(f"{url}/api/keys", json={"name": "burst"}, headers=admin)
    assert response.status_code == 201, response.text
    key = bearer(response.json()["key"])
    profile = {"name": "stub", "command": stub_command()}
    response = await http.post(f"{url}/api/profiles", json=profile, headers=admin)
    assert response.status_code == 201, response.text
    warm = Outcome()
    await _request(http, url, key, "warmup", warm)
    assert warm.ok == {"warmup"}, warm
    return admin, key


def _url_for(home: Path, database_url: str | None) -> str:
    return database_url or f"sqlite+aiosqlite:///{home / 'mlx-manager.db'}"


@pytest.mark.both_databases
async def test_a_gateway_killed_mid_traffic_accounts_every_answer_once(
    tmp_path: Path,
    database_url: str | None,
    http: httpx.AsyncClient,
    processes: list[GatewayProcess],
) -> None:
    home = tmp_path / "home"
    db = {"database_url": database_url} if database_url else {}
    first = await _start(processes, home, tmp_path / "gateway-1.log", **db)
    _, key = await _prepare(http, first.url)

    outcome = Outcome()
    burst = asyncio.create_task(_burst(http, first.url, key, "kill", 600, 16, outcome))
    await wait_until(lambda: len(outcome.ok) >= 150, timeout=PATIENCE, message="150 answers")
    first.kill()  # SIGKILL: no shutdown, no last flush
    await burst
    assert outcome.failed, "the kill came after the burst: nothing was cut off"
    assert not outcome.other, outcome.other
    committed = len(await _usage_ids(_url_for(home, database_url), "kill"))

    # The next gateway on this machine commits what the dead one spooled.
    second = await _start(processes, home, tmp_path / "gateway-2.log", **db)
    admin = await _admin(http, second.url)
    response = await http.get(f"{second.url}/api/usage", headers=admin)  # flushes first
    assert response.status_code == 200, response.text
    rows = await _usage_ids(_url_for(home, database_url), "kill")
    print(
        f"\n  answered {len(outcome.ok)}, cut off {len(outcome.failed)}; rows: {committed} "
        f"committed before the kill, {len(rows)} after the restart"
    )
    assert len(rows) == len(set(rows)), "a usage row was doubled"
    assert set(rows) == outcome.ok
    assert await _record_ids_unique(_url_for(home, database_url))
    assert not list((home / SPOOL_DIR).glob(f"*-{first.pid}-*")), "the dead spool stayed"


async def test_postgres_restarting_mid_traffic_loses_and_doubles_nothing(
    tmp_path: Path,
    private_postgres: PostgresServer,
    http: httpx.AsyncClient,
    processes: list[GatewayProcess],
) -> None:
    url = private_postgres.url(await private_postgres.create_database())
    home = tmp_path / "home"
    gateway = await _start(
        processes, home, tmp_path / "gateway.log", database_url=url, usage_retry_max="0.5"
    )
    _, key = await _prepare(http, gateway.url)

    outcome = Outcome()
    burst = asyncio.create_task(_burst(http, gateway.url, key, "pg", 900, 8, outcome))
    await wait_until(lambda: len(outcome.ok) >= 100, timeout=PATIENCE, message="100 answers")
    await asyncio.to_thread(private_postgres.halt)
    # The outage: answers keep coming (cached login, running model server), usage is spooled.
    during = len(outcome.ok)
    await wait_until(lambda: len(outcome.ok) >= during + 100, timeout=PATIENCE, message="more")
    # ...and the gateway has tried to commit them, and failed.
    await wait_until(
        lambda: "could not write usage records to the database" in gateway.log.read_text(),
        timeout=PATIENCE,
        message="a failed commit",
    )
    await asyncio.to_thread(private_postgres.restart)
    await burst
    assert not outcome.failed, outcome.failed
    assert not outcome.other, outcome.other
    assert len(outcome.ok) == 900

    async def flushed() -> list[str] | None:
        rows = await _usage_ids(url, "pg")
        return rows if len(set(rows)) >= len(outcome.ok) else None

    rows = await wait_until(flushed, timeout=PATIENCE, interval=0.2, message="rows flushed later")
    assert len(rows) == len(set(rows)), "a usage row was doubled"
    assert set(rows) == outcome.ok
    assert await _record_ids_unique(url)
    assert "usage records reach the database again" in gateway.log.read_text()


async def test_a_live_replicas_spool_is_left_alone_and_adopted_once_it_dies(
    tmp_path: Path, postgres_url: str, http: httpx.AsyncClient, processes: list[GatewayProcess]
) -> None:
    """Two gateways of one machine share HOME (and the database). A replica that is alive owns
    its spool, even one the other could commit; once it is SIGKILLed, the other takes the spool
    over without being restarted."""
    home = tmp_path / "home"
    # A commits only at shutdown (a flush interval of an hour): its records stay spooled.
    a = await _start(
        processes, home, tmp_path / "a.log", database_url=postgres_url, usage_flush_interval="3600"
    )
    _, key = await _prepare(http, a.url)
    outcome = Outcome()
    await _burst(http, a.url, key, "live", 20, 4, outcome)
    assert len(outcome.ok) == 20

    b = await _start(
        processes, home, tmp_path / "b.log", database_url=postgres_url, usage_flush_interval="0.1"
    )
    admin = await _admin(http, b.url)
    for _ in range(3):  # B flushes (and looks for dead spools) on every report and each 0.1 s
        response = await http.get(f"{b.url}/api/usage", headers=admin)
        assert response.status_code == 200, response.text
    assert await _usage_ids(postgres_url, "live") == []
    spooled = [
        json.loads(line)["request_id"]
        for path in (home / SPOOL_DIR).glob(f"*-{a.pid}-*.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert set(spooled) >= outcome.ok

    children = psutil.Process(a.pid).children(recursive=True)  # its stub model server
    a.kill()
    for child in children:  # no gateway starts after A to reap its orphan: do it here
        with contextlib.suppress(psutil.Error):
            child.kill()

    async def adopted() -> list[str] | None:
        rows = await _usage_ids(postgres_url, "live")
        return rows if rows else None

    rows = await wait_until(adopted, timeout=PATIENCE, interval=0.1, message="A's spool adopted")
    await http.get(f"{b.url}/api/usage", headers=admin)
    rows = await _usage_ids(postgres_url, "live")
    assert sorted(rows) == sorted(outcome.ok)  # each exactly once
    assert not list((home / SPOOL_DIR).glob(f"*-{a.pid}-*"))
    assert "adopted" in b.log.read_text()


# ---- a full spool refuses new requests (in-process, private PostgreSQL halted) ------------------


async def test_a_full_spool_refuses_new_requests_until_the_database_takes_it(
    tmp_path: Path, private_postgres: PostgresServer
) -> None:
    url = private_postgres.url(await private_postgres.create_database())
    settings = make_settings(
        tmp_path / "home",
        database_url=url,
        usage_spool_max_bytes=MIB,
        usage_retry_max=0.5,
        default_port_start=port_base(),
        stop_timeout=5,
    )
    async with (
        running_gateway(settings) as handle,
        httpx.AsyncClient(base_url=handle.url, timeout=30, event_hooks=secrets.HOOKS) as client,
    ):
        _, key = await _prepare(client, handle.url)
        usage = handle.core.usage
        await asyncio.to_thread(private_postgres.halt)
        # Fill the spool to one record short of its cap (no await: nothing is flushed between).
        filled = 0
        while usage.spool.pending_bytes + 400 < MIB:
            usage.record(request_id=f"fill-{filled:06d}", model="stub", status=200)
            filled += 1
        below = Outcome()
        await _request(client, handle.url, key, "below-cap", below)
        assert below.ok == {"below-cap"}, below  # under the cap: served (and spooled)
        while not usage.spool.full:
            usage.record(request_id=f"fill-{filled:06d}", model="stub", status=200)
            filled += 1

        response = await client.post("/v1/chat/completions", json=chat_body("stub"), headers=key)
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "usage_spool_full"
        assert error["type"] == "server_error"
        assert int(response.headers["retry-after"]) >= 1
        ready = (await client.get("/ready")).json()
        assert (ready["status"], ready["usage_spool"]) == ("degraded", "full")
        assert ready["usage_spool_bytes"] >= MIB

        await asyncio.to_thread(private_postgres.restart)

        async def served() -> bool:
            response = await client.post(
                "/v1/chat/completions", json=chat_body("stub"), headers=key
            )
            return response.status_code == 200

        await wait_until(served, timeout=PATIENCE, interval=0.2, message="served again")
        await usage.flush()
        ready = (await client.get("/ready")).json()
        assert ready["status"] == "ready", ready
        assert "usage_spool" not in ready
        assert len(await _usage_ids(url, "fill")) == filled
        assert await _usage_ids(url, "below") == ["below-cap"]
        assert await _record_ids_unique(url)
