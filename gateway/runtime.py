"""The gateway's runtime parts, built from settings and owned by the app's lifespan.

Nothing here runs at import: `Gateway.open()` connects and migrates, `close()` undoes it, so each
test gets its own database and settings.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from functools import partial

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.requests import HTTPConnection

from gateway import store
from gateway.auth import Authenticator
from gateway.db import create_engine, migrate, session_factory
from gateway.fleet.local import machine_status
from gateway.fleet.placement import LOCAL_NODE
from gateway.fleet.registry import FleetRegistry
from gateway.limiter import Limiter
from gateway.metrics import Metrics
from gateway.revocation import RevocationListener
from gateway.serving.manager import ManagedServer, ServerManager
from gateway.settings import Settings
from gateway.throttle import AttemptLimit, LoginThrottle
from gateway.usage import UsageRecorder
from gateway.usage_spool import UsageSpool

log = logging.getLogger("mlx_manager")


@dataclass
class Gateway:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    authenticator: Authenticator
    login_throttle: LoginThrottle
    register_throttle: AttemptLimit
    servers: ServerManager
    http: aiohttp.ClientSession
    usage: UsageRecorder
    metrics: Metrics
    limiter: Limiter
    # The nodes (`mlx-manager node`) this gateway routes to; empty unless nodes are enabled.
    fleet: FleetRegistry
    jwt_secret: str = field(repr=False)
    # Set as soon as shutdown begins, so endless responses (event streams) can end first.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # PostgreSQL only: hears other replicas' revocations (gateway/revocation.py).
    revocations: RevocationListener | None = None

    def state_of(self, server: ManagedServer) -> str:
        """A profile's state wherever it may run: the best of its nodes' (ready, then
        starting) and, when it may run on this machine, else this machine's own (`failed`
        included); a profile only on nodes that none runs is `stopped`."""
        if server.profile.nodes is None:
            return server.state
        states = {report.get("state") for _, report in self.fleet.servers_of(server.name)}
        here = self.servers.runs_here(server.profile)
        if here:
            states.add(server.state)
        best = next((s for s in ("ready", "starting") if s in states), None)
        return best or (server.state if here else "stopped")

    @classmethod
    async def open(cls, settings: Settings) -> Gateway:
        settings.prepare_home()
        secret = settings.resolved_jwt_secret()
        engine = create_engine(settings.sqlalchemy_url)
        await migrate(engine)
        sessions = session_factory(engine)
        async with sessions() as session:
            if not await store.replicas.record_secret(session, secret):
                log.warning(
                    "this gateway's JWT secret differs from the one the gateway that last "
                    "started on this database signs with: sign-ins made there (or before a "
                    "rotation) are refused here. Replicas must share MLX_MANAGER_JWT_SECRET"
                )
        servers = ServerManager(settings, sessions)
        await servers.open()
        usage = UsageRecorder(
            sessions,
            UsageSpool(settings.home, settings.usage_spool_max_bytes),
            flush_seconds=settings.usage_flush_interval,
            retry_max=settings.usage_retry_max,
            batch_timeout=settings.usage_flush_timeout,
        )
        usage.start()
        metrics = Metrics()
        metrics.watch_servers(servers)
        limiter = await Limiter.open(sessions, shared=engine.dialect.name == "postgresql")
        authenticator = Authenticator(
            sessions,
            secret,
            settings.auth_cache_backstop_ttl,
            listened_ttl=settings.auth_cache_ttl,
            stale_max_age=settings.auth_stale_max_age,
            lookup_timeout=settings.auth_db_timeout,
        )
        fleet = FleetRegistry(
            sessions,
            timeout=settings.node_timeout,
            refresh_interval=settings.heartbeat_interval,
            strategy=settings.placement,
            # The gateway's own machine, the node `local`: its status straight from the manager.
            local=(
                partial(machine_status, servers, LOCAL_NODE, None) if settings.local_node else None
            ),
        )
        metrics.watch_fleet(fleet)
        metrics.watch_usage_spool(usage.spool)
        # A gateway with nodes enabled re-reads the nodes table; a node (it has a gateway URL)
        # and a single machine (no token) have no nodes of their own to read.
        if settings.nodes_enabled and settings.gateway_url is None:
            fleet.start()
        revocations = None
        if engine.dialect.name == "postgresql":
            revocations = RevocationListener(
                store.replicas.listener_connect_args(engine),
                authenticator,
                profiles_changed=servers.profile_changed_elsewhere,
                ping_interval=settings.revocation_ping_interval,
                ping_timeout=settings.ready_timeout,
                reconnect_max=settings.revocation_reconnect_max,
            )
            revocations.start()
        return cls(
            settings=settings,
            engine=engine,
            sessions=sessions,
            authenticator=authenticator,
            login_throttle=LoginThrottle(
                settings.login_max_failures,
                settings.login_max_failures_per_address,
                settings.login_window_seconds,
            ),
            register_throttle=AttemptLimit(
                settings.register_max_per_address,
                settings.register_window_seconds,
                "registrations",
            ),
            servers=servers,
            http=upstream_session(),
            usage=usage,
            metrics=metrics,
            limiter=limiter,
            fleet=fleet,
            jwt_secret=secret,
            revocations=revocations,
        )

    async def close(self) -> None:
        if self.revocations is not None:
            await self.revocations.close()
        await self.fleet.close()
        await self.http.close()
        await self.servers.close()
        await self.usage.close()
        await self.limiter.close()
        await self.engine.dispose()


def upstream_session() -> aiohttp.ClientSession:
    """The proxy's client: aiohttp (about 10x httpx's throughput here, see DESIGN.md).

    No total timeout (generations can be long; the client's disconnect ends them), bytes
    passed through undecoded, and no environment proxies for loopback servers.
    """
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        auto_decompress=False,
        trust_env=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
    )


def gateway_of(conn: HTTPConnection) -> Gateway:
    gateway: Gateway = conn.app.state.gateway
    return gateway
