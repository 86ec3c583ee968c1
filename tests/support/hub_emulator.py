"""A local Hugging Face Hub emulator: the parts of the hub API that huggingface-hub 2.4 calls.

Why it exists: this machine cannot reach huggingface.co, and the gateway's search, download and
resume code must be tested against the real `huggingface_hub` client, not a mock of it. So this
is a real HTTP server (aiohttp) that the client reaches through ``HF_ENDPOINT``, run as a
subprocess so a test can also kill it (the hub going away mid-download).

What it serves, from a folder of fixture repos ``ROOT/<org>/<name>/`` (each file a repo file;
an optional ``.hub.json`` holds the repo's hub metadata: tags, downloads, likes, lastModified,
createdAt, gated, private, library_name, pipeline_tag, usedStorage):

* ``GET /api/models``: search, author, filter (tags, all must match), sort (+ direction),
  limit with ``Link`` pagination (cursor), expand[] (incl. usedStorage), full.
* ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}``: info with ``sha`` and
  ``siblings`` (``blobs=true`` adds size, blobId and lfs).
* ``GET /api/models/{repo}/tree/{rev}[/{path}]``: entries with oid, size, lfs (``recursive``).
* ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: ``ETag`` (git blob sha1), ``X-Repo-Commit``,
  ``Content-Length``, ``Accept-Ranges``; ``Range`` answers 206 (416 when out of range). LFS
  files (weights) answer 302 to a "CDN" on another host name (``localhost`` vs ``127.0.0.1``)
  with ``X-Linked-Etag`` (sha256) and ``X-Linked-Size``, as the real hub does; ``--no-cdn``
  serves them in place with the sha256 as ETag.
* Errors as the hub sends them: ``X-Error-Code`` RepoNotFound, RevisionNotFound, GatedRepo,
  EntryNotFound, with ``X-Error-Message``.
* Gated repos need ``Authorization: Bearer <token>`` with a token given by ``--token``.

Test controls (not hub API): ``GET /_emulator/requests`` (the request log), ``POST
/_emulator/config`` with any of ``bytes_per_second`` (throttle file bodies; 0 = unlimited),
``drop_after_bytes`` (cut the connection after that many body bytes of the next file
transfers; null = never), ``api_status`` (answer every ``/api`` call with this status; null
= normal), ``corrupt_path`` (serve that repo file with its first byte flipped; null =
none); ``POST /_emulator/reset`` (clear log and config); ``POST /_emulator/reload``
(rescan ROOT, after a test added a repo). Every request is also appended to ``--log FILE``
(one JSON object per line, flushed at once) so a test can read it after a kill.

Run: ``python tests/support/hub_emulator.py --root DIR [--port 0] [--log FILE]
[--bytes-per-second N] [--token T] [--no-cdn]``; prints ``READY <url>`` once listening.
Only the standard library and aiohttp are imported, so it runs without the project installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fnmatch
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

LFS_PATTERNS = ("*.safetensors", "*.bin", "*.npz", "*.gguf", "*.pt", "*.pth", "*.h5", "*.onnx")
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
CHUNK = 16 * 1024  # throttled: fine-grained pacing
FAST_CHUNK = 256 * 1024
DEFAULT_DATE = "2025-01-01T00:00:00.000Z"
META_FILE = ".hub.json"


@dataclass(frozen=True)
class RepoFileEntry:
    path: str
    source: Path
    size: int
    git_oid: str
    sha256: str | None  # set for LFS files

    @property
    def etag(self) -> str:
        return self.sha256 or self.git_oid


@dataclass
class Repo:
    repo_id: str
    meta: dict[str, Any]
    files: dict[str, RepoFileEntry]
    sha: str

    @property
    def author(self) -> str:
        return self.repo_id.split("/", 1)[0]

    @property
    def gated(self) -> str | bool:
        value = self.meta.get("gated", False)
        return value if isinstance(value, str) else bool(value)

    @property
    def private(self) -> bool:
        return bool(self.meta.get("private", False))

    @property
    def tags(self) -> list[str]:
        tags = list(self.meta.get("tags", []))
        library = self.meta.get("library_name")
        if library and library not in tags:
            tags.insert(0, library)
        return tags

    @property
    def used_storage(self) -> int:
        value = self.meta.get("usedStorage")
        return int(value) if value is not None else sum(f.size for f in self.files.values())

    def folders(self) -> set[str]:
        result: set[str] = set()
        for path in self.files:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                result.add("/".join(parts[:i]))
        return result


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def is_lfs(path: str, size: int, patterns: list[str]) -> bool:
    name = path.rsplit("/", 1)[-1]
    if size >= LFS_SIZE_THRESHOLD:
        return True
    return any(fnmatch.fnmatch(name, pattern) for pattern in (*LFS_PATTERNS, *patterns))


def load_repo(repo_id: str, folder: Path) -> Repo:
    meta_path = folder / META_FILE
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    files: dict[str, RepoFileEntry] = {}
    for source in sorted(folder.rglob("*")):
        if not source.is_file() or source.name == META_FILE:
            continue
        rel = source.relative_to(folder).as_posix()
        data = source.read_bytes()
        lfs = is_lfs(rel, len(data), list(meta.get("lfs", [])))
        files[rel] = RepoFileEntry(
            path=rel,
            source=source,
            size=len(data),
            git_oid=git_blob_oid(data),
            sha256=hashlib.sha256(data).hexdigest() if lfs else None,
        )
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(repo_id.encode())
    for entry in files.values():
        digest.update(f"{entry.path}\0{entry.etag}\n".encode())
    return Repo(repo_id=repo_id, meta=meta, files=files, sha=digest.hexdigest())


def load_repos(root: Path) -> dict[str, Repo]:
    repos: dict[str, Repo] = {}
    for org in sorted(p for p in root.iterdir() if p.is_dir()):
        for folder in sorted(p for p in org.iterdir() if p.is_dir()):
            repo = load_repo(f"{org.name}/{folder.name}", folder)
            repos[repo.repo_id.lower()] = repo
    return repos


@dataclass
class Controls:
    bytes_per_second: int = 0
    drop_after_bytes: int | None = None
    api_status: int | None = None
    corrupt_path: str | None = None  # serve this file with its first byte changed, every time

    def update(self, data: dict[str, Any]) -> None:
        for key in ("bytes_per_second", "drop_after_bytes", "api_status", "corrupt_path"):
            if key in data:
                setattr(self, key, data[key])


@dataclass
class Emulator:
    root: Path
    repos: dict[str, Repo]
    tokens: set[str]
    use_cdn: bool
    log_path: Path | None
    controls: Controls = field(default_factory=Controls)
    initial: Controls = field(default_factory=Controls)
    log: list[dict[str, Any]] = field(default_factory=list)

    # ---- bookkeeping ---------------------------------------------------------------------

    def record(self, request: web.Request) -> None:
        entry = {
            "ts": time.time(),
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "range": request.headers.get("Range"),
            "authorization": bool(request.headers.get("Authorization")),
            "host": request.host,
        }
        self.log.append(entry)
        if self.log_path is not None:
            with self.log_path.open("a") as handle:
                handle.write(json.dumps(entry) + "\n")
                handle.flush()

    def authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and token.strip() in self.tokens

    def repo(self, request: web.Request) -> Repo:
        repo_id = f"{request.match_info['org']}/{request.match_info['name']}"
        repo = self.repos.get(repo_id.lower())
        if repo is None or (repo.private and not self.authorized(request)):
            raise hub_error(
                404 if repo is None else 401,
                "RepoNotFound",
                "Repository not found",
            )
        return repo

    def revision(self, repo: Repo, rev: str) -> str:
        if rev in ("main", repo.sha) or (len(rev) >= 7 and repo.sha.startswith(rev)):
            return repo.sha
        raise hub_error(404, "RevisionNotFound", f"Invalid rev id: {rev}")

    # ---- /api/models ---------------------------------------------------------------------

    def model_json(
        self, repo: Repo, fields: list[str] | None, blobs: bool = False
    ) -> dict[str, Any]:
        full: dict[str, Any] = {
            "_id": hashlib.md5(repo.repo_id.encode(), usedforsecurity=False).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.author,
            "sha": repo.sha,
            "lastModified": repo.meta.get("lastModified", DEFAULT_DATE),
            "createdAt": repo.meta.get("createdAt", DEFAULT_DATE),
            "private": repo.private,
            "gated": repo.gated,
            "disabled": False,
            "downloads": int(repo.meta.get("downloads", 0)),
            "likes": int(repo.meta.get("likes", 0)),
            "trendingScore": int(repo.meta.get("trendingScore", 0)),
            "library_name": repo.meta.get("library_name"),
            "pipeline_tag": repo.meta.get("pipeline_tag"),
            "tags": repo.tags,
            "usedStorage": repo.used_storage,
            "siblings": [self.sibling(f, blobs) for f in repo.files.values()],
        }
        if fields is None:
            return full
        return {key: full[key] for key in ("_id", "id", *fields) if key in full}

    @staticmethod
    def sibling(entry: RepoFileEntry, blobs: bool) -> dict[str, Any]:
        data: dict[str, Any] = {"rfilename": entry.path}
        if blobs:
            data["size"] = entry.size
            data["blobId"] = entry.git_oid
            if entry.sha256 is not None:
                data["lfs"] = {"sha256": entry.sha256, "size": entry.size, "pointerSize": 134}
        return data

    async def list_models(self, request: web.Request) -> web.Response:
        query = request.query
        search = query.get("search", "").lower()
        author = query.get("author")
        filters = query.getall("filter", [])
        repos = [
            repo
            for repo in self.repos.values()
            if not repo.private
            and search in repo.repo_id.lower()
            and (author is None or repo.author.lower() == author.lower())
            and all(tag in repo.tags for tag in filters)
        ]
        sort = query.get("sort")
        if sort:
            descending = query.get("direction", "-1") == "-1"
            repos.sort(key=lambda r: sort_key(r, sort), reverse=descending)
        limit = int(query.get("limit", "1000"))
        cursor = int(query.get("cursor", "0"))
        page = repos[cursor : cursor + limit]
        expand = query.getall("expand", [])
        if expand:
            fields: list[str] | None = expand
        elif query.get("full") in ("true", "True", "1"):
            fields = None
        else:
            fields = [
                "likes", "trendingScore", "private", "downloads", "tags",
                "pipeline_tag", "library_name", "createdAt", "modelId",
            ]  # fmt: skip
        body = [self.model_json(repo, fields) for repo in page]
        headers = {}
        if cursor + limit < len(repos):
            params = [(k, v) for k, v in query.items() if k != "cursor"]
            params.append(("cursor", str(cursor + limit)))
            next_url = f"{request.scheme}://{request.host}{request.path}?{urlencode(params)}"
            headers["Link"] = f'<{next_url}>; rel="next"'
        return web.json_response(body, headers=headers)

    async def model_info(self, request: web.Request) -> web.Response:
        repo = self.repo(request)
        rev = request.match_info.get("rev", "main")
        self.revision(repo, rev)
        blobs = request.query.get("blobs") in ("true", "True", "1")
        expand = request.query.getall("expand", [])
        return web.json_response(self.model_json(repo, expand or None, blobs=blobs))

    async def tree(self, request: web.Request) -> web.Response:
        repo = self.repo(request)
        self.revision(repo, request.match_info["rev"])
        prefix = request.match_info.get("path", "").strip("/")
        recursive = request.query.get("recursive") in ("true", "True", "1")
        entries: list[dict[str, Any]] = []
        for folder in sorted(repo.folders()):
            if in_listing(folder, prefix, recursive):
                entries.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": folder})
        for entry in repo.files.values():
            if in_listing(entry.path, prefix, recursive):
                item: dict[str, Any] = {
                    "type": "file",
                    "oid": entry.git_oid,
                    "size": entry.size,
                    "path": entry.path,
                }
                if entry.sha256 is not None:
                    item["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": 134}
                entries.append(item)
        if prefix and not entries and prefix not in repo.files:
            raise hub_error(404, "EntryNotFound", f"{prefix} does not exist", repo.sha)
        return web.json_response(entries)

    # ---- files ---------------------------------------------------------------------------

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        repo = self.repo(request)
        sha = self.revision(repo, request.match_info["rev"])
        path = request.match_info["path"]
        entry = repo.files.get(path)
        if entry is None:
            raise hub_error(404, "EntryNotFound", f"{path} does not exist", sha)
        if repo.gated and not self.authorized(request):
            raise hub_error(
                401,
                "GatedRepo",
                f"Access to model {repo.repo_id} is restricted. You must have access to it "
                "and be authenticated to access it. Please log in.",
                sha,
            )
        headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if entry.sha256 is not None and self.use_cdn:
            other = "localhost" if request.url.host != "localhost" else "127.0.0.1"
            port = request.url.port
            signed = urlencode({"repo": repo.repo_id, "path": path, "X-Amz-Signature": "x"})
            headers.update(
                {
                    "Location": f"http://{other}:{port}/_cdn/{entry.sha256}?{signed}",
                    "X-Linked-Etag": f'"{entry.sha256}"',
                    "X-Linked-Size": str(entry.size),
                    "ETag": f'W/"{entry.git_oid}"',
                    "Content-Length": "0",
                }
            )
            return web.Response(status=302, headers=headers)
        headers["ETag"] = f'"{entry.etag}"'
        return await self.send_file(request, entry, headers)

    async def cdn(self, request: web.Request) -> web.StreamResponse:
        repo = self.repos.get(request.query.get("repo", "").lower())
        entry = repo.files.get(request.query.get("path", "")) if repo else None
        if entry is None or entry.sha256 != request.match_info["sha"]:
            return web.Response(status=403, text="signature does not match")
        return await self.send_file(request, entry, {"ETag": f'"{entry.sha256}"'})

    async def send_file(
        self, request: web.Request, entry: RepoFileEntry, headers: dict[str, str]
    ) -> web.StreamResponse:
        headers = {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        start, end = 0, entry.size - 1
        status = 200
        spec = request.headers.get("Range")
        if spec is not None:
            parsed = parse_range(spec, entry.size)
            if parsed is None:
                headers["Content-Range"] = f"bytes */{entry.size}"
                return web.Response(status=416, headers=headers)
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        length = max(0, end - start + 1)
        headers["Content-Length"] = str(length)
        if request.method == "HEAD":
            return web.Response(status=status, headers=headers)
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        sent = 0
        began = time.monotonic()
        with entry.source.open("rb") as handle:
            handle.seek(start)
            while sent < length:
                drop = self.controls.drop_after_bytes
                if drop is not None and sent >= drop:
                    assert request.transport is not None
                    request.transport.close()  # a network cut: the client sees a short body
                    return response
                rate = self.controls.bytes_per_second
                size = min(CHUNK if rate else FAST_CHUNK, length - sent)
                if drop is not None:
                    size = min(size, max(1, drop - sent))
                data = handle.read(size)
                if sent == 0 and start == 0 and entry.path == self.controls.corrupt_path and data:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                await response.write(data)
                sent += len(data)
                if rate:
                    ahead = sent / rate - (time.monotonic() - began)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        await response.write_eof()
        return response

    # ---- test controls -------------------------------------------------------------------

    async def requests(self, request: web.Request) -> web.Response:
        return web.json_response(self.log)

    async def configure(self, request: web.Request) -> web.Response:
        self.controls.update(await request.json())
        return web.json_response(self.controls.__dict__)

    async def reload(self, request: web.Request) -> web.Response:
        self.repos = load_repos(self.root)
        return web.json_response(sorted(r.repo_id for r in self.repos.values()))

    async def reset(self, request: web.Request) -> web.Response:
        self.log.clear()
        self.controls = Controls(**self.initial.__dict__)
        return web.json_response(self.controls.__dict__)


def sort_key(repo: Repo, sort: str) -> Any:
    if sort in ("lastModified", "last_modified"):
        return repo.meta.get("lastModified", DEFAULT_DATE)
    if sort in ("createdAt", "created_at"):
        return repo.meta.get("createdAt", DEFAULT_DATE)
    if sort in ("downloads", "likes", "trendingScore"):
        return int(repo.meta.get(sort, 0))
    raise hub_error(400, None, f"invalid sort: {sort}")


def in_listing(path: str, prefix: str, recursive: bool) -> bool:
    if prefix:
        if not path.startswith(prefix + "/"):
            return False
        rest = path[len(prefix) + 1 :]
    else:
        rest = path
    return recursive or "/" not in rest


def parse_range(spec: str, size: int) -> tuple[int, int] | None:
    unit, _, value = spec.partition("=")
    if unit.strip() != "bytes" or "," in value:
        return None
    first, _, last = value.strip().partition("-")
    if first == "":
        if not last.isdigit() or int(last) == 0:
            return None
        return max(0, size - int(last)), size - 1
    if not first.isdigit() or int(first) >= size:
        return None
    end = int(last) if last.isdigit() else size - 1
    return int(first), min(end, size - 1)


class HubError(Exception):
    """An error answered the way the hub does: status, X-Error-Code and X-Error-Message."""

    def __init__(self, status: int, headers: dict[str, str], message: str) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


def hub_error(status: int, code: str | None, message: str, commit: str | None = None) -> HubError:
    headers = {"X-Error-Message": message}
    if code:
        headers["X-Error-Code"] = code
    if commit:
        headers["X-Repo-Commit"] = commit
    return HubError(status, headers, message)


def build_app(emulator: Emulator) -> web.Application:
    @web.middleware
    async def bookkeeping(request: web.Request, handler: Any) -> web.StreamResponse:
        emulator.record(request)
        status = emulator.controls.api_status
        if status is not None and request.path.startswith("/api/"):
            return web.json_response({"error": "emulated outage"}, status=status)
        try:
            response: web.StreamResponse = await handler(request)
        except HubError as exc:
            return web.json_response({"error": str(exc)}, status=exc.status, headers=exc.headers)
        return response

    app = web.Application(middlewares=[bookkeeping])
    repo = "/{org}/{name}"
    app.router.add_get("/api/models", emulator.list_models)
    app.router.add_get("/api/models" + repo, emulator.model_info)
    app.router.add_get("/api/models" + repo + "/revision/{rev}", emulator.model_info)
    app.router.add_get("/api/models" + repo + "/tree/{rev}", emulator.tree)
    app.router.add_get("/api/models" + repo + "/tree/{rev}/{path:.+}", emulator.tree)
    app.router.add_route("HEAD", repo + "/resolve/{rev}/{path:.+}", emulator.resolve)
    app.router.add_get(repo + "/resolve/{rev}/{path:.+}", emulator.resolve, allow_head=False)
    app.router.add_get("/_cdn/{sha}", emulator.cdn)
    app.router.add_get("/_emulator/requests", emulator.requests)
    app.router.add_post("/_emulator/config", emulator.configure)
    app.router.add_post("/_emulator/reset", emulator.reset)
    app.router.add_post("/_emulator/reload", emulator.reload)
    return app


async def serve(args: argparse.Namespace) -> None:
    initial = Controls(bytes_per_second=args.bytes_per_second)
    emulator = Emulator(
        root=Path(args.root),
        repos=load_repos(Path(args.root)),
        tokens=set(args.token),
        use_cdn=not args.no_cdn,
        log_path=Path(args.log) if args.log else None,
        controls=Controls(**initial.__dict__),
        initial=initial,
    )
    runner = web.AppRunner(build_app(emulator), access_log=None, handler_cancellation=True)
    await runner.setup()
    # Both loopback names: the "CDN" lives on the other one, and either may resolve first.
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    with contextlib.suppress(OSError):
        await web.TCPSite(runner, "::1", port).start()
    print(f"READY http://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="folder of fixture repos ROOT/org/name/")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log", help="append one JSON line per request to this file")
    parser.add_argument("--bytes-per-second", type=int, default=0, help="throttle file bodies")
    parser.add_argument("--token", action="append", default=[], help="a token valid for gates")
    parser.add_argument("--no-cdn", action="store_true", help="serve LFS files without redirect")
    asyncio.run(serve(parser.parse_args(argv)))


# ---- test-side helpers (standard library + httpx only when used) ----------------------------


@dataclass
class EmulatorProcess:
    """A running emulator subprocess, as the tests drive it."""

    process: subprocess.Popen[str]
    url: str
    log_path: Path

    def requests(self) -> list[dict[str, Any]]:
        """The request log from the file, so it is complete even after a kill."""
        if not self.log_path.exists():
            return []
        lines = self.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def file_requests(self, suffix: str = "") -> list[dict[str, Any]]:
        """GETs of file bodies (resolve or CDN), optionally only those whose path ends so."""
        result = []
        for entry in self.requests():
            if entry["method"] != "GET":
                continue
            is_body = "/resolve/" in entry["path"] or entry["path"].startswith("/_cdn/")
            target = entry["path"] + "?" + entry["query"]
            if is_body and (not suffix or quote(suffix) in target or suffix in target):
                result.append(entry)
        return result

    def configure(self, **values: Any) -> None:
        import httpx

        httpx.post(f"{self.url}/_emulator/config", json=values, timeout=5).raise_for_status()

    def reload(self) -> None:
        """Rescan the fixture folder (after a test published a repo into it)."""
        import httpx

        httpx.post(f"{self.url}/_emulator/reload", timeout=10).raise_for_status()

    def reset(self) -> None:
        import httpx

        httpx.post(f"{self.url}/_emulator/reset", timeout=5).raise_for_status()
        self.log_path.write_text("")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self._close_pipe()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._close_pipe()

    def _close_pipe(self) -> None:
        """The READY line's pipe: left open, it is a ResourceWarning when collected."""
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_emulator(
    root: Path,
    log_path: Path,
    *,
    bytes_per_second: int = 0,
    tokens: tuple[str, ...] = (),
    cdn: bool = True,
    port: int = 0,
) -> EmulatorProcess:
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--root",
        str(root),
        "--log",
        str(log_path),
        "--port",
        str(port),
        "--bytes-per-second",
        str(bytes_per_second),
    ]
    for token in tokens:
        argv += ["--token", token]
    if not cdn:
        argv.append("--no-cdn")
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=_clean_env())
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("READY "):
        process.kill()
        process.wait(timeout=10)
        process.stdout.close()
        raise RuntimeError(f"hub emulator did not start: {line!r}")
    return EmulatorProcess(process=process, url=line.split()[1], log_path=log_path)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MLX_MANAGER_"))}


@contextlib.contextmanager
def running_emulator(root: Path, log_path: Path, **kwargs: Any) -> Iterator[EmulatorProcess]:
    emulator = start_emulator(root, log_path, **kwargs)
    try:
        yield emulator
    finally:
        emulator.stop()


if __name__ == "__main__":
    main()
