"""Prometheus metrics (prometheus-client), one registry per app so tests never share state.

Request metrics are recorded where usage is accounted (after the response, off the critical
path); server, node and usage-spool state is read at scrape time from the objects that own it
(server manager, fleet registry, usage spool), so nothing is duplicated and no request pays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.fleet.registry import FleetRegistry
from gateway.serving.manager import ServerManager
from gateway.types import SERVER_STATES, utcnow
from gateway.usage_spool import UsageSpool

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNKNOWN_MODEL = "unknown"  # the one label for requests that named no known profile
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "mlx_manager_requests",
            "OpenAI API requests by model, endpoint and status.",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "mlx_manager_request_duration_seconds",
            "Time from request to last byte.",
            ["model", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttfb = Histogram(
            "mlx_manager_time_to_first_byte_seconds",
            "Time from request to the first response byte (includes any model start).",
            ["model", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "mlx_manager_prompt_tokens", "Prompt tokens by model.", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "mlx_manager_completion_tokens", "Completion tokens by model.", ["model"], registry=r
        )
        self.open_streams = Gauge(
            "mlx_manager_open_streams", "Streaming responses in progress.", registry=r
        )

    def observe_request(
        self,
        profile: str | None,
        endpoint: str,
        status: int,
        seconds: float,
        first_byte_seconds: float | None,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        """Record one /v1 request under its profile's name.

        Only profile names become labels (aliases are counted under their profile): every
        label value makes a new time series kept for the process's life, so a label taken from
        what clients send would let any client grow /metrics without bound.
        """
        model = profile or UNKNOWN_MODEL
        self.requests.labels(model, endpoint, str(status)).inc()
        self.latency.labels(model, endpoint).observe(seconds)
        if first_byte_seconds is not None:
            self.ttfb.labels(model, endpoint).observe(first_byte_seconds)
        if prompt_tokens:
            self.prompt_tokens.labels(model).inc(prompt_tokens)
        if completion_tokens:
            self.completion_tokens.labels(model).inc(completion_tokens)

    def watch_servers(self, manager: ServerManager) -> None:
        self.registry.register(ServerCollector(manager))

    def watch_fleet(self, fleet: FleetRegistry) -> None:
        self.registry.register(NodeCollector(fleet))

    def watch_usage_spool(self, spool: UsageSpool) -> None:
        self.registry.register(UsageSpoolCollector(spool))

    def add_collector(self, collect: Callable[[], Iterable[Metric]]) -> None:
        """Let other parts (downloads) expose metrics read at scrape time."""
        self.registry.register(_FunctionCollector(collect))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _FunctionCollector(Collector):
    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()


class ServerCollector(Collector):
    """Per-server state and memory, and lifecycle counters, read from the manager on scrape."""

    def __init__(self, manager: ServerManager) -> None:
        self._manager = manager

    def collect(self) -> Iterable[Metric]:
        manager = self._manager
        events = manager.events
        for name, value, help_text in (
            ("mlx_manager_server_starts", events.starts, "Model server starts that became ready."),
            ("mlx_manager_server_start_failures", events.start_failures, "Failed starts."),
            ("mlx_manager_server_stops", events.stops, "Model server stops (any reason)."),
            ("mlx_manager_server_evictions", events.evictions, "Stops to make room in memory."),
            ("mlx_manager_server_crashes", events.crashes, "Servers that exited unexpectedly."),
            ("mlx_manager_server_idle_stops", events.idle_stops, "Stops after the idle TTL."),
            ("mlx_manager_server_health_restarts", events.health_restarts, "Health restarts."),
        ):
            counter = CounterMetricFamily(name, help_text)
            counter.add_metric([], value)
            yield counter
        waiting = GaugeMetricFamily(
            "mlx_manager_requests_waiting", "Requests waiting for memory held by busy servers."
        )
        waiting.add_metric([], events.waiting)
        yield waiting
        state = GaugeMetricFamily(
            "mlx_manager_server_state",
            "1 for the state each server is in.",
            labels=["name", "state"],
        )
        memory = GaugeMetricFamily(
            "mlx_manager_server_memory_bytes",
            "Measured RSS of the server's process tree.",
            labels=["name"],
        )
        need = GaugeMetricFamily(
            "mlx_manager_server_need_bytes",
            "Memory the scheduler reserves for it.",
            labels=["name"],
        )
        inflight = GaugeMetricFamily(
            "mlx_manager_server_inflight", "Requests and streams in flight.", labels=["name"]
        )
        for server in manager.servers():
            for candidate in SERVER_STATES:
                state.add_metric(
                    [server.name, candidate], 1.0 if server.state == candidate else 0.0
                )
            memory.add_metric(
                [server.name], server.measured_bytes if server.state == "ready" else 0
            )
            need.add_metric([server.name], server.need_bytes)
            inflight.add_metric([server.name], server.inflight)
        cap = GaugeMetricFamily("mlx_manager_memory_cap_bytes", "Memory cap for all servers.")
        cap.add_metric([], manager.cap_bytes)
        yield from (state, memory, need, inflight, cap)


def _number(value: object) -> float | None:
    """A count from a node's report, or None: the list may gain entries (the local machine)
    that lack a field, and a missing gauge is honest where a made-up 0 is not."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _age_seconds(last_seen: object, now: datetime) -> float | None:
    if not isinstance(last_seen, str):
        return None
    try:
        seen = datetime.fromisoformat(last_seen)
    except ValueError:
        return None
    if seen.tzinfo is None:
        return None
    return max(0.0, (now - seen).total_seconds())


class NodeCollector(Collector):
    """Per-node health, memory and load, read from the fleet registry's `/api/nodes` view on
    scrape. Node names are registered nodes (a bounded set), so they are safe as labels."""

    def __init__(self, fleet: FleetRegistry) -> None:
        self._fleet = fleet

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "mlx_manager_node_up", "1 while the node is in rotation, 0 when down.", labels=["node"]
        )
        age = GaugeMetricFamily(
            "mlx_manager_node_heartbeat_age_seconds",
            "Seconds since the node's last heartbeat reached this gateway.",
            labels=["node"],
        )
        memory = {
            key: GaugeMetricFamily(f"mlx_manager_node_memory_{key}", help_text, labels=["node"])
            for key, help_text in (
                ("cap_bytes", "The node's memory cap for model servers."),
                ("used_bytes", "Memory the node's model servers hold."),
                ("free_bytes", "Memory left under the node's cap."),
            )
        }
        inflight = GaugeMetricFamily(
            "mlx_manager_node_inflight", "Requests in flight on the node.", labels=["node"]
        )
        queued = GaugeMetricFamily(
            "mlx_manager_node_queued", "Requests queued on the node.", labels=["node"]
        )
        now = utcnow()
        for entry in self._fleet.to_json():
            name = entry.get("name")
            if not isinstance(name, str) or not name:
                continue
            up.add_metric([name], 1.0 if entry.get("status") == "up" else 0.0)
            seconds = _age_seconds(entry.get("last_seen"), now)
            if seconds is not None and not entry.get("local"):  # `local` is read live
                age.add_metric([name], seconds)
            reported = entry.get("memory")
            if isinstance(reported, dict):
                for key, family in memory.items():
                    amount = _number(reported.get(key))
                    if amount is not None:
                        family.add_metric([name], amount)
            for key, family in (("in_flight", inflight), ("queued", queued)):
                count = _number(entry.get(key))
                if count is not None:
                    family.add_metric([name], count)
        yield from (up, age, *memory.values(), inflight, queued)


class UsageSpoolCollector(Collector):
    """The usage spool's backlog: records spooled to disk but not yet committed to the
    database. It grows while the database is unreachable; at its cap /v1 answers 503."""

    def __init__(self, spool: UsageSpool) -> None:
        self._spool = spool

    def collect(self) -> Iterable[Metric]:
        spool = self._spool
        for name, amount, help_text in (
            (
                "mlx_manager_usage_spool_bytes",
                spool.pending_bytes,
                "Usage records spooled by this gateway and not yet in the database.",
            ),
            (
                "mlx_manager_usage_spool_max_bytes",
                spool.max_bytes,
                "The spool's cap (MLX_MANAGER_USAGE_SPOOL_MAX_BYTES).",
            ),
            (
                "mlx_manager_usage_spool_full",
                1 if spool.full else 0,
                "1 while the spool is full and /v1 requests are refused.",
            ),
        ):
            gauge = GaugeMetricFamily(name, help_text)
            gauge.add_metric([], amount)
            yield gauge
