"""Revocation across replicas: a PostgreSQL LISTEN connection that empties the auth cache.

Every gateway on one PostgreSQL database keeps its own auth cache (gateway/auth.py). When one
replica, or the CLI, disables a user or deletes a key, the store sends a NOTIFY in the same
transaction (gateway/store/replicas.py); this listener, one per gateway on its own connection
outside the SQLAlchemy pool, hears it and forgets the user's or key's cached logins, so every
replica refuses them within milliseconds instead of at the end of a cache TTL.

A notification sent while the connection is down is lost for good, so:
- on every (re)connect, LISTEN first, then forget every cached login (`forget_all`): whatever
  the gap hid is read again from the database;
- while disconnected, the authenticator trusts its cache only for the backstop TTL
  (`Authenticator.listening` is False), and the listener reconnects with a doubling wait
  capped at MLX_MANAGER_REVOCATION_RECONNECT_MAX;
- a keepalive round trip every MLX_MANAGER_REVOCATION_PING_INTERVAL finds a connection that
  died without a word (a dropped network), which would otherwise look connected forever.
The cache is not emptied when the connection drops: if the database itself is down, those
cached logins are what keeps serving (the authenticator's stale rule).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from gateway import store
from gateway.auth import Authenticator

log = logging.getLogger("mlx_manager.revocation")

FIRST_RETRY = 0.1  # seconds before the first reconnection attempt; doubles each time


class RevocationListener:
    """One gateway's LISTEN connection and the task that keeps it up."""

    def __init__(
        self,
        connect_args: dict[str, Any],
        authenticator: Authenticator,
        *,
        profiles_changed: Callable[[int | None], None] | None = None,
        ping_interval: float,
        ping_timeout: float,
        reconnect_max: float,
    ) -> None:
        self._connect_args = connect_args
        self._authenticator = authenticator
        # Another replica saved or deleted profile id (None: reload them all, notices may
        # have been missed while not listening).
        self._profiles_changed = profiles_changed or (lambda _profile_id: None)
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._reconnect_max = reconnect_max
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self.connected = False
        # What kind of error ended the last connection or attempt; None while connected.
        self.problem: str | None = "not connected yet"
        self.connects = 0  # successful connections so far (1 = never reconnected)
        self.notifications = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="revocation-listener")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        wait = min(FIRST_RETRY, self._reconnect_max)
        while True:
            connection: Any = None
            try:
                self._lost = asyncio.Event()
                connection = await store.replicas.open_listener(
                    self._connect_args,
                    self._on_notify,
                    self._lost.set,
                    connect_timeout=self._ping_timeout,
                )
                self._up()
                wait = min(FIRST_RETRY, self._reconnect_max)
                await self._watch(connection)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._down(exc)
            finally:
                self._authenticator.listening = False
                self.connected = False
                if connection is not None:
                    connection.terminate()  # no goodbye needed, and never blocks
            await asyncio.sleep(wait)
            wait = min(wait * 2, self._reconnect_max)

    def _up(self) -> None:
        """LISTEN is in place: from now on every revocation reaches `_on_notify`. What was
        announced before it is unknown, so the whole cache goes, then long TTLs may start."""
        self._authenticator.forget_all()
        self._profiles_changed(None)  # profile notices may have been missed too
        self._authenticator.listening = True
        self.connected = True
        self.problem = None
        self.connects += 1
        log.info(
            "revocation listener %s; auth cache flushed",
            "connected" if self.connects == 1 else "reconnected",
        )

    def _down(self, exc: Exception) -> None:
        was_connected = self.connected
        previous = self.problem
        self._authenticator.listening = False
        self.connected = False
        self.problem = store.replicas.kind(exc)  # shown by the open GET /ready: no details
        reason = store.replicas.describe(exc)
        if was_connected:
            log.warning("revocation listener lost its connection (%s); reconnecting", reason)
        elif self.problem != previous:  # one line per kind of failure, not one per retry
            log.warning("revocation listener cannot connect (%s); retrying", reason)
        else:
            log.debug("revocation listener still cannot connect (%s)", reason)

    async def _watch(self, connection: Any) -> None:
        """Return only by raising: when the connection ends or stops answering."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._ping_interval):
                    await self._lost.wait()
            if self._lost.is_set() or connection.is_closed():
                raise ConnectionError("the database closed the listening connection")
            try:
                async with asyncio.timeout(self._ping_timeout):
                    await store.replicas.ping_listener(connection)
            except TimeoutError as exc:
                raise TimeoutError(f"keepalive unanswered after {self._ping_timeout:g} s") from exc

    def _on_notify(self, payload: str) -> None:
        self.notifications += 1
        match store.replicas.parse_payload(payload):
            case ("user", user_id):
                self._authenticator.forget_user(user_id)
            case ("key", key_id):
                self._authenticator.forget_key(key_id)
            case ("profile", profile_id):
                self._profiles_changed(profile_id)
            case ("echo", _):
                pass  # this gateway's own profile change: its manager has it already
            case _:
                log.warning("unknown revocation notice %r: flushing the auth cache", payload)
                self._authenticator.forget_all()
