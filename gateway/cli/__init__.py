"""The `mlx-manager` command line (typer).

Passwords are read from a prompt or stdin, never from an argument: arguments end up in shell
history and in `ps` output.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gateway.cli import remote as cli_remote
from gateway.cli.models import model_app
from gateway.db import create_engine, migrate, session_factory
from gateway.errors import GatewayError
from gateway.settings import Settings, SettingsError, load_settings
from gateway.store.users import list_users, register_user
from gateway.tables import User

if TYPE_CHECKING:
    from starlette.applications import Starlette

app = typer.Typer(help="mlx-manager: an OpenAI-compatible gateway for local MLX models.")
user_app = typer.Typer(help="Manage user accounts directly in the database.")
app.add_typer(user_app, name="user")
app.add_typer(model_app, name="model")
app.command()(cli_remote.status)
app.command()(cli_remote.usage)
console = Console()
errors = Console(stderr=True)


def _settings(**overrides: object) -> Settings:
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        errors.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(2) from exc


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (MLX_MANAGER_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Bind port (MLX_MANAGER_PORT).")] = None,
) -> None:
    """Run the gateway: /v1 (OpenAI-compatible) and /api (admin) on one address."""
    from gateway.log_setup import configure_logging
    from gateway.main import build_app

    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    settings = _settings(**overrides)
    try:
        settings.resolved_jwt_secret()
    except SettingsError as exc:
        errors.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(2) from exc
    configure_logging(settings.log_level, settings.log_json)
    _run(build_app(settings), settings)


def _run(asgi_app: Starlette, settings: Settings) -> None:
    """Serve `asgi_app` (the gateway, or a node) with uvicorn behind the edge limits."""
    import uvicorn

    from gateway.edge import uvicorn_options

    class Server(uvicorn.Server):
        """uvicorn, plus two things it can't know: freeze the startup heap for the collector,
        and tell the gateway at the first signal, so event streams end before uvicorn waits."""

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            # What startup built lives as long as the process: collect once, then move it
            # out of the collector's view, so full collections stay short on the request
            # path (halves the gateway's p99 in `make bench`).
            gc.collect()
            gc.freeze()

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            core = getattr(asgi_app.state, "gateway", None)
            if core is not None:
                core.stopping.set()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        asgi_app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.stop_timeout) + 5,
        **uvicorn_options(settings),
    )
    Server(config).run()


@app.command()
def node(
    host: Annotated[str | None, typer.Option(help="Bind address (MLX_MANAGER_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Bind port (MLX_MANAGER_PORT).")] = None,
    gateway: Annotated[
        str | None, typer.Option(help="The gateway's URL (MLX_MANAGER_GATEWAY_URL).")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="This node's name (MLX_MANAGER_NODE_NAME; hostname).")
    ] = None,
) -> None:
    """Run a node: this machine's model servers, serving a gateway on another machine."""
    from gateway.log_setup import configure_logging
    from gateway.node.app import create_node_app

    overrides: dict[str, object] = {}
    for key, value in (
        ("host", host),
        ("port", port),
        ("gateway_url", gateway),
        ("node_name", name),
    ):
        if value is not None:
            overrides[key] = value
    settings = _settings(**overrides)
    missing = [
        variable
        for variable, value in (
            ("MLX_MANAGER_NODE_TOKEN", settings.node_token),
            ("MLX_MANAGER_GATEWAY_URL (or --gateway)", settings.gateway_url),
        )
        if value is None
    ]
    if missing:
        errors.print(f"[red]a node needs {escape(' and '.join(missing))}[/red]")
        raise typer.Exit(2)
    configure_logging(settings.log_level, settings.log_json)
    _run(create_node_app(settings), settings)


@user_app.command("create")
def user_create(
    email: Annotated[str, typer.Option(help="The user's email (their login).")],
    admin: Annotated[bool, typer.Option("--admin", help="Create an approved admin.")] = False,
) -> None:
    """Create a user; the password is asked for (or read from stdin when piped)."""
    if sys.stdin.isatty():
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    settings = _settings()

    async def create() -> User:
        engine = create_engine(settings.sqlalchemy_url)
        try:
            await migrate(engine)
            async with session_factory(engine)() as session:
                return await register_user(session, email, password, admin=admin)
        finally:
            await engine.dispose()

    try:
        user = asyncio.run(create())
    except GatewayError as exc:
        errors.print(f"[red]error:[/red] {escape(exc.message)}")
        raise typer.Exit(1) from exc
    role = "admin" if user.is_admin else "user"
    console.print(f"created {role} {escape(user.email)} (id {user.id}, {user.status})")


@user_app.command("list")
def user_list() -> None:
    """List every user with role and status."""
    settings = _settings()

    async def fetch() -> list[User]:
        engine = create_engine(settings.sqlalchemy_url)
        try:
            await migrate(engine)
            async with session_factory(engine)() as session:
                return await list_users(session)
        finally:
            await engine.dispose()

    table = Table("id", "email", "role", "status", "created")
    for user in asyncio.run(fetch()):
        role = "admin" if user.is_admin else "user"
        table.add_row(
            str(user.id), escape(user.email), role, user.status, user.created_at.isoformat()
        )
    # Piped output is not a terminal: rich would wrap at 80 columns and cut long emails.
    out = console if console.is_terminal else Console(width=10_000)
    out.print(table)


def main() -> None:
    app()
