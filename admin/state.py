"""The control plane's own long-lived state, with one owner.

`control_plane()` builds one `AdminState` per app; the app's lifespan opens it once the gateway
core is up and closes it before the core goes (the `ControlPlane` hooks), and routes reach it
with `admin_state_of(request)`. Before, the download manager sat in a module-level dict keyed
by `id(gateway)` and backend versions in an ad-hoc `app.state` attribute: two apps in one
process (tests) could only be kept apart by convention.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.requests import HTTPConnection

from gateway.errors import ServiceUnavailable
from gateway.hub.cache import default_cache_dir
from gateway.hub.jobs import DownloadManager
from gateway.runtime import Gateway
from gateway.system_info import backend_versions

Packages = dict[str, str | None]


class AdminState:
    """What `/api` keeps between requests: the download manager (resumes unfinished downloads
    at open, stops transfers at close) and system facts worth reading once (backend package
    versions cost a subprocess).

    `download_options` are keyword options of `DownloadManager` (tests pass
    `retry_base_seconds=` and `free_bytes=`).
    """

    def __init__(self, download_options: Mapping[str, Any] | None = None) -> None:
        self._download_options = dict(download_options or {})
        self._downloads: DownloadManager | None = None
        self._backend_packages: dict[str | None, Packages] = {}

    async def open(self, gateway: Gateway) -> None:
        cache = gateway.settings.hf_cache_path or default_cache_dir()
        manager = DownloadManager(
            gateway.settings, gateway.sessions, cache, **self._download_options
        )
        self._downloads = manager
        gateway.metrics.add_collector(lambda: _download_metrics(manager))
        await manager.open()

    async def close(self, gateway: Gateway) -> None:
        manager, self._downloads = self._downloads, None
        if manager is not None:
            await manager.close()

    @property
    def downloads(self) -> DownloadManager:
        if self._downloads is None:
            raise ServiceUnavailable(
                "downloads are not available: the gateway is starting or stopping"
            )
        return self._downloads

    async def backend_packages(self, executable: str | None) -> Packages:
        """The model server's package versions, read once per executable."""
        if executable not in self._backend_packages:
            self._backend_packages[executable] = await backend_versions(executable)
        return self._backend_packages[executable]


def admin_state_of(conn: HTTPConnection) -> AdminState:
    state = conn.app.state.control
    assert isinstance(state, AdminState), "the app was not built with admin's control_plane()"
    return state


def _download_metrics(manager: DownloadManager) -> list[Metric]:
    received = CounterMetricFamily(
        "mlx_manager_download_bytes", "Bytes downloaded from the hub since the gateway started."
    )
    received.add_metric([], manager.transferred_bytes)
    active = GaugeMetricFamily("mlx_manager_downloads_active", "Downloads transferring now.")
    active.add_metric([], manager.active_count)
    return [received, active]
