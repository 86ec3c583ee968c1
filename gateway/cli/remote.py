"""CLI commands that ask the running gateway over HTTP: `mlx-manager status` and `usage`.

They need a token: an API key (or a JWT) in `MLX_MANAGER_TOKEN` or `--token`. They read the
API rather than the database so what they show is what the gateway knows right now (live
states, measured memory), not a stale row.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from gateway.settings import load_settings

console = Console()
errors = Console(stderr=True)

UrlOption = Annotated[
    str | None,
    typer.Option("--url", help="Gateway address (default: from MLX_MANAGER_HOST/PORT)."),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token", help="API key or JWT (default: $MLX_MANAGER_TOKEN).", show_default=False
    ),
]


def _call(url: str | None, token: str | None, path: str, **params: Any) -> Any:
    token = token or os.environ.get("MLX_MANAGER_TOKEN")
    if not token:
        errors.print(
            "[red]no token:[/red] set MLX_MANAGER_TOKEN to an API key "
            '(create one with POST /api/keys and "scopes": ["admin"]) or pass --token'
        )
        raise typer.Exit(2)
    if url is None:
        settings = load_settings()
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
        url = f"http://{host}:{settings.port}"
    try:
        response = httpx.get(
            url.rstrip("/") + path,
            params={k: v for k, v in params.items() if v is not None},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        errors.print(f"[red]cannot reach the gateway at {url}:[/red] {exc}; is it running?")
        raise typer.Exit(1) from exc
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        errors.print(f"[red]{response.status_code}:[/red] {detail}")
        raise typer.Exit(1)
    return response.json()


def _gb(value: int | None) -> str:
    return "-" if not value else f"{value / 1024**3:.2f} GB"


def status(url: UrlOption = None, token: TokenOption = None) -> None:
    """Model servers: state, port, memory, CPU, requests in flight."""
    servers = _call(url, token, "/api/servers")
    memory = _call(url, token, "/api/system/memory")
    table = Table("profile", "state", "pid", "port", "memory", "cpu %", "in flight", "last used")
    for s in servers:
        table.add_row(
            s["name"],
            s["state"],
            str(s["pid"] or "-"),
            str(s["port"] or "-"),
            _gb(s["memory_bytes"]),
            "-" if s["cpu_percent"] is None else f"{s['cpu_percent']:.0f}",
            str(s["inflight"]),
            (s["last_used_at"] or "-")[:19],
        )
    console.print(table)
    console.print(
        f"servers {_gb(memory['servers_bytes'])} of cap {_gb(memory['cap_bytes'])}; "
        f"machine {_gb(memory['available_bytes'])} free of {_gb(memory['total_bytes'])}"
    )


def usage(
    group_by: Annotated[str, typer.Option(help="user, model or key")] = "model",
    since: Annotated[str | None, typer.Option(help="ISO date/time, e.g. 2026-11-01")] = None,
    until: Annotated[str | None, typer.Option(help="ISO date/time")] = None,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Tokens and requests, by user, model or key (admins see everyone)."""
    report = _call(url, token, "/api/usage", group_by=group_by, since=since, until=until)
    table = Table(group_by, "requests", "prompt", "completion", "total", "errors", "avg ms")
    for g in report["groups"]:
        table.add_row(
            str(g[group_by] if g[group_by] is not None else "(none)"),
            str(g["requests"]),
            str(g["prompt_tokens"]),
            str(g["completion_tokens"]),
            str(g["total_tokens"]),
            str(g["errors"]),
            f"{g['avg_latency_ms']:.0f}",
        )
    console.print(table)
