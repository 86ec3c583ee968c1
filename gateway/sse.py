"""Server-sent event streams that end when the gateway stops.

uvicorn waits for open responses before it shuts down, and an event stream never ends by
itself: without this, Ctrl-C would hang for the whole graceful-shutdown timeout whenever a
browser follows a log or a download.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def until_stopping(stopping: asyncio.Event, events: AsyncIterator[str]) -> AsyncIterator[str]:
    """Relay `events` until they end or `stopping` is set, whichever comes first."""
    stop = asyncio.ensure_future(stopping.wait())
    try:
        while True:
            following = asyncio.ensure_future(anext(events))
            await asyncio.wait({following, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not following.done():
                following.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await following
                return
            try:
                item = following.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        stop.cancel()
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
