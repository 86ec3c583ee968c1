"""Memory facts: the cap, a profile's estimated need, and a process tree's measured use.

psutil calls here are blocking; callers on the event loop run them with `asyncio.to_thread`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil

from gateway.hub.model_info import weights_bytes
from gateway.settings import Settings
from gateway.types import GIB

# Weights are mapped in full, plus KV cache, activations and the runtime itself.
WEIGHT_OVERHEAD = 1.2


def total_memory_bytes() -> int:
    return int(psutil.virtual_memory().total)


def cap_bytes(settings: Settings, total: int | None = None) -> int:
    """The budget all model servers share: an absolute GB cap wins over the percentage."""
    if settings.max_memory_gb is not None:
        return int(settings.max_memory_gb * GIB)
    total = total_memory_bytes() if total is None else total
    return int(total * settings.max_memory_percent / 100)


def estimate_need_bytes(memory_gb: float | None, model_folder: Path | None) -> int:
    """The operator's word when given; else weights x 1.2; else 0 (unknown, e.g. a command).

    `weights_bytes` is the same function the model listing reports, so the two always agree.
    """
    if memory_gb is not None:
        return int(memory_gb * GIB)
    if model_folder is None or not model_folder.is_dir():
        return 0
    return int(weights_bytes(model_folder) * WEIGHT_OVERHEAD)


@dataclass(frozen=True, slots=True)
class ProcessUsage:
    rss_bytes: int
    cpu_percent: float


class ProcessTreeMeter:
    """Measures a server's process tree; keeps psutil objects so CPU% has a baseline."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._procs: dict[int, psutil.Process] = {}

    def measure(self) -> ProcessUsage | None:
        try:
            root = psutil.Process(self.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return None
        rss = 0
        cpu = 0.0
        seen: dict[int, psutil.Process] = {}
        for proc in tree:
            known = self._procs.get(proc.pid, proc)
            try:
                rss += known.memory_info().rss
                cpu += known.cpu_percent(interval=None)
            except psutil.Error:
                continue
            seen[proc.pid] = known
        self._procs = seen
        return ProcessUsage(rss_bytes=rss, cpu_percent=round(cpu, 1))
