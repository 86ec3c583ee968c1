"""What happened to the servers: the change signal waiters sleep on, and counters for /metrics."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass


class Notifier:
    """Wakes every waiter when anything that could unblock them changes (a stop, a release)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), seconds)


@dataclass
class ServerEvents:
    """Counters the metrics endpoint reads; plain ints so the hot path stays cheap."""

    starts: int = 0
    start_failures: int = 0
    stops: int = 0
    evictions: int = 0
    crashes: int = 0
    idle_stops: int = 0
    health_restarts: int = 0
    waiting: int = 0
