"""Sign-in and registration throttling: attempts per email and per client address in a
sliding window.

Checked before any password hashing, so a flood of guesses costs us a dict lookup, not Argon2.
In memory on purpose: one gateway process owns the door.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from gateway.errors import TooManyRequests


class LoginThrottle:
    def __init__(
        self,
        max_per_email: int,
        max_per_address: int,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = {"email": max_per_email, "address": max_per_address}
        self._window = window_seconds
        self._clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def check(self, email: str, address: str) -> None:
        """Raise 429 with Retry-After when either the email or the address is over its limit."""
        now = self._clock()
        wait = 0.0
        for kind, value in (("email", email), ("address", address)):
            times = self._recent((kind, value), now)
            if len(times) >= self._limits[kind]:
                wait = max(wait, times[0] + self._window - now)
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            raise TooManyRequests(
                f"too many failed sign-in attempts; try again in {retry_after} seconds",
                headers={"Retry-After": str(retry_after)},
            )

    def record_failure(self, email: str, address: str) -> None:
        now = self._clock()
        for key in (("email", email), ("address", address)):
            self._recent(key, now).append(now)

    def record_success(self, email: str) -> None:
        self._failures.pop(("email", email), None)

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and times[0] <= now - self._window:
            times.popleft()
        if len(self._failures) > 100_000:  # bound memory under a spray of unique emails
            self._failures = {k: v for k, v in self._failures.items() if v}
        return times


class AttemptLimit:
    """At most `limit` attempts per key (a client address) in a sliding window, counted
    whatever their outcome: registration costs Argon2 even when it succeeds."""

    def __init__(
        self,
        limit: int,
        window_seconds: float,
        what: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self._window = window_seconds
        self._what = what
        self._clock = clock
        self._attempts: dict[str, deque[float]] = {}

    def hit(self, key: str) -> None:
        """Count one attempt, or raise 429 with Retry-After when the key is over its limit."""
        now = self._clock()
        times = self._attempts.setdefault(key, deque())
        while times and times[0] <= now - self._window:
            times.popleft()
        if len(times) >= self._limit:
            retry_after = max(1, math.ceil(times[0] + self._window - now))
            raise TooManyRequests(
                f"too many {self._what} from this address; try again in {retry_after} seconds",
                headers={"Retry-After": str(retry_after)},
            )
        times.append(now)
        if len(self._attempts) > 100_000:  # bound memory under a spray of addresses
            self._attempts = {
                k: v for k, v in self._attempts.items() if v and v[-1] > now - self._window
            }
