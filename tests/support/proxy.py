"""Old home of the proxy tests' harness: aliases while tests move to tests/support/env.py."""

from __future__ import annotations

from tests.support.echo_upstream import ECHO_SCRIPT, echo_command
from tests.support.env import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    USER_PASSWORD,
    Env,
    Key,
    User,
    assert_openai_error,
    bearer,
    chat_body,
    gateway_env,
    multipart,
    normalized,
    read_events,
    sse_data,
    stub_command,
)
from tests.support.waiting import WaitTimeout, wait_until

ProxyEnv = Env
proxy_env = gateway_env
chat = chat_body
sse_payloads = sse_data

__all__ = [
    "ADMIN_EMAIL",
    "ADMIN_PASSWORD",
    "ECHO_SCRIPT",
    "USER_PASSWORD",
    "Key",
    "ProxyEnv",
    "User",
    "WaitTimeout",
    "assert_openai_error",
    "bearer",
    "chat",
    "echo_command",
    "multipart",
    "normalized",
    "proxy_env",
    "read_events",
    "sse_payloads",
    "stub_command",
    "wait_until",
]
