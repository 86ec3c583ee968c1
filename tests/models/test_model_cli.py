"""`mlx-manager model`: pull in a real process (and Ctrl-C it, then resume), list, rm, search."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from huggingface_hub import snapshot_download
from typer.testing import CliRunner

from gateway.cli import app
from tests.conftest import bearer
from tests.support.hub_emulator import EmulatorProcess
from tests.support.hub_fixtures import BIG, GATED, TINY, repo_file_hashes
from tests.support.waiting import wait_until_sync

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "gateway", "model"]


@pytest.fixture
def cli_env(hub: EmulatorProcess, tmp_path: Path, cache_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLX_MANAGER_", "HF_"))}
    env.update(
        MLX_MANAGER_HOME=str(tmp_path / "cli-home"),
        MLX_MANAGER_HF_CACHE_PATH=str(cache_dir),
        HF_ENDPOINT=hub.url,
        HF_HUB_DISABLE_TELEMETRY="1",
        COLUMNS="200",  # rich tables: whole model ids on one line
    )
    return env


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """A real `python -m gateway model ...` process."""
    return subprocess.run(
        [*CLI, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def invoke(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The same command in this process (saves an interpreter start where a process adds
    nothing); shaped like `run`'s result."""
    result = CliRunner().invoke(app, ["model", *args], env=env)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def assert_matches_source(hub_root: Path, cache_dir: Path, repo_id: str) -> None:
    snapshot = Path(snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True))
    for path, digest in repo_file_hashes(hub_root, repo_id).items():
        assert hashlib.sha256((snapshot / path).read_bytes()).hexdigest() == digest, path


async def test_pull_then_the_gateway_lists_it_then_rm(
    hub: EmulatorProcess,
    hub_root: Path,
    cache_dir: Path,
    cli_env: dict[str, str],
    client: httpx.AsyncClient,
    admin_token: str,
) -> None:
    before = await client.get("/api/models/local", headers=bearer(admin_token))
    assert before.json() == []  # the gateway has looked at (and cached) the empty cache

    pulled = run(cli_env, "pull", TINY)
    assert pulled.returncode == 0, pulled.stderr
    assert "snapshots" in pulled.stdout
    assert_matches_source(hub_root, cache_dir, TINY)

    listed = await asyncio.to_thread(invoke, cli_env, "list")
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if TINY in line)
    assert "llama" in line
    assert "4-bit" in line

    # The running gateway sees the CLI's pull at once.
    local = (await client.get("/api/models/local", headers=bearer(admin_token))).json()
    assert [m["id"] for m in local] == [TINY]
    assert local[0]["characteristics"]["kind"] == "lm"
    found = await client.get(
        "/api/models/search", params={"query": "tiny-llama"}, headers=bearer(admin_token)
    )
    assert found.json()[0]["downloaded"] is True, (found.json(), local)

    removed = await asyncio.to_thread(invoke, cli_env, "rm", TINY)
    assert removed.returncode == 1  # not a terminal: must be confirmed with --yes
    assert "--yes" in removed.stderr
    removed = await asyncio.to_thread(invoke, cli_env, "rm", TINY, "--yes")
    assert removed.returncode == 0, removed.stderr
    assert not any(cache_dir.glob("models--*"))
    assert (await client.get("/api/models/local", headers=bearer(admin_token))).json() == []


def test_ctrl_c_keeps_partial_files_and_the_next_pull_resumes(
    hub: EmulatorProcess, hub_root: Path, cache_dir: Path, cli_env: dict[str, str]
) -> None:
    hub.configure(bytes_per_second=500_000)
    process = subprocess.Popen(
        [*CLI, "pull", BIG],
        cwd=ROOT,
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def partly_downloaded() -> bool:
        assert process.poll() is None, process.communicate()
        sizes = (p.stat().st_size for p in cache_dir.rglob("*.incomplete"))
        return max(sizes, default=0) >= 400_000

    with process:  # its pipes closed and the process reaped, also when an assertion fails
        try:
            wait_until_sync(partly_downloaded, timeout=60, message="400 kB of a partial file")
            process.send_signal(signal.SIGINT)
            _out, err = process.communicate(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 130, err
    assert f"run `mlx-manager model pull {BIG}` again to resume" in " ".join(err.split())
    kept = {
        p.name.removesuffix(".incomplete"): p.stat().st_size
        for p in cache_dir.rglob("*.incomplete")
    }
    assert kept
    assert max(kept.values()) >= 400_000

    hub.configure(bytes_per_second=0)
    requests_before = len(hub.requests())
    pulled = invoke(cli_env, "pull", BIG)
    assert pulled.returncode == 0, pulled.stderr
    resumed = {
        r["path"].removeprefix("/_cdn/"): r["range"]
        for r in hub.requests()[requests_before:]
        if r["path"].startswith("/_cdn/")
    }
    for etag, size in kept.items():
        if size:
            assert resumed[etag] == f"bytes={size}-", (resumed, kept)
    assert_matches_source(hub_root, cache_dir, BIG)
    assert not list(cache_dir.rglob("*.incomplete"))


def test_search_and_clear_errors(hub: EmulatorProcess, cli_env: dict[str, str]) -> None:
    found = invoke(cli_env, "search", "qwen3")
    assert found.returncode == 0, found.stderr
    assert BIG in found.stdout
    assert TINY not in found.stdout

    gated = invoke(cli_env, "pull", GATED)
    assert gated.returncode == 1
    assert "gated model" in gated.stderr
    assert "HF_TOKEN" in gated.stderr

    missing = invoke(cli_env, "pull", "nobody/nothing")
    assert missing.returncode == 1
    assert "no model repo nobody/nothing" in " ".join(missing.stderr.split())

    offline = invoke({**cli_env, "MLX_MANAGER_OFFLINE_MODE": "true"}, "pull", TINY)
    assert offline.returncode == 1
    assert "offline mode is on" in offline.stderr
    assert not [r for r in hub.requests() if TINY in r["path"]]


def test_pulled_tiny_model_is_ready_for_a_jit_profile(
    cache_dir: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """The real tiny Llama, served by a hub and pulled by the CLI, is what a JIT profile needs:
    found by the (lowercased) name a client sends, described, loadable by its model_path."""
    from gateway.hub.cache import resolve_model_folder
    from gateway.hub.model_info import profile_for_cached_model
    from tests.support.hub_emulator import running_emulator
    from tests.support.hub_fixtures import publish_folder
    from tests.support.tiny_model import build_tiny_model

    repo = "mlx-community/Tiny-Chat-JIT"
    root = tmp_path / "hub"
    publish_folder(root, repo, build_tiny_model(tmp_path / "tiny"))
    with running_emulator(root, tmp_path / "requests.jsonl") as own_hub:
        pulled = invoke({**cli_env, "HF_ENDPOINT": own_hub.url}, "pull", repo)
    assert pulled.returncode == 0, pulled.stderr

    found = profile_for_cached_model(repo.lower(), cache_dir)
    assert found is not None
    assert found.repo_id == repo
    fields = found.profile_fields(repo.lower())
    assert fields == {
        "name": repo.lower(),
        "model_path": repo,
        "model_type": "lm",
        "tool_call_parser": None,
        "reasoning_parser": None,
        "enable_auto_tool_choice": False,
        "trust_remote_code": False,
    }
    assert found.characteristics.has_chat_template
    assert resolve_model_folder(fields["model_path"], cache_dir) == found.folder
    assert profile_for_cached_model("mlx-community/not-pulled", cache_dir) is None
