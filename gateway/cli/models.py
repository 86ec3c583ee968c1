"""`mlx-manager model ...`: search the hub, pull, list and remove models in the local HF cache.

These work without a running gateway: they use the same downloader and cache code directly,
so a pull interrupted with Ctrl-C leaves its partial files, and the next pull (or a gateway
download of the same model) continues them instead of starting over.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from gateway.errors import GatewayError
from gateway.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from gateway.hub.client import DownloadPlan
    from gateway.hub.transfer import TransferProgress

model_app = typer.Typer(
    help="Search the Hugging Face hub, download (resumably) and manage local MLX models.",
    no_args_is_help=True,
)


def _stdout_console() -> Console:
    """Piped output (scripts, grep) gets whole model ids, not ones cut to 80 columns."""
    piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(width=10_000 if piped else None)


console = _stdout_console()
errors = Console(stderr=True)
INTERRUPTED_EXIT = 130


class SortOrder(StrEnum):
    downloads = "downloads"
    likes = "likes"
    lastModified = "lastModified"


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        errors.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc


def _cache(settings: Settings) -> Path:
    from gateway.hub.cache import default_cache_dir

    return settings.hf_cache_path or default_cache_dir()


def _fail(exc: BaseException, repo_id: str | None = None) -> typer.Exit:
    from gateway.hub.client import translate_hub_error

    error = exc if isinstance(exc, GatewayError) else translate_hub_error(exc, repo_id)
    errors.print(f"[red]error:[/red] {error.message}")
    return typer.Exit(1)


def _refuse_offline(settings: Settings) -> None:
    from gateway.hub.client import OFFLINE_MESSAGE

    if settings.offline_mode:
        errors.print(f"[red]error:[/red] {OFFLINE_MESSAGE}")
        raise typer.Exit(1)


def human_bytes(value: int | None) -> str:
    if value is None:
        return "?"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


@model_app.command("search")
def search(
    query: Annotated[str, typer.Argument(help="Text the model id must contain.")] = "",
    author: Annotated[
        str | None, typer.Option(help="Organization (default MLX_MANAGER_HF_ORGANIZATION).")
    ] = None,
    sort: Annotated[SortOrder, typer.Option(help="Order, best first.")] = SortOrder.downloads,
    limit: Annotated[int, typer.Option(min=1, max=100, help="At most this many.")] = 20,
    max_size_gb: Annotated[
        float | None, typer.Option(min=0.0, help="Only models up to this size (GiB).")
    ] = None,
) -> None:
    """Search the hub for MLX models."""
    from gateway.hub.catalog import scan_models
    from gateway.hub.client import search_models
    from gateway.types import GIB

    settings = _settings()
    _refuse_offline(settings)
    downloaded = {m.repo_id.lower() for m in scan_models(_cache(settings)) if m.complete}
    try:
        results = search_models(
            query or None,
            author=author if author is not None else settings.hf_organization,
            sort=sort.value,
            limit=limit,
            max_size_bytes=int(max_size_gb * GIB) if max_size_gb else None,
            downloaded=downloaded,
        )
    except Exception as exc:
        raise _fail(exc) from exc
    table = Table("model", "size", "downloads", "likes", "updated", "local")
    for r in results:
        table.add_row(
            r.id,
            human_bytes(r.size_bytes),
            str(r.downloads or 0),
            str(r.likes or 0),
            r.last_modified.date().isoformat() if r.last_modified else "",
            "yes" if r.downloaded else "",
        )
    console.print(table)
    if not results:
        console.print("no MLX models matched")


@model_app.command("pull")
def pull(
    repo: Annotated[
        str, typer.Argument(help="The model repo id, e.g. mlx-community/Qwen3-4B-4bit.")
    ],
    revision: Annotated[
        str | None, typer.Option(help="Branch, tag or commit (default main).")
    ] = None,
) -> None:
    """Download a model into the local cache; Ctrl-C keeps what arrived, pull again to resume."""
    from gateway.hub.client import check_repo_id, plan_download
    from gateway.hub.transfer import TransferProgress, check_free_space

    settings = _settings()
    _refuse_offline(settings)
    cache = _cache(settings)
    try:
        plan = plan_download(check_repo_id(repo), revision or "main")
        check_free_space(plan, cache)
    except Exception as exc:
        raise _fail(exc, repo) from exc
    progress = TransferProgress()
    try:
        snapshot = asyncio.run(_pull(plan, cache, progress))
    except KeyboardInterrupt:
        errors.print(
            f"interrupted with {human_bytes(progress.done)} of {human_bytes(plan.total_bytes)} "
            f"on disk; run `mlx-manager model pull {plan.repo_id}` again to resume"
        )
        raise typer.Exit(INTERRUPTED_EXIT) from None
    except Exception as exc:
        raise _fail(exc, repo) from exc
    console.print(f"{plan.repo_id} ({plan.commit[:12]}) is in {snapshot}")


async def _pull(plan: DownloadPlan, cache: Path, progress: TransferProgress) -> Path:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from gateway.hub.transfer import download_snapshot, new_client

    async with new_client() as client:
        task = asyncio.create_task(download_snapshot(plan, cache, progress, client))
        try:
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=errors,
                transient=not errors.is_terminal,
            ) as bar:
                bar_task = bar.add_task(plan.repo_id, total=plan.total_bytes)
                while not task.done():
                    await asyncio.wait({task}, timeout=0.2)
                    bar.update(bar_task, completed=progress.done)
            return await task
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


@model_app.command("list")
def list_models() -> None:
    """List the models in the local cache with what their config says."""
    from gateway.hub.catalog import scan_models

    cache = _cache(_settings())
    models = scan_models(cache)
    table = Table("model", "size", "kind", "family", "quant", "context", "revision", "modified")
    for m in models:
        c = m.characteristics
        revision = m.snapshot.name[:12] if m.snapshot else "(incomplete)"
        table.add_row(
            m.repo_id,
            human_bytes(m.size_bytes),
            c.kind if c else "",
            (c.family or "") if c else "",
            f"{c.quantization_bits}-bit" if c and c.quantization_bits else "",
            str(c.context_length) if c and c.context_length else "",
            revision,
            datetime.fromtimestamp(m.last_modified).strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)
    if not models:
        console.print(f"no models in {cache}")


@model_app.command("rm")
def remove(
    repo: Annotated[str, typer.Argument(help="The model repo id to delete from the cache.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Delete even if a running server uses it.")
    ] = False,
) -> None:
    """Delete a model (every revision) from the local cache."""
    from gateway.hub.cache import delete_model, find_repo_folder

    settings = _settings()
    cache = _cache(settings)
    folder = find_repo_folder(cache, repo)
    if folder is None:
        errors.print(f"[red]error:[/red] {repo} is not in the local cache ({cache})")
        raise typer.Exit(1)
    users = [] if force else asyncio.run(_running_users(settings, repo, folder))
    if users:
        errors.print(
            f"[red]error:[/red] {repo} is in use by running server(s) {', '.join(users)}; "
            "stop them first (or pass --force)"
        )
        raise typer.Exit(1)
    if not yes:
        if not sys.stdin.isatty():
            errors.print("[red]error:[/red] not a terminal: pass --yes to confirm the deletion")
            raise typer.Exit(1)
        typer.confirm(f"Delete {repo} from {cache}?", abort=True)
    freed = delete_model(cache, repo)
    console.print(f"deleted {repo} ({human_bytes(freed)} freed)")


async def _running_users(settings: Settings, repo: str, folder: Path) -> list[str]:
    """Profiles whose model server (recorded by a gateway, still alive) loads this model."""
    import socket

    import psutil

    from gateway import store
    from gateway.db import create_engine, session_factory

    if settings.database_url is None and not (settings.database_path or Path()).exists():
        return []
    engine = create_engine(settings.sqlalchemy_url)
    try:
        async with session_factory(engine)() as session:
            rows = await store.instances.instances_with_profiles(session)
    except Exception:
        return []  # no schema yet: no gateway ever ran servers here
    finally:
        await engine.dispose()
    here = socket.gethostname()  # another machine's pids mean nothing here
    return sorted(
        profile.name
        for instance, profile in rows
        if instance.host in ("", here)
        and _loads(profile.model_path, repo, folder)
        and psutil.pid_exists(instance.pid)
    )


def _loads(model_path: str, repo: str, folder: Path) -> bool:
    if model_path.lower() == repo.lower():
        return True
    return model_path.startswith(("/", "~")) and Path(model_path).expanduser().is_relative_to(
        folder
    )
