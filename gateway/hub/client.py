"""The Hugging Face hub, through huggingface-hub's own client: search and download plans.

Hub errors are translated here, at the boundary, into the gateway's error tree, each with a
message that says what to do next (accept a license, set HF_TOKEN, check the network or turn
on offline mode), so no hub failure ever reaches a user as a 500 or a library traceback.

The functions that call the hub block (huggingface-hub is synchronous): run them with
`call_hub`, which puts them in a thread under a deadline. The endpoint comes from
``HF_ENDPOINT`` and the token from ``HF_TOKEN`` (or a saved ``hf auth login``), read at call
time rather than at import, as huggingface-hub would otherwise freeze the endpoint.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar

from gateway.errors import (
    BadGateway,
    Forbidden,
    GatewayError,
    NotFound,
    ServiceUnavailable,
    Unprocessable,
)
from gateway.hub.cache import looks_like_repo_id
from gateway.types import GIB

T = TypeVar("T")
HUB_TIMEOUT = 30.0
MLX_LIBRARY_TAG = "mlx"
MAX_SEARCH_LIMIT = 100
SEARCH_EXPAND = [
    "author",
    "downloads",
    "likes",
    "lastModified",
    "tags",
    "usedStorage",
    "pipeline_tag",
    "library_name",
    "gated",
]
SortKey = Literal["downloads", "likes", "lastModified"]
_HUB_SORT = {"downloads": "downloads", "likes": "likes", "lastModified": "last_modified"}

OFFLINE_MESSAGE = (
    "offline mode is on (MLX_MANAGER_OFFLINE_MODE=true), so the Hugging Face hub is not "
    "contacted; local models still list and serve. Set MLX_MANAGER_OFFLINE_MODE=false to "
    "search or download."
)


# ---- errors --------------------------------------------------------------------------------


class OfflineMode(ServiceUnavailable):
    code = "offline_mode"


class HubUnreachable(ServiceUnavailable):
    code = "hub_unreachable"


class HubTimeout(GatewayError):
    status_code = 504
    error_type = "server_error"
    code = "hub_timeout"


class HubFailed(BadGateway):
    code = "hub_error"


class RepoNotFound(NotFound):
    code = "repo_not_found"


class RevisionNotFound(NotFound):
    code = "revision_not_found"


class FileNotOnHub(NotFound):
    code = "file_not_found"


class GatedRepo(Forbidden):
    code = "gated_repo"


class HubTokenRejected(Forbidden):
    code = "hub_token_rejected"


class InsufficientStorage(GatewayError):
    status_code = 507
    error_type = "server_error"
    code = "insufficient_storage"


TRANSIENT_ERRORS: tuple[type[GatewayError], ...] = (HubUnreachable, HubTimeout, HubFailed)


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def translate_hub_error(exc: BaseException, repo_id: str | None = None) -> GatewayError:
    """The gateway error for a huggingface-hub (or httpx2) failure; order matters, as
    GatedRepoError is a RepositoryNotFoundError is an HfHubHTTPError."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = hub_endpoint()
    repo = repo_id or "this repo"
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, HFValidationError):
        return Unprocessable(f"{repo!r} is not a valid repo id: {_first_line(exc)}")
    if isinstance(exc, OfflineModeIsEnabled):
        return OfflineMode(
            "huggingface-hub is in offline mode (HF_HUB_OFFLINE=1); unset it to reach the hub"
        )
    if isinstance(exc, GatedRepoError):
        return gated_error(repo, endpoint)
    if isinstance(exc, RevisionNotFoundError):
        return RevisionNotFound(
            f"{repo} has no revision by that name on {endpoint}; use a branch, tag or commit "
            "sha that exists (or leave revision out for main)"
        )
    if isinstance(exc, RemoteEntryNotFoundError):
        return FileNotOnHub(f"a file of {repo} is missing on {endpoint}: {_first_line(exc)}")
    if isinstance(exc, RepositoryNotFoundError):
        return RepoNotFound(
            f"no model repo {repo} on {endpoint}; check the id (organization/name). If it is "
            "private, set HF_TOKEN to a token that can read it"
        )
    if isinstance(exc, HfHubHTTPError):
        return status_error(exc.response.status_code, repo, endpoint, _first_line(exc))
    if isinstance(exc, httpx2.TimeoutException):
        return HubTimeout(f"the hub at {endpoint} did not answer in time; try again later")
    if isinstance(exc, (httpx2.TransportError, OSError)):
        return unreachable_error(endpoint, exc)
    return HubFailed(f"unexpected answer from the hub at {endpoint}: {_first_line(exc)}")


def gated_error(repo: str, endpoint: str) -> GatedRepo:
    return GatedRepo(
        f"{repo} is a gated model: accept its license at {endpoint}/{repo} with your account, "
        "then set HF_TOKEN to a token of that account (in the environment of the gateway, or "
        "of the mlx-manager command)"
    )


def status_error(status: int, repo: str, endpoint: str, detail: str = "") -> GatewayError:
    if status == 401:
        return HubTokenRejected(
            f"the hub rejected the token (401) for {repo}; check HF_TOKEN or unset it"
        )
    if status == 403:
        return HubTokenRejected(
            f"the hub refused access to {repo} (403); the token in HF_TOKEN lacks permission"
        )
    if status == 404:
        return RepoNotFound(f"{repo} was not found on {endpoint} (404)")
    if status == 429:
        return HubFailed(
            f"the hub at {endpoint} is rate-limiting us (429); wait a minute and try again, "
            "or set HF_TOKEN (signed-in users get higher limits)",
            headers={"Retry-After": "60"},
        )
    suffix = f": {detail}" if detail else ""
    return HubFailed(f"the hub at {endpoint} answered {status}{suffix}; try again later")


def unreachable_error(endpoint: str, exc: BaseException) -> HubUnreachable:
    return HubUnreachable(
        f"cannot reach the hub at {endpoint} ({_first_line(exc) or type(exc).__name__}); "
        "check the network, a proxy (HTTPS_PROXY) or HF_ENDPOINT, or set "
        "MLX_MANAGER_OFFLINE_MODE=true to work with local models only"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


async def call_hub(
    function: Callable[..., T], *args: Any, repo_id: str | None = None, **kwargs: Any
) -> T:
    """Run a blocking hub call in a thread, with a deadline, translating its errors.

    On timeout the thread is left to finish on its own (threads cannot be cancelled); the
    caller gets a clear 504 instead of waiting on huggingface-hub's own retries.
    """
    try:
        return await asyncio.wait_for(
            asyncio.to_thread(function, *args, **kwargs), timeout=HUB_TIMEOUT
        )
    except TimeoutError as exc:
        raise HubTimeout(
            f"the hub at {hub_endpoint()} did not answer within {HUB_TIMEOUT:.0f} s; check the "
            "network or try again later"
        ) from exc
    except GatewayError:
        raise
    except Exception as exc:
        raise translate_hub_error(exc, repo_id) from exc


def check_repo_id(model_id: str) -> str:
    model_id = model_id.strip()
    if not looks_like_repo_id(model_id) or ".." in model_id:
        raise Unprocessable(
            f"{model_id!r} is not a model repo id; use the form organization/name "
            "(e.g. mlx-community/Qwen3-4B-4bit)",
            param="model_id",
        )
    return model_id


# ---- search --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SearchResult:
    id: str
    author: str | None
    downloads: int | None
    likes: int | None
    last_modified: datetime | None
    tags: tuple[str, ...]
    size_bytes: int | None
    pipeline_tag: str | None
    gated: bool
    downloaded: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "author": self.author,
            "downloads": self.downloads,
            "likes": self.likes,
            "last_modified": self.last_modified.isoformat() if self.last_modified else None,
            "tags": list(self.tags),
            "size_bytes": self.size_bytes,
            "size_gb": round(self.size_bytes / GIB, 2) if self.size_bytes is not None else None,
            "pipeline_tag": self.pipeline_tag,
            "gated": self.gated,
            "downloaded": self.downloaded,
        }


def search_models(
    query: str | None,
    *,
    author: str | None,
    sort: SortKey,
    limit: int,
    max_size_bytes: int | None,
    downloaded: Collection[str],
) -> list[SearchResult]:
    """MLX models matching `query`, best first; sizes come in the same call (usedStorage).

    With a size cap, more candidates are read (lazily, page by page) so the answer still has
    up to `limit` models; a model whose size the hub does not report is left out then.
    `downloaded` holds the lower-cased ids of complete local models.
    """
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub_endpoint())
    scan = limit if max_size_bytes is None else min(max(limit * 5, 50), 500)
    models: Iterable[Any] = api.list_models(
        filter=MLX_LIBRARY_TAG,
        search=query or None,
        author=author or None,
        sort=_HUB_SORT[sort],  # type: ignore[arg-type]
        limit=scan,
        expand=SEARCH_EXPAND,  # type: ignore[arg-type]
    )
    results: list[SearchResult] = []
    for info in models:
        size = info.used_storage
        if max_size_bytes is not None and (size is None or size > max_size_bytes):
            continue
        results.append(
            SearchResult(
                id=info.id,
                author=info.author or info.id.split("/", 1)[0],
                downloads=info.downloads,
                likes=info.likes,
                last_modified=info.last_modified,
                tags=tuple(info.tags or ()),
                size_bytes=size,
                pipeline_tag=info.pipeline_tag,
                gated=bool(info.gated),
                downloaded=info.id.lower() in downloaded,
            )
        )
        if len(results) >= limit:
            break
    return results


# ---- download plans ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RemoteFile:
    path: str
    size: int
    git_oid: str
    sha256: str | None  # LFS files: the content's sha256, which is also their blob name
    xet_hash: str | None = None

    @property
    def etag(self) -> str:
        """The blob name in the cache, as huggingface-hub derives it."""
        return self.sha256 or self.git_oid

    def listing(self) -> dict[str, Any]:
        """This file's entry in huggingface-hub 2.4's tree listing cache."""
        entry: dict[str, Any] = {"size": self.size, "blob_id": self.git_oid}
        if self.sha256 is not None:
            entry["lfs_sha256"] = self.sha256
            entry["lfs_size"] = self.size
        if self.xet_hash is not None:
            entry["xet_hash"] = self.xet_hash
        return entry


@dataclass(frozen=True, slots=True)
class DownloadPlan:
    repo_id: str  # as the hub spells it
    revision: str  # as asked for (a branch, tag or sha)
    commit: str
    files: tuple[RemoteFile, ...]
    endpoint: str

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def plan_download(repo_id: str, revision: str) -> DownloadPlan:
    """Resolve `revision` to a commit and list its files with sizes and hashes (two calls,
    like snapshot_download). For a gated repo, one HEAD checks access up front, so "accept
    the license" is said now rather than after the first byte."""
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.hf_api import RepoFile

    endpoint = hub_endpoint()
    api = HfApi(endpoint=endpoint)
    info = api.model_info(repo_id, revision=revision, timeout=HUB_TIMEOUT)
    if not info.sha:
        raise HubFailed(f"the hub at {endpoint} gave no commit for {repo_id}@{revision}")
    canonical = info.id or repo_id
    files = tuple(
        sorted(
            (
                RemoteFile(
                    path=entry.path,
                    size=entry.lfs.size if entry.lfs else entry.size,
                    git_oid=entry.blob_id,
                    sha256=entry.lfs.sha256 if entry.lfs else None,
                    xet_hash=entry.xet_hash,
                )
                for entry in api.list_repo_tree(canonical, recursive=True, revision=info.sha)
                if isinstance(entry, RepoFile)
            ),
            key=lambda f: (f.size, f.path),  # small files first: config.json is there early
        )
    )
    if not files:
        raise RepoNotFound(f"{canonical}@{revision} has no files on {endpoint}")
    if info.gated:
        url = hf_hub_url(canonical, files[0].path, revision=info.sha, endpoint=endpoint)
        get_hf_file_metadata(url, timeout=HUB_TIMEOUT, endpoint=endpoint)
    return DownloadPlan(
        repo_id=canonical, revision=revision, commit=info.sha, files=files, endpoint=endpoint
    )
