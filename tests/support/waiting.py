"""Polling with a deadline: the one way tests wait for something.

A test never sleeps a fixed time hoping something happened (the machine is noisy, so any fixed
time is either too short or wasted): it polls a predicate until it holds, and fails with the
last value seen once a generous deadline passes.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not hold in time (an AssertionError, so pytest reports it as a fail)."""


def _timed_out(message: str, timeout: float, value: object) -> WaitTimeout:
    return WaitTimeout(f"{message} not met within {timeout} s (last value: {value!r})")


@overload
async def wait_until(
    predicate: Callable[[], Awaitable[T | None]],
    timeout: float = ...,
    interval: float = ...,
    message: str = ...,
) -> T: ...


@overload
async def wait_until(
    predicate: Callable[[], T | None],
    timeout: float = ...,
    interval: float = ...,
    message: str = ...,
) -> T: ...


async def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 15.0,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    """Poll `predicate` (plain or async) until it returns something truthy; return that.

    For tests running in the event loop: the loop keeps serving the gateway between polls.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(message, timeout, value)
        await asyncio.sleep(interval)


def wait_until_sync(
    predicate: Callable[[], T | None],
    timeout: float = 15.0,
    interval: float = 0.05,
    message: str = "condition",
) -> T:
    """`wait_until` for plain (non-async) tests: blocks the thread between polls."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(message, timeout, value)
        time.sleep(interval)
