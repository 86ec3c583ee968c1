"""Nodes (issue 12, part 3): model servers on other machines, with real parts.

The gateway runs in-process; each node is a real `python -m gateway node` process on its own
loopback address (127.0.0.2 and .3 on Linux; 127.0.0.1 elsewhere) with its own HOME and
SQLite, whose profiles run the stub OpenAI server. Which node served a request is read from
the stub's events (its pid) and the process tree (the stub's parent is the node, or this test
process for the gateway's own machine, `local`). Faults are real signals: SIGKILL (a dead
node: connection refused) and SIGSTOP (a hung node: silence). The placement rules are tested
synchronously.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway import store
from gateway.db import create_engine, migrate, session_factory
from gateway.fleet.placement import LOCAL_NODE, NodeView, ServerReport, awaiting, place, runs_here
from gateway.fleet.registry import FleetRegistry
from gateway.settings import SettingsError, load_settings
from gateway.tables import Node
from gateway.types import utcnow
from tests.conftest import TEST_SECRET
from tests.support import secrets
from tests.support.backend import require_backend, tiny_model, without_end_tokens
from tests.support.env import (
    Env,
    bearer,
    chat_body,
    gateway_env,
    port_base,
    process_gone,
    read_events,
    sse_data,
    stream_contents,
    stub_command,
)
from tests.support.gateway_process import GatewayProcess, loopback_address, serve_environment
from tests.support.postgres import PostgresServer
from tests.support.waiting import wait_until

NODE_TOKEN = "node-token-for-the-tests-" + "n" * 24
OWN_TOKENS = {name: f"own-token-of-node-{name}-" + name * 24 for name in ("a", "b")}
SECRET = "node-test-jwt-secret-" + "j" * 40
GIB = 1024**3
# Different caps, so binpack (the fullest node that fits) and spread pick different nodes.
NODE_MEMORY_GB = {"a": "4", "b": "8"}
# Each node on its own loopback address where the system has them (Linux), as on a network.
NODE_ADDRESSES = {"a": loopback_address(2), "b": loopback_address(3)}
# Set in the nodes' environment only, so a profile's command can tell where it runs.
ON_NODE = "TEST_ON_NODE"


# ---- placement, pure --------------------------------------------------------------------------


def node(name: str, free: int = 10 * GIB, up: bool = True, *servers: ServerReport) -> NodeView:
    """A node that knows profile "m" (stopped unless `servers` say otherwise)."""
    if not any(s.profile == "m" for s in servers):
        servers = (*servers, ServerReport("m", "stopped"))
    return NodeView(name=name, up=up, cap_bytes=64 * GIB, free_bytes=free, servers=servers)


def test_a_node_where_the_profile_is_ready_wins_with_the_fewest_in_flight() -> None:
    nodes = [
        node("a", 50 * GIB, True, ServerReport("m", "ready", in_flight=3)),
        node("b", 1 * GIB, True, ServerReport("m", "ready", in_flight=1, queued=1)),
        node("c", 60 * GIB),
    ]
    assert place(nodes, "m", ["*"], GIB) == "b"
    busier = [nodes[0], node("b", GIB, True, ServerReport("m", "ready", in_flight=4)), nodes[2]]
    assert place(busier, "m", ["*"], GIB) == "a"


def test_a_start_under_way_is_joined_before_loading_it_elsewhere() -> None:
    nodes = [node("a", 50 * GIB), node("b", 5 * GIB, True, ServerReport("m", "starting"))]
    assert place(nodes, "m", ["a", "b"], GIB) == "b"


def test_binpack_takes_the_fullest_node_that_fits_and_spread_the_emptiest() -> None:
    nodes = [node("a", 50 * GIB), node("b", 3 * GIB), node("c", 1 * GIB)]
    assert place(nodes, "m", ["*"], 2 * GIB, "binpack") == "b"
    assert place(nodes, "m", ["*"], 2 * GIB, "spread") == "a"
    assert place(nodes, "m", ["*"], 60 * GIB, "binpack") == "a"  # none fits: the most room


def test_idle_servers_count_as_room_only_after_free_memory() -> None:
    idle = ServerReport("other", "ready", memory_bytes=8 * GIB)
    busy = ServerReport("other", "ready", in_flight=1, memory_bytes=8 * GIB)
    pinned = ServerReport("other", "ready", memory_bytes=8 * GIB, pinned=True)
    assert place([node("a", GIB, True, idle), node("b", 2 * GIB)], "m", ["*"], 4 * GIB) == "a"
    assert place([node("a", 5 * GIB), node("b", GIB, True, idle)], "m", ["*"], 4 * GIB) == "a"
    for blocked in (busy, pinned):
        views = [node("a", GIB, True, blocked), node("b", 2 * GIB)]
        assert place(views, "m", ["*"], 4 * GIB) == "b"  # neither fits: the most room


def test_down_excluded_and_not_allowed_nodes_never_qualify() -> None:
    ready = ServerReport("m", "ready")
    nodes = [node("a", GIB, False, ready), node("b", GIB, True, ready), node("c", 9 * GIB)]
    assert place(nodes, "m", ["*"], GIB) == "b"
    assert place(nodes, "m", ["*"], GIB, exclude=frozenset({"b"})) == "c"
    assert place(nodes, "m", ["a", "c"], GIB) == "c"
    assert place(nodes, "m", ["a"], GIB) is None
    assert place([], "m", ["*"], GIB) is None


def test_the_nodes_own_estimate_of_the_need_counts_when_larger() -> None:
    small = node("a", 3 * GIB, True, ServerReport("m", "stopped", need_bytes=5 * GIB))
    big = node("b", 9 * GIB, True, ServerReport("m", "stopped", need_bytes=5 * GIB))
    assert place([small, big], "m", ["*"], 0) == "b"  # unknown here; a says it needs 5 GiB
    assert place([small, node("b", 9 * GIB)], "m", ["*"], 2 * GIB) == "b"
    assert place([node("a", 3 * GIB), node("b", 9 * GIB)], "m", ["*"], 2 * GIB) == "a"


def test_a_node_where_the_start_failed_is_the_last_resort() -> None:
    failed = ServerReport("m", "failed")
    nodes = [node("a", 3 * GIB, True, failed), node("b", 50 * GIB)]
    assert place(nodes, "m", ["*"], GIB) == "b"  # binpack would pick a, but it failed there
    assert place(nodes, "m", ["a"], GIB) == "a"  # the only one allowed: its own back-off answers


def test_only_nodes_that_reported_the_profile_are_loaded_and_others_are_awaited() -> None:
    unaware = NodeView(name="a", up=True, cap_bytes=64 * GIB, free_bytes=60 * GIB)
    aware = node("b", 2 * GIB)
    assert place([unaware, aware], "m", ["*"], GIB) == "b"
    assert place([unaware], "m", ["*"], GIB) is None
    assert awaiting([unaware], "m", ["*"])  # its next heartbeat brings the profile
    assert not awaiting([unaware], "m", ["b"])
    assert not awaiting([aware], "m", ["*"])
    assert not awaiting([NodeView(name="a", up=False)], "m", ["*"])


def test_the_local_machine_takes_profiles_that_name_it_or_any_node() -> None:
    assert runs_here(None)  # the default: only here
    assert runs_here(None, local_node=False)  # MLX_MANAGER_LOCAL_NODE concerns nodes lists
    for nodes in ([LOCAL_NODE], ["a", LOCAL_NODE], ["*"]):
        assert runs_here(nodes)
    assert not runs_here(["a", "b"])
    assert not runs_here(["*"], local_node=False)
    assert not runs_here([LOCAL_NODE], local_node=False)
    # In placement the local machine is one more view: the usual rules pick it or not.
    local = node(LOCAL_NODE, 2 * GIB)
    assert place([local, node("b", 8 * GIB)], "m", ["local", "b"], GIB) == LOCAL_NODE
    assert place([local, node("b", 8 * GIB)], "m", ["*"], GIB, "spread") == "b"
    assert place([local, node("b", 8 * GIB)], "m", ["b"], GIB) == "b"
    assert place([local, node("b")], "m", ["local", "b"], 4 * GIB) == "b"  # does not fit here


async def test_the_failure_figures_hold_at_their_edges_with_the_default_settings(
    tmp_path: Path, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """The issue's figures, on a clock the test sets: a silent node is down right after
    MLX_MANAGER_NODE_TIMEOUT (6 s by default), a refused one at once (no wait at all), and
    either is back with its next heartbeat."""
    settings = load_settings(home=tmp_path, _env_file=None)
    assert (settings.node_timeout, settings.node_stream_idle_timeout) == (6, 15)
    fleet = FleetRegistry(
        sessions,
        timeout=settings.node_timeout,
        refresh_interval=settings.heartbeat_interval,
        strategy=settings.placement,
    )
    seen = utcnow()
    fleet.heard(Node(name="a", url="http://127.0.0.2:1", last_seen=seen, status={}))
    known = fleet.get("a")
    assert known is not None
    assert fleet.is_up(known, seen + timedelta(seconds=6))
    assert not fleet.is_up(known, seen + timedelta(seconds=6, microseconds=1))

    fleet.refused("a", "ClientConnectorError: connection refused")
    assert not fleet.is_up(known, seen)  # out of rotation before any timeout
    assert [v.up for v in fleet.views()] == [False]
    fleet.heard(Node(name="a", url="http://127.0.0.2:1", last_seen=utcnow(), status={}))
    back = fleet.get("a")
    assert back is not None
    assert fleet.is_up(back)


async def test_a_node_heard_before_its_row_is_written_is_not_forgotten(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """A heartbeat is counted here before its row is committed: a re-read of the table in
    between must not drop the node; a node missing from the table (deleted on another
    replica) and silent for the node timeout is dropped."""
    fleet = FleetRegistry(sessions, timeout=6, refresh_interval=2, strategy="binpack")
    url = "http://127.0.0.2:1"
    fleet.heard(Node(name="new", url=url, last_seen=utcnow(), status={}))
    fleet.heard(Node(name="gone", url=url, last_seen=utcnow() - timedelta(seconds=7), status={}))
    await fleet.refresh()  # the table has neither row
    assert [entry["name"] for entry in fleet.to_json()] == ["new"]


# ---- settings at their edges ---------------------------------------------------------------------


def test_node_settings_at_their_edges(tmp_path: Path) -> None:
    base: dict[str, Any] = {"home": tmp_path, "_env_file": None}
    assert load_settings(**base).node_token is None  # nodes off by default
    assert load_settings(**base, node_token="k" * 32).node_token == "k" * 32
    with pytest.raises(SettingsError, match="MLX_MANAGER_NODE_TOKEN") as short:
        load_settings(**base, node_token="k" * 31)
    assert "k" * 31 not in str(short.value)  # a secret is never echoed
    own, other = "t" * 32, "u" * 32
    only_own = load_settings(**base, node_tokens=f"a={own}, b={other}")
    assert only_own.node_token_map == {"a": own, "b": other}
    assert only_own.nodes_enabled  # per-node tokens alone turn nodes on
    for wrong in ("a", f"a={'t' * 31}", f"local={own}", f"a={own},a={other}", f"a={own},b={own}"):
        with pytest.raises(SettingsError, match="MLX_MANAGER_NODE_TOKENS") as raised:
            load_settings(**base, node_tokens=wrong)
        assert "t" * 31 not in str(raised.value)
    with pytest.raises(SettingsError, match="MLX_MANAGER_NODE_TOKENS") as same:
        load_settings(**base, node_token=own, node_tokens=f"a={own}")  # its own, not shared
    assert own not in str(same.value)
    for field, good, bad in (
        ("node_timeout", 3600, 0),
        ("node_stream_idle_timeout", 3600, 0),
        ("heartbeat_interval", 60, 61),
        ("placement", "spread", "random"),
        ("gateway_url", "http://gw:8080", "gw:8080"),
        ("node_advertise_url", "https://n1.lan:8081", "n1.lan"),
        ("node_name", "mac-studio.lan", "-bad name"),
        ("node_name", "localhost", "Local"),  # "local" is the gateway's own machine
        ("local_node", False, "perhaps"),
    ):
        assert getattr(load_settings(**base, **{field: good}), field) == good
        with pytest.raises(SettingsError, match="MLX_MANAGER_" + field.upper()):
            load_settings(**base, **{field: bad})


# ---- the nodes table, on both databases ---------------------------------------------------


@pytest.mark.both_databases
async def test_heartbeats_upsert_one_row_per_node(tmp_path: Path, database_url: str | None) -> None:
    engine = create_engine(database_url or f"sqlite+aiosqlite:///{tmp_path / 'nodes.db'}")
    try:
        await migrate(engine)
        sessions = session_factory(engine)
        first, later = utcnow(), utcnow() + timedelta(seconds=2)
        async with sessions() as session:
            await store.nodes.record_heartbeat(session, "a", "http://a:1", {"in_flight": 1}, first)
            await store.nodes.record_heartbeat(session, "b", "http://b:1", {}, first)
            await store.nodes.record_heartbeat(session, "a", "http://a:2", {"in_flight": 2}, later)
        async with sessions() as session:
            rows = await store.nodes.list_nodes(session)
        assert [(r.name, r.url, r.status) for r in rows] == [
            ("a", "http://a:2", {"in_flight": 2}),
            ("b", "http://b:1", {}),
        ]
        assert rows[0].last_seen == later
        async with sessions() as session:
            assert await store.nodes.delete_node(session, "b")
            assert not await store.nodes.delete_node(session, "b")
            assert [r.name for r in await store.nodes.list_nodes(session)] == ["a"]
    finally:
        await engine.dispose()


# ---- a gateway and two real nodes ------------------------------------------------------------


@dataclass
class Fleet:
    env: Env
    nodes: dict[str, GatewayProcess]

    async def nodes_json(self) -> dict[str, dict[str, Any]]:
        response = await self.env.http.get("/api/nodes", headers=self.env.auth)
        assert response.status_code == 200, response.text
        return {entry["name"]: entry for entry in response.json()}

    async def wait_nodes(self, **states: str) -> dict[str, dict[str, Any]]:
        async def check() -> dict[str, dict[str, Any]] | None:
            listed = await self.nodes_json()
            ok = all(name in listed and listed[name]["status"] == s for name, s in states.items())
            return listed if ok else None

        return await wait_until(check, timeout=30, message=f"nodes {states}")

    def served_by(self, events: Path, request_index: int = -1) -> str:
        """The node whose stub answered the `request_index`th request (its parent process)."""
        pid = [e for e in read_events(events) if e["event"] == "request"][request_index]["pid"]
        parent = psutil.Process(pid).ppid()
        if parent == os.getpid():  # the in-process gateway launched it: its own machine
            return LOCAL_NODE
        names = [name for name, proc in self.nodes.items() if proc.pid == parent]
        assert names, f"stub {pid} belongs to no node (parent {parent})"
        return names[0]

    async def add_stub(self, name: str, nodes: list[str], *options: str, **fields: Any) -> Path:
        events = self.env.events_path(name)
        command = stub_command("--quiet", "--events", str(events), *options)
        await self.env.add_profile(name, command, nodes=nodes, **fields)
        return events

    async def wait_known(self, profile: str, *names: str) -> None:
        """Until each node's heartbeat lists `profile` (the gateway's answer brought it)."""

        async def known() -> bool:
            listed = await self.nodes_json()
            return all(profile in {s["profile"] for s in listed[name]["servers"]} for name in names)

        await wait_until(known, message=f"{profile} known to {names}")


def heartbeat_body(
    name: str,
    url: str = "http://127.0.0.1:1",
    *,
    free: int = 1,
    used: int = 0,
    servers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A heartbeat as a node sends it (`POST /api/nodes/heartbeat`), for tests that speak for
    a node themselves."""
    memory = {"cap_bytes": used + free, "used_bytes": used, "free_bytes": free}
    return {"name": name, "url": url, "memory": memory, "servers": servers or []}


def stub_pids(*events: Path) -> set[int]:
    return {e["pid"] for path in events for e in read_events(path) if e["event"] == "started"}


@contextlib.asynccontextmanager
async def fleet(
    tmp_path: Path,
    node_settings: dict[str, str] | None = None,
    *,
    own_tokens: bool = False,
    **gateway_settings: Any,
) -> AsyncIterator[Fleet]:
    """A gateway (in-process) and nodes a and b; with `own_tokens`, each node uses its own
    token (OWN_TOKENS, the gateway's MLX_MANAGER_NODE_TOKENS) and the shared one stays set."""
    settings: dict[str, Any] = {
        "node_token": NODE_TOKEN,
        "node_timeout": 3,
        "heartbeat_interval": 0.2,
        **gateway_settings,
    }
    if own_tokens:
        settings["node_tokens"] = ",".join(f"{n}={t}" for n, t in OWN_TOKENS.items())
    processes: dict[str, GatewayProcess] = {}
    for token in (NODE_TOKEN, *OWN_TOKENS.values()):  # the secret scan checks every log
        secrets.SEEN.add(token)
    async with gateway_env(tmp_path, **settings) as env:
        try:
            for name in ("a", "b"):
                home = tmp_path / f"node-{name}"
                home.mkdir()
                environment = serve_environment(
                    home,
                    SECRET,
                    node_token=OWN_TOKENS[name] if own_tokens else NODE_TOKEN,
                    gateway_url=env.url,
                    node_name=name,
                    heartbeat_interval="0.2",
                    default_port_start=str(port_base()),
                    stop_timeout="5",
                    max_memory_gb=NODE_MEMORY_GB[name],
                    **(node_settings or {}),
                )
                environment[ON_NODE] = name  # not MLX_MANAGER_*: model servers see it
                processes[name] = GatewayProcess(
                    environment,
                    tmp_path / f"node-{name}.log",
                    command="node",
                    host=NODE_ADDRESSES[name],
                )
            for process in processes.values():
                await process.wait_healthy()
            yield Fleet(env, processes)
        finally:
            for process in processes.values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGCONT)
                process.terminate()
            stubs = stub_pids(*tmp_path.glob("events-*.jsonl"))
            for pid in stubs:  # what a SIGKILLed node left behind
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


async def test_heartbeats_register_nodes_and_a_pinned_profile_is_served_by_its_node(
    tmp_path: Path,
) -> None:
    async with fleet(tmp_path) as f:
        listed = await f.wait_nodes(a="up", b="up")
        for name in ("a", "b"):
            assert listed[name]["url"] == f.nodes[name].url
            memory = listed[name]["memory"]
            assert memory["cap_bytes"] > 0
            assert memory["free_bytes"] == memory["cap_bytes"] - memory["used_bytes"]
            assert listed[name]["last_seen"]
        events = await f.add_stub("pinned", ["b"])

        response = await f.env.chat("pinned", "hello b")
        assert response.status_code == 200, response.text
        assert response.json()["model"] == "pinned"
        assert f.served_by(events) == "b"
        # The node got the node token, never the client's credentials.
        request = [e for e in read_events(events) if e["event"] == "request"][-1]
        assert request["authorization"] is None

        async with f.env.stream("pinned") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            body = await stream.aread()
        payloads = sse_data(body)
        assert payloads[-1] == "[DONE]"
        assert len(stream_contents(payloads)) == 8  # the stub's chunks, passed through
        assert f.served_by(events) == "b"

        async def on_b() -> list[dict[str, Any]] | None:
            entries = [s for s in await f.env.servers() if s["name"] == "pinned"]
            return (
                entries if [(s["node"], s["state"]) for s in entries] == [("b", "ready")] else None
            )

        await wait_until(on_b, message="/api/servers shows pinned on b")
        model = await f.env.http.get("/v1/models/pinned", headers=f.env.auth)
        assert model.json()["state"] == "ready"  # from b's heartbeat
        # auto_start on a node: started there as soon as the node is given the profile.
        await f.add_stub("eager", ["a"], auto_start=True)

        async def eager_on_a() -> bool:
            servers = {(s["name"], s["node"], s["state"]) for s in await f.env.servers()}
            return ("eager", "a", "ready") in servers

        await wait_until(eager_on_a, message="eager started on a without a request")
        local = await f.env.add_profile("here", stub_command("--quiet"))
        assert local["nodes"] is None
        servers = {s["name"]: s for s in await f.env.servers()}
        assert servers["here"]["node"] == "local"
        # Usage stays on the gateway, as for local servers.
        row = await f.env.usage_row(response.headers["x-request-id"])
        assert (row.model, row.status) == ("pinned", 200)


async def test_placement_then_readiness_then_failover_when_a_node_dies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with fleet(tmp_path) as f:
        await f.wait_nodes(a="up", b="up")
        events = await f.add_stub("shared", ["a", "b"], memory_gb=1)
        await f.wait_known("shared", "a", "b")

        first = await f.env.chat("shared")
        assert first.status_code == 200, first.text
        placed = f.served_by(events)
        assert placed == "a"  # binpack: the fullest node that fits (a has 4 GB, b 8)
        second = await f.env.chat("shared")
        assert second.status_code == 200
        assert f.served_by(events) == placed  # where it is ready, not loaded twice
        assert len(stub_pids(events)) == 1

        f.nodes[placed].kill()  # SIGKILL: its port now refuses connections
        third = await f.env.chat("shared")
        assert third.status_code == 200, third.text  # retried on b before any byte was sent
        assert f.served_by(events) == "b"
        assert "node a is out of rotation" in caplog.text  # a was tried first
        assert "ClientConnectorError" in caplog.text  # refused
        listed = await f.wait_nodes(a="down", b="up")
        assert listed["a"]["status"] == "down"
        fourth = await f.env.chat("shared")
        assert fourth.status_code == 200
        assert f.served_by(events) == "b"


async def test_spread_places_on_the_emptiest_node(tmp_path: Path) -> None:
    async with fleet(tmp_path, placement="spread", local_node=False) as f:
        await f.wait_nodes(a="up", b="up")
        events = await f.add_stub("wide", ["*"], "--startup-delay", "0.5", memory_gb=1)
        await f.wait_known("wide", "a", "b")
        # Eight first requests at once: one node, one launch, every request served.
        answers = await asyncio.gather(*(f.env.chat("wide") for _ in range(8)))
        assert [a.status_code for a in answers] == [200] * 8
        assert len(stub_pids(events)) == 1
        assert {f.served_by(events, i) for i in range(8)} == {"b"}  # spread: the emptiest


def only_on_nodes(*options: str) -> list[str]:
    """A stub command that fails to start on the gateway's own machine (exit 3): it runs only
    where ON_NODE is set, in a node's environment."""
    script = f'test -n "${ON_NODE}" || {{ echo "not a node" >&2; exit 3; }}; exec "$@"'
    return ["sh", "-c", script, "sh", *stub_command(*options)]


async def test_the_gateways_own_machine_is_the_node_local(tmp_path: Path) -> None:
    """`local` is placed by the same rules as any node, from the manager's live state."""
    async with fleet(tmp_path, max_memory_gb=2) as f:
        await f.wait_nodes(a="up", b="up")
        listed = await f.nodes_json()
        here = listed[LOCAL_NODE]
        assert (here["local"], here["status"], here["url"]) == (True, "up", None)
        assert here["memory"]["cap_bytes"] == 2 * GIB
        assert not listed["a"]["local"]

        hot = await f.add_stub("hot", [LOCAL_NODE, "b"], memory_gb=1)
        await f.wait_known("hot", "b")
        assert (await f.env.chat("hot")).status_code == 200
        assert f.served_by(hot) == LOCAL_NODE  # binpack: this machine (2 GB) is the fuller
        # 1 GB is left here (hot is idle, but free memory is tried before eviction): b.
        cold = await f.add_stub("cold", [LOCAL_NODE, "b"], memory_gb=1.5)
        await f.wait_known("cold", "b")
        assert (await f.env.chat("cold")).status_code == 200
        assert f.served_by(cold) == "b"
        assert (await f.env.chat("hot")).status_code == 200
        assert f.served_by(hot) == LOCAL_NODE  # ready here: not loaded again elsewhere
        assert len(stub_pids(hot)) == 1

        async def cold_ready_on_b() -> dict[tuple[str, str], dict[str, Any]] | None:
            servers = {(s["name"], s["node"]): s for s in await f.env.servers()}
            there = servers.get(("cold", "b"))
            return servers if there is not None and there["state"] == "ready" else None

        servers = await wait_until(cold_ready_on_b, message="cold ready on b")
        mine = servers[("hot", LOCAL_NODE)]
        assert mine["state"] == "ready"
        assert mine["pid"] in stub_pids(hot)
        assert mine["cpu_percent"] is not None
        assert servers[("cold", LOCAL_NODE)]["state"] == "stopped"  # may run here; never did
        there = servers[("cold", "b")]
        for field in ("pid", "port", "started_at", "cpu_percent", "last_error"):
            assert there[field] is None, field  # this machine's figures are not b's
        assert there["need_bytes"] == int(1.5 * GIB)
        models = await f.env.http.get("/v1/models", headers=f.env.auth)
        states = {m["id"]: m["state"] for m in models.json()["data"]}
        assert states["hot"] == states["cold"] == "ready"
        listed = (await f.env.http.get("/api/profiles", headers=f.env.auth)).json()
        assert {p["name"]: p["state"] for p in listed}["cold"] == "ready"  # on b, not here
        # An admin may stop this machine's server of such a profile (not a node's).
        stopped = await f.env.control("hot", "stop")
        assert stopped.status_code == 200, stopped.text
        assert (stopped.json()["state"], stopped.json()["node"]) == ("stopped", LOCAL_NODE)
        await f.add_stub("b-only", ["b"])
        refused = await f.env.control("b-only", "stop")
        assert (refused.status_code, refused.json()["code"]) == (409, "runs_on_nodes")


async def test_changing_where_a_profile_runs_keeps_or_stops_its_server_here(
    tmp_path: Path,
) -> None:
    """`nodes` is no launch field: adding a node keeps this machine's server as it is; taking
    this machine out stops it, and a request waiting for it here goes to a node instead of
    starting it again on a machine the profile left."""
    async with fleet(tmp_path, max_memory_gb=2) as f:
        await f.wait_nodes(a="up", b="up")
        events = await f.add_stub("roaming", [LOCAL_NODE, "b"], memory_gb=1)
        await f.wait_known("roaming", "b")
        assert (await f.env.chat("roaming")).status_code == 200
        here = f.env.managed("roaming")
        assert f.served_by(events) == LOCAL_NODE
        pid = here.process.pid if here.process else None

        async def move(nodes: list[str]) -> None:
            path = f"/api/profiles/{f.env.profile_id('roaming')}"
            moved = await f.env.http.patch(path, json={"nodes": nodes}, headers=f.env.auth)
            assert moved.status_code == 200, moved.text

        await move([LOCAL_NODE, "b", "a"])
        assert f.env.managed("roaming").state == "ready"
        assert here.process is not None
        assert here.process.pid == pid  # not restarted
        assert (await f.env.chat("roaming")).status_code == 200
        assert f.served_by(events) == LOCAL_NODE

        await move(["b"])
        assert f.env.managed("roaming").state == "stopped"
        assert (await f.env.chat("roaming")).status_code == 200
        assert f.served_by(events) == "b"

        # Only here (slow to load), then away while a request waits for that start: the
        # request is answered by b, and nothing is started here again.
        slow = stub_command("--quiet", "--events", str(events), "--startup-delay", "2")
        path = f"/api/profiles/{f.env.profile_id('roaming')}"
        changed = await f.env.http.patch(
            path, json={"command": slow, "nodes": [LOCAL_NODE]}, headers=f.env.auth
        )
        assert changed.status_code == 200, changed.text
        waiting = asyncio.ensure_future(f.env.chat("roaming"))
        await wait_until(
            lambda: f.env.managed("roaming").state == "starting", message="starting here"
        )
        await move(["b"])
        answer = await waiting
        assert answer.status_code == 200, answer.text
        assert f.served_by(events) == "b"
        assert f.env.managed("roaming").state == "stopped"

        async def only_on_b() -> bool:
            entries = await f.env.servers()
            return [s["node"] for s in entries if s["name"] == "roaming"] == ["b"]

        await wait_until(only_on_b, message="roaming listed on b only")


async def test_a_node_that_was_not_given_the_profile_yet_is_waited_for_not_relayed(
    tmp_path: Path,
) -> None:
    """A node's report can be older than the profile's move: its 404 "not assigned" is not
    the client's answer; the gateway waits for the heartbeat that brings the profile."""
    async with fleet(tmp_path, queue_timeout=1) as f:
        await f.wait_nodes(a="up", b="up")
        await f.add_stub("elsewhere", ["c"])
        # "c" claims the profile ready, at b's address; b was never given it.
        ready = {"profile": "elsewhere", "state": "ready", "memory_bytes": GIB}
        beat = heartbeat_body("c", f.nodes["b"].url, free=7 * GIB, used=GIB, servers=[ready])
        sent = await f.env.http.post("/api/nodes/heartbeat", json=beat, headers=bearer(NODE_TOKEN))
        assert sent.status_code == 200, sent.text
        answer = await f.env.chat("elsewhere")
        assert answer.status_code == 503, answer.text  # c never reported it again
        assert answer.json()["error"]["code"] == "no_node_available"
        assert "not assigned" not in answer.text
        listed = await f.nodes_json()
        assert "elsewhere" not in {s["profile"] for s in listed["c"]["servers"]}  # forgotten


async def test_a_profile_that_will_not_start_here_goes_to_a_node(tmp_path: Path) -> None:
    async with fleet(tmp_path, max_memory_gb=2) as f:
        await f.wait_nodes(a="up", b="up")
        events = f.env.events_path("picky")
        command = only_on_nodes("--quiet", "--events", str(events))
        await f.env.add_profile("picky", command, nodes=[LOCAL_NODE, "b"], memory_gb=1)
        await f.wait_known("picky", "b")
        first = await f.env.chat("picky")  # placed here (binpack), failed, then b
        assert first.status_code == 200, first.text
        assert f.served_by(events) == "b"
        assert f.env.managed("picky").state == "failed"
        assert (await f.env.chat("picky")).status_code == 200  # ready on b: straight there
        assert len(stub_pids(events)) == 1

        # With nowhere else to go, the local failure is the answer, in its own words.
        await f.env.add_profile("here-only", only_on_nodes(), nodes=[LOCAL_NODE])
        failed = await f.env.chat("here-only")
        assert failed.status_code == 424, failed.text
        assert "not a node" in failed.json()["error"]["message"]


async def test_the_local_entry_counts_requests_waiting_here(tmp_path: Path) -> None:
    """/api/nodes (and the node metrics) show this machine's queue like a node's: requests
    waiting for a start count as queued until a server takes them."""
    async with gateway_env(tmp_path) as env:
        await env.add_stub("slow", "--startup-delay", "1.5")
        asked = [asyncio.ensure_future(env.chat("slow")) for _ in range(3)]

        async def queued_here() -> dict[str, Any] | None:
            listed = (await env.http.get("/api/nodes", headers=env.auth)).json()
            here = {s["profile"]: s for s in listed[0]["servers"]}["slow"]
            return here if (here["state"], here["queued"]) == ("starting", 3) else None

        await wait_until(queued_here, message="three requests queued on local")
        assert [(await a).status_code for a in asked] == [200] * 3
        listed = (await env.http.get("/api/nodes", headers=env.auth)).json()
        assert (listed[0]["in_flight"], listed[0]["queued"]) == (0, 0)


async def test_a_gateway_that_is_no_node_keeps_such_profiles_off_its_machine(
    tmp_path: Path,
) -> None:
    async with gateway_env(tmp_path, local_node=False) as env:
        assert (await env.http.get("/api/nodes", headers=env.auth)).json() == []
        await env.add_profile("anywhere", stub_command(), nodes=["*"])
        await env.add_profile("here", stub_command(), nodes=[LOCAL_NODE])
        for model in ("anywhere", "here"):
            refused = await env.chat(model)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "no_node_available"
        assert "MLX_MANAGER_LOCAL_NODE is off" in refused.json()["error"]["message"]
        assert env.managed("anywhere").state == "stopped"
        await env.add_profile("plain", stub_command())  # nodes: null still runs here
        assert (await env.chat("plain")).status_code == 200


async def test_a_dead_node_with_no_alternative_is_a_502_then_a_503(tmp_path: Path) -> None:
    async with fleet(tmp_path) as f:
        await f.wait_nodes(a="up", b="up")
        await f.add_stub("only-b", ["b"])
        assert (await f.env.chat("only-b")).status_code == 200
        f.nodes["b"].kill()
        failed = await f.env.chat("only-b")
        assert failed.status_code == 502, failed.text
        error = failed.json()["error"]
        assert error["code"] == "upstream_error"
        assert "node(s) b" in error["message"]
        assert f.nodes["b"].url.split("//")[1] not in error["message"]  # no internal address
        again = await f.env.chat("only-b")  # b is out of rotation now
        assert again.status_code == 503
        assert again.json()["error"]["code"] == "no_node_available"


async def test_a_hung_node_ends_open_streams_with_an_sse_error_and_goes_down(
    tmp_path: Path,
) -> None:
    async with fleet(tmp_path, node_stream_idle_timeout=1.5) as f:
        await f.wait_nodes(a="up", b="up")
        await f.add_stub("slow", ["a"], "--chunks", "400", "--chunk-delay", "0.05")
        node_a = f.nodes["a"]
        received = b""
        async with f.env.stream("slow") as stream:
            assert stream.status_code == 200
            stopped = False
            async for chunk in stream.aiter_bytes():  # ends: the gateway closes the stream
                received += chunk
                if b"data:" in received and not stopped:
                    os.kill(node_a.pid, signal.SIGSTOP)  # hangs: no byte, no heartbeat
                    stopped = True
        payloads = sse_data(received)
        assert "[DONE]" not in payloads
        error = json.loads(payloads[-1])["error"]
        assert error["code"] == "node_stream_failed"
        assert error["type"] == "server_error"
        assert "MLX_MANAGER_NODE_STREAM_IDLE_TIMEOUT" in error["message"]
        await f.wait_nodes(a="down", b="up")  # no heartbeat for NODE_TIMEOUT
        other = await f.env.chat("slow")
        assert other.status_code == 503  # pinned to a, which is down
        assert other.json()["error"]["code"] == "no_node_available"
        assert other.headers["retry-after"] == "3"

        os.kill(node_a.pid, signal.SIGCONT)  # it wakes up and reports again
        await f.wait_nodes(a="up", b="up")


async def test_a_request_waiting_on_a_hung_node_goes_to_another_node(tmp_path: Path) -> None:
    async with fleet(tmp_path) as f:
        await f.wait_nodes(a="up", b="up")
        events = await f.add_stub("both", ["a", "b"], memory_gb=1)
        await f.wait_known("both", "a", "b")
        # The stub answers "__slow__" after 5 s: a hangs before it answers.
        pending = asyncio.ensure_future(f.env.chat("both", "__slow__"))
        await wait_until(
            lambda: [e for e in read_events(events) if e["event"] == "request"],
            message="the slow request reached a stub",
        )
        assert f.served_by(events, 0) == "a"  # binpack: a has the smaller cap
        os.kill(f.nodes["a"].pid, signal.SIGSTOP)
        response = await pending
        assert response.status_code == 200, response.text  # b answered; no error
        assert f.served_by(events) == "b"
        listed = await f.nodes_json()
        assert listed["a"]["status"] == "down"


async def test_a_node_that_rejoins_stops_a_profile_taken_from_it(
    tmp_path: Path,
) -> None:
    async with fleet(tmp_path) as f:
        await f.wait_nodes(a="up", b="up")
        events = await f.add_stub("moving", ["a"])
        assert (await f.env.chat("moving")).status_code == 200
        (pid,) = stub_pids(events)
        status_url = f"{f.nodes['a'].url}/node/status"
        async with httpx.AsyncClient(trust_env=False, headers=bearer(NODE_TOKEN)) as node_http:
            before = (await node_http.get(status_url)).json()
            assert [s["profile"] for s in before["servers"]] == ["moving"]

            # Cut a off (no heartbeats) while the profile moves: it keeps serving what it has.
            os.kill(f.nodes["a"].pid, signal.SIGSTOP)
            await f.wait_nodes(a="down")
            profile_id = f.env.profile_id("moving")
            patched = await f.env.http.patch(
                f"/api/profiles/{profile_id}", json={"nodes": ["b"]}, headers=f.env.auth
            )
            assert patched.status_code == 200, patched.text
            assert patched.json()["nodes"] == ["b"]
            assert not process_gone(pid)
            os.kill(f.nodes["a"].pid, signal.SIGCONT)  # it rejoins: its next heartbeat...
            await wait_until(lambda: process_gone(pid), timeout=30, message="a stopped moving")

            async def dropped() -> bool:
                return (await node_http.get(status_url)).json()["servers"] == []

            await wait_until(dropped, message="a dropped moving")
        assert (await f.env.chat("moving")).status_code == 200
        assert f.served_by(events) == "b"


async def test_a_replica_on_the_same_database_sees_the_nodes_and_routes_to_them(
    tmp_path: Path,
) -> None:
    """Heartbeats reach one gateway; the other replica reads them from the nodes table."""
    async with fleet(tmp_path) as f:
        await f.wait_nodes(a="up", b="up")
        events = await f.add_stub("pinned", ["b"])
        replica_home = tmp_path / "replica"
        replica_home.mkdir()
        assert f.env.settings.database_path is not None
        environment = serve_environment(
            replica_home,
            TEST_SECRET,  # the in-process gateway's: the admin's token works on both
            database_path=str(f.env.settings.database_path),
            node_token=NODE_TOKEN,
            node_timeout="3",
            heartbeat_interval="0.2",
        )
        replica = GatewayProcess(environment, tmp_path / "replica.log")
        try:
            await replica.wait_healthy()
            async with httpx.AsyncClient(
                base_url=replica.url, trust_env=False, headers=f.env.auth, timeout=30
            ) as http:

                async def both_up() -> bool:
                    listed = (await http.get("/api/nodes")).json()
                    return sorted((n["name"], n["status"]) for n in listed) == [
                        ("a", "up"),
                        ("b", "up"),
                        (LOCAL_NODE, "up"),  # the replica's own machine
                    ]

                await wait_until(both_up, message="the replica lists both nodes up")
                response = await http.post("/v1/chat/completions", json=chat_body("pinned"))
                assert response.status_code == 200, response.text
                assert f.served_by(events) == "b"
        finally:
            replica.terminate()


async def test_nodes_stay_in_rotation_through_a_database_outage(
    tmp_path: Path, private_postgres: PostgresServer
) -> None:
    """Heartbeats count on the gateway that hears them even when they cannot be written."""
    url = private_postgres.url(await private_postgres.create_database())
    async with fleet(tmp_path, database_url=url, node_timeout=2) as f:
        await f.wait_nodes(a="up", b="up")
        events = await f.add_stub("pinned", ["b"])
        assert (await f.env.chat("pinned")).status_code == 200

        await asyncio.to_thread(private_postgres.halt)
        halted = utcnow()

        async def heard_after_the_timeout() -> dict[str, Any] | None:
            b = (await f.nodes_json())["b"]
            seen = datetime.fromisoformat(b["last_seen"])
            return b if seen > halted + timedelta(seconds=2) else None

        b = await wait_until(heard_after_the_timeout, timeout=30, message="b heard")
        assert b["status"] == "up"
        response = await f.env.chat("pinned", "during the outage")
        assert response.status_code == 200, response.text
        assert f.served_by(events) == "b"

        await asyncio.to_thread(private_postgres.restart)

        async def written_again() -> bool:
            async with f.env.handle.core.sessions() as session:
                rows = {r.name: r for r in await store.nodes.list_nodes(session)}
            return "b" in rows and rows["b"].last_seen > halted + timedelta(seconds=2)

        await wait_until(written_again, timeout=30, message="heartbeats written again")


async def test_the_node_token_is_checked_both_ways(tmp_path: Path) -> None:
    async with fleet(tmp_path) as f:
        await f.wait_nodes(a="up", b="up")
        beat = heartbeat_body("intruder")
        for headers in ({}, bearer("x" * 48), bearer(f.env.token)):
            response = await f.env.http.post("/api/nodes/heartbeat", json=beat, headers=headers)
            assert response.status_code == 401, response.text
        assert "intruder" not in await f.nodes_json()
        ok = await f.env.http.post("/api/nodes/heartbeat", json=beat, headers=bearer(NODE_TOKEN))
        assert (ok.status_code, ok.json()) == (200, {"profiles": []})
        assert (await f.nodes_json())["intruder"]["status"] == "up"
        forget = await f.env.http.delete("/api/nodes/intruder", headers=f.env.auth)
        assert forget.status_code == 204
        assert "intruder" not in await f.nodes_json()
        again = await f.env.http.delete("/api/nodes/intruder", headers=f.env.auth)
        assert (again.status_code, again.json()["code"]) == (404, "node_not_found")
        named_local = {**beat, "name": "Local"}  # the gateway's own machine's name
        taken = await f.env.http.post(
            "/api/nodes/heartbeat", json=named_local, headers=bearer(NODE_TOKEN)
        )
        assert taken.status_code == 422, taken.text
        assert "MLX_MANAGER_NODE_NAME" in taken.text
        kept = await f.env.http.delete("/api/nodes/local", headers=f.env.auth)
        assert (kept.status_code, kept.json()["code"]) == (409, "local_node")

        node_url = f.nodes["a"].url
        async with httpx.AsyncClient(base_url=node_url, trust_env=False) as node_http:
            for headers in ({}, bearer("x" * 48), f.env.auth):
                chat = await node_http.post(
                    "/v1/chat/completions", json=chat_body("anything"), headers=headers
                )
                assert chat.status_code == 401, chat.text
                assert chat.json()["error"]["type"] == "authentication_error"
                assert (await node_http.get("/node/status", headers=headers)).status_code == 401
            allowed = await node_http.get("/node/status", headers=bearer(NODE_TOKEN))
            assert allowed.status_code == 200
            assert allowed.json()["name"] == "a"
            unknown = await node_http.post(
                "/v1/chat/completions", json=chat_body("anything"), headers=bearer(NODE_TOKEN)
            )
            assert unknown.status_code == 404
            assert unknown.json()["error"]["code"] == "model_not_found"
        listed = await f.env.http.get("/api/nodes", headers=bearer(NODE_TOKEN))
        assert listed.status_code == 401  # the node token is no admin login


async def test_nodes_with_their_own_tokens_speak_only_for_themselves(tmp_path: Path) -> None:
    async with fleet(tmp_path, own_tokens=True) as f:
        await f.wait_nodes(a="up", b="up")  # each heartbeats with its own token
        events = await f.add_stub("on-b", ["b"])
        await f.add_stub("on-a", ["a"])
        answer = await f.env.chat("on-b")  # b refuses any token but its own
        assert answer.status_code == 200, answer.text
        assert f.served_by(events) == "b"

        def beat(name: str) -> dict[str, Any]:
            return heartbeat_body(name, f.nodes[name].url, free=GIB)

        post = f.env.http.post
        for token, name in ((OWN_TOKENS["a"], "b"), (NODE_TOKEN, "b")):
            refused = await post("/api/nodes/heartbeat", json=beat(name), headers=bearer(token))
            assert (refused.status_code, refused.json()["code"]) == (403, "wrong_node")
            assert token not in refused.text
        mine = await post("/api/nodes/heartbeat", json=beat("a"), headers=bearer(OWN_TOKENS["a"]))
        assert mine.status_code == 200, mine.text
        assert [p["name"] for p in mine.json()["profiles"]] == ["on-a"]  # never b's profiles
        # The shared token still speaks for a node without a token of its own.
        other = await post(
            "/api/nodes/heartbeat", json=beat("a") | {"name": "c"}, headers=bearer(NODE_TOKEN)
        )
        assert other.status_code == 200, other.text


async def test_without_a_node_token_nodes_are_disabled(tmp_path: Path) -> None:
    async with gateway_env(tmp_path) as env:
        beat = heartbeat_body("n")
        response = await env.http.post("/api/nodes/heartbeat", json=beat, headers=bearer("x"))
        assert response.status_code == 404
        assert response.json()["code"] == "nodes_disabled"
        assert "MLX_MANAGER_NODE_TOKEN" in response.json()["detail"]
        listed = (await env.http.get("/api/nodes", headers=env.auth)).json()
        assert [(n["name"], n["local"], n["status"]) for n in listed] == [("local", True, "up")]
        # A profile may name nodes (they can join later); until one reports, 503.
        await env.add_profile("far", stub_command(), nodes=["mac-2"])
        refused = await env.chat("far")
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "no_node_available"
        # Any node: this machine is one, with or without others.
        await env.add_profile("anywhere", stub_command(), nodes=["*"])
        assert (await env.chat("anywhere")).status_code == 200
        for nodes in (["*", "a"], ["Local", "a"]):
            bad = await env.http.post(
                "/api/profiles",
                json={"name": "x", "command": stub_command(), "nodes": nodes},
                headers=env.auth,
            )
            assert bad.status_code == 422, nodes


def test_the_node_command_needs_a_token_and_a_gateway(tmp_path: Path) -> None:
    environment = serve_environment(tmp_path / "home", SECRET)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "node", "--port", "1"],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "MLX_MANAGER_NODE_TOKEN" in result.stderr
    assert "MLX_MANAGER_GATEWAY_URL" in result.stderr


@pytest.mark.backend
async def test_the_real_model_server_on_a_node(tmp_path: Path) -> None:
    """mlx-openai-server with the tiny model, launched by a node, used with the OpenAI SDK."""
    import openai

    backend = {"backend_bin": require_backend(), "start_timeout": "180"}
    async with fleet(tmp_path, node_settings=backend, queue_timeout=180) as f:
        await f.wait_nodes(a="up", b="up")
        profile = {"name": "tiny", "model_path": str(tiny_model()), "nodes": ["b"]}
        created = await f.env.http.post("/api/profiles", json=profile, headers=f.env.auth)
        assert created.status_code == 201, created.text
        key = await f.env.new_key()
        sdk = openai.AsyncOpenAI(
            base_url=f"{f.env.url}/v1", api_key=key.secret, max_retries=0, timeout=180
        )
        try:
            answer = await sdk.chat.completions.create(
                model="tiny",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=8,
                logit_bias=without_end_tokens(),
            )
            assert answer.choices[0].message.content is not None
            assert answer.usage is not None
            assert answer.usage.completion_tokens == 8
            stream = await sdk.chat.completions.create(
                model="tiny",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=8,
                stream=True,
                logit_bias=without_end_tokens(),  # eight tokens, never fewer
            )
            chunks = [chunk async for chunk in stream]
            assert len(chunks) > 2
        finally:
            await sdk.close()

        async def ready_on_b() -> bool:
            servers = {(s["name"], s["node"], s["state"]) for s in await f.env.servers()}
            return ("tiny", "b", "ready") in servers

        await wait_until(ready_on_b, message="/api/servers: tiny ready on b")
        status = await f.nodes_json()
        assert status["a"]["servers"] == []  # never sent to a


def test_a_node_has_the_gateways_http_edge_limits(tmp_path: Path) -> None:
    """A node listens on the network too: the same head size limit as the gateway (431),
    checked before the token."""
    env = serve_environment(
        tmp_path / "node-home",
        SECRET,
        node_token=NODE_TOKEN,
        gateway_url="http://127.0.0.1:9",  # nobody: heartbeats fail, the node still serves
        max_header_bytes="4096",
    )
    node = GatewayProcess(env, tmp_path / "node.log", command="node")
    try:
        node.wait_healthy_sync()
        big = {"x-padding": "p" * 8192, "authorization": f"Bearer {NODE_TOKEN}"}
        response = httpx.get(f"{node.url}/node/status", headers=big, trust_env=False)
        assert response.status_code == 431, response.text
        small = {"authorization": f"Bearer {NODE_TOKEN}"}
        response = httpx.get(f"{node.url}/node/status", headers=small, trust_env=False)
        assert response.status_code == 200, response.text
    finally:
        node.terminate()
