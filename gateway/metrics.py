"""Prometheus metrics (prometheus-client), one registry per app so tests never share state.

Request metrics are recorded where usage is accounted (after the response, off the critical
path); server state is read at scrape time from the server manager, so nothing is duplicated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.serving.manager import ServerManager
from gateway.types import SERVER_STATES

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
