"""Old home of the server tests' harness, kept as aliases while tests move to tests/support/env.py
(and the backend stand-in to tests/support/fake_backend.py)."""

from __future__ import annotations

from gateway.types import GIB
from tests.support.env import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    Env,
    admin_token,
    chat_body,
    count_events,
    env_settings,
    gateway_env,
    port_base,
    process_alive,
    process_gone,
    sse_data,
    stream_contents,
    stub_command,
)
from tests.support.fake_backend import (
    BACKEND_HELP,
    BACKEND_VERSION,
    BACKEND_VERSION_TEXT,
    REASONING_PARSERS,
    TOOL_CALL_PARSERS,
    fake_backend,
    fake_hf_cache,
)
from tests.support.waiting import WaitTimeout, wait_until


async def approved_user(env: Env, email: str = "user@example.com") -> str:
    """The old signature: a token of an approved, non-admin user."""
    return (await env.new_user(email)).token


__all__ = [
    "ADMIN_EMAIL",
    "ADMIN_PASSWORD",
    "BACKEND_HELP",
    "BACKEND_VERSION",
    "BACKEND_VERSION_TEXT",
    "GIB",
    "REASONING_PARSERS",
    "TOOL_CALL_PARSERS",
    "Env",
    "WaitTimeout",
    "admin_token",
    "approved_user",
    "chat_body",
    "count_events",
    "env_settings",
    "fake_backend",
    "fake_hf_cache",
    "gateway_env",
    "port_base",
    "process_alive",
    "process_gone",
    "sse_data",
    "stream_contents",
    "stub_command",
    "wait_until",
]
