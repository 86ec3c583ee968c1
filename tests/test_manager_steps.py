"""The manager's join / cancel / evict / fail rules, driven fast through its `spawn=` seam.

`ServerManager` runs for real here (its registry, start/stop tasks, leases, the policy, a real
SQLite database for its running_instances records); only the model-server process is a fake,
handed in as `spawn=`. The fake records every launch and stop and becomes ready, exits or
finishes stopping exactly when the test says, so these tests need no subprocess and no sleep:
they wait on events, never on time. The same rules are covered with real stub processes in
tests/test_servers_lifecycle.py and tests/test_servers_memory.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db import create_engine, migrate, session_factory
from gateway.serving.errors import QueueTimeout, StartFailed
from gateway.serving.manager import ManagedServer, ServerManager
from gateway.serving.process import LaunchSpec
from gateway.tables import ServerProfile
from tests.conftest import make_settings

FAKE_PID_BASE = 5_000_000  # above Linux's largest pid: psutil never finds a real process


class FakeProcess:
    """A model server that does what the test says: become ready, exit, finish a stop."""

    def __init__(self, spawner: FakeSpawner, spec: LaunchSpec, pid: int) -> None:
        self.spec = spec
        self.create_time = 0.0
        self._pid = pid
        self._spawner = spawner
        self._ready = asyncio.Event()
        self._exited = asyncio.Event()
        self._code: int | None = None
        self.stops = 0
        if spawner.auto_ready:
            self._ready.set()

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def returncode(self) -> int | None:
        return self._code

    def become_ready(self) -> None:
        self._ready.set()

    def exit(self, code: int) -> None:
        if self._code is None:
            self._code = code
            self._exited.set()

    async def wait_ready(self, within: float, http: httpx.AsyncClient) -> float:
        ready = asyncio.ensure_future(self._ready.wait())
        exited = asyncio.ensure_future(self._exited.wait())
        try:
            await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            exited.cancel()
        if self._code is not None:
            raise StartFailed(
                f"model server exited with code {self._code} while starting; "
                f"last log lines:\nfake: could not load {self.spec.argv[-1]}"
            )
        return 0.0

    async def wait_exit(self) -> int:
        await self._exited.wait()
        assert self._code is not None
        return self._code

    async def stop(self, grace: float) -> int | None:
        self.stops += 1
        self._spawner.stopped.append(self)
        await self._spawner.stop_gate.wait()
        self.exit(0)
        return self._code


class FakeSpawner:
    """The `spawn=` of a ServerManager under test: records launches in order."""

    def __init__(self, *, auto_ready: bool = True) -> None:
        self.auto_ready = auto_ready
        self.launched: list[FakeProcess] = []
        self.stopped: list[FakeProcess] = []
        self._launches: asyncio.Queue[FakeProcess] = asyncio.Queue()
        self.stop_gate = asyncio.Event()  # stops finish once it is set
        self.stop_gate.set()

    async def __call__(self, spec: LaunchSpec) -> FakeProcess:
        process = FakeProcess(self, spec, FAKE_PID_BASE + len(self.launched))
        self.launched.append(process)
        self._launches.put_nowait(process)
        return process

    async def next_launch(self) -> FakeProcess:
        return await asyncio.wait_for(self._launches.get(), 30)

    def launches_of(self, name: str) -> int:
        return sum(1 for p in self.launched if p.spec.argv[-1] == name)


class Harness:
    def __init__(self, manager: ServerManager, spawner: FakeSpawner, tmp: Path) -> None:
        self.manager = manager
        self.spawner = spawner
        self._sessions = manager._sessions
        self._tmp = tmp

    async def profile(self, name: str, **fields: Any) -> ManagedServer:
        """A `command` profile (the fake never runs it; its last argument names it)."""
        profile = ServerProfile(
            name=name, model_path=str(self._tmp), command=["fake-server", name], **fields
        )
        async with self._sessions() as session:
            session.add(profile)
            await session.commit()
            await session.refresh(profile)
        return await self.manager.add_profile(profile)


@pytest_asyncio.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    yield await _open(tmp_path, FakeSpawner())


@pytest_asyncio.fixture
async def gated(tmp_path: Path) -> AsyncIterator[Harness]:
    """Processes become ready only when the test says so."""
    yield await _open(tmp_path, FakeSpawner(auto_ready=False))


_open_managers: list[tuple[ServerManager, AsyncEngine]] = []


async def _open(tmp_path: Path, spawner: FakeSpawner, **settings: object) -> Harness:
    values: dict[str, object] = {"max_memory_gb": 4, "queue_timeout": 30, **settings}
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'steps.db'}")
    await migrate(engine)
    manager = ServerManager(
        make_settings(tmp_path, **values), session_factory(engine), spawn=spawner
    )
    await manager.open()
    _open_managers.append((manager, engine))
    return Harness(manager, spawner, tmp_path)


@pytest_asyncio.fixture(autouse=True)
async def _close_managers() -> AsyncIterator[None]:
    yield
    while _open_managers:
        manager, engine = _open_managers.pop()
        await manager.close()
        await engine.dispose()


# ---- joining one start ---------------------------------------------------------------------


async def test_concurrent_requests_join_one_start(gated: Harness) -> None:
    server = await gated.profile("cold")
    waiters = [asyncio.create_task(gated.manager.acquire(server)) for _ in range(20)]
    process = await gated.spawner.next_launch()
    assert server.state == "starting"
    assert not any(w.done() for w in waiters)

    process.become_ready()
    leases = await asyncio.gather(*waiters)

    assert len(gated.spawner.launched) == 1
    assert server.inflight == 20
    assert {lease.port for lease in leases} == {process.spec.port}
    for lease in leases:
        lease.release()
    assert server.inflight == 0


async def test_a_cancelled_waiter_is_not_granted(gated: Harness) -> None:
    server = await gated.profile("slow")
    cancelled = asyncio.create_task(gated.manager.acquire(server))
    process = await gated.spawner.next_launch()
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert server.state == "starting"  # the start goes on for the others

    other = asyncio.create_task(gated.manager.acquire(server))
    process.become_ready()
    lease = await other
    assert server.inflight == 1  # only the waiter still there was granted
    lease.release()
    assert len(gated.spawner.launched) == 1


async def test_an_explicit_start_joins_the_start_a_request_began(gated: Harness) -> None:
    server = await gated.profile("shared")
    request = asyncio.create_task(gated.manager.acquire(server))
    process = await gated.spawner.next_launch()
    explicit = asyncio.create_task(gated.manager.start(server))
    process.become_ready()
    await explicit
    (await request).release()
    assert len(gated.spawner.launched) == 1


# ---- a start that fails --------------------------------------------------------------------


async def test_a_failed_start_fails_every_waiter_with_its_error(gated: Harness) -> None:
    server = await gated.profile("broken")
    waiters = [asyncio.create_task(gated.manager.acquire(server)) for _ in range(5)]
    process = await gated.spawner.next_launch()
    process.exit(3)

    results = await asyncio.gather(*waiters, return_exceptions=True)

    assert all(isinstance(r, StartFailed) for r in results), results
    for result in results:
        assert isinstance(result, StartFailed)
        assert "exited with code 3" in result.message
        assert "fake: could not load broken" in result.message
    assert server.state == "failed"
    assert server.inflight == 0
    assert len(gated.spawner.launched) == 1
    assert gated.manager.events.start_failures == 1


async def test_during_the_back_off_requests_get_the_failure_without_a_launch(
    gated: Harness,
) -> None:
    server = await gated.profile("broken")
    first = asyncio.create_task(gated.manager.acquire(server))
    (await gated.spawner.next_launch()).exit(3)
    with pytest.raises(StartFailed):
        await first

    with pytest.raises(StartFailed) as raised:
        await gated.manager.acquire(server)  # the default back-off (30 s) has not passed
    assert "tried again in" in raised.value.message
    assert raised.value.status_code == 424
    assert len(gated.spawner.launched) == 1

    forced = asyncio.create_task(gated.manager.start(server))  # an explicit start relaunches
    (await gated.spawner.next_launch()).become_ready()
    await forced
    assert server.state == "ready"
    assert server.failed_at is None
    (await gated.manager.acquire(server)).release()
    assert len(gated.spawner.launched) == 2


# ---- eviction ------------------------------------------------------------------------------


async def test_eviction_stops_the_least_recently_used_idle_server_only(harness: Harness) -> None:
    manager = harness.manager
    # Four 1 GB servers fill the 4 GB cap: an idle older one, an idle newer one, a busy one
    # (older than both) and a pinned idle one (oldest of all).
    pinned = await harness.profile("a-pinned", memory_gb=1, pinned=True)
    busy = await harness.profile("b-busy", memory_gb=1)
    old = await harness.profile("c-old", memory_gb=1)
    new = await harness.profile("d-new", memory_gb=1)
    (await manager.acquire(pinned)).release()
    held = await manager.acquire(busy)
    (await manager.acquire(old)).release()
    (await manager.acquire(new)).release()
    target = await harness.profile("e-target", memory_gb=1)

    lease = await manager.acquire(target)

    assert [p.spec.argv[-1] for p in harness.spawner.stopped] == ["c-old"]
    assert old.state == "stopped"
    assert (pinned.state, busy.state, new.state, target.state) == ("ready",) * 4
    assert manager.events.evictions == 1
    lease.release()
    held.release()


async def test_only_busy_and_pinned_servers_in_the_way_means_a_queue_timeout(
    tmp_path: Path,
) -> None:
    harness = await _open(tmp_path, FakeSpawner(), max_memory_gb=2, queue_timeout=0.2)
    manager = harness.manager
    pinned = await harness.profile("pinned", memory_gb=1, pinned=True)
    busy = await harness.profile("busy", memory_gb=1)
    (await manager.acquire(pinned)).release()
    held = await manager.acquire(busy)
    target = await harness.profile("target", memory_gb=1)

    with pytest.raises(QueueTimeout) as raised:
        await manager.acquire(target)

    assert "busy" in raised.value.message
    assert "Retry-After" in raised.value.headers
    assert harness.spawner.stopped == []
    assert target.state == "stopped"
    held.release()


# ---- stops ---------------------------------------------------------------------------------


async def test_a_stop_under_way_is_joined_not_doubled(harness: Harness) -> None:
    manager = harness.manager
    server = await harness.profile("stopper")
    (await manager.acquire(server)).release()
    harness.spawner.stop_gate.clear()

    first = asyncio.create_task(manager.stop(server, reason="one"))
    second = asyncio.create_task(manager.stop(server, reason="two"))
    request = asyncio.create_task(manager.acquire(server))
    await asyncio.wait_for(_until(lambda: len(harness.spawner.stopped) == 1), 30)
    assert server.state == "stopping"
    harness.spawner.stop_gate.set()
    await asyncio.gather(first, second)

    lease = await request  # the request joined the stop, then started the server again
    assert harness.spawner.launched[0].stops == 1
    assert manager.events.stops == 1
    assert len(harness.spawner.launched) == 2
    lease.release()


async def _until(predicate: object) -> None:
    """Yield to the loop until `predicate()` holds (no sleep: the fakes act on the next turn)."""
    assert callable(predicate)
    while not predicate():
        await asyncio.sleep(0)
