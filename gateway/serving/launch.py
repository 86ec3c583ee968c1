"""From a profile to a launch: the argv (mlx-openai-server's command line, or a profile's own
command), its port, environment, health URL and log file, as one `LaunchSpec`.

The installed server's `launch --help` is read once, so a profile asking for an option that
version lacks is refused with a message naming the flag and the version, instead of a server
that dies at start with a usage error buried in its log.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.errors import Unprocessable
from gateway.hub.cache import resolve_model_folder
from gateway.serving.errors import StartFailed
from gateway.serving.logfiles import log_path
from gateway.serving.process import LaunchSpec, pick_port, port_is_free
from gateway.settings import Settings
from gateway.tables import ServerProfile

BACKEND_NAME = "mlx-openai-server"
PLACEHOLDERS = ("port", "host", "model_path", "name")
# Flags whose value the gateway must control: a later repeat in extra_args would win.
GATEWAY_OWNED_FLAGS = frozenset(
    {"--host", "--port", "--model-path", "--served-model-name", "--model-type", "--config"}
)
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
_CHOICES = re.compile(r"(--[a-z][a-z0-9-]*)\s+\[([^\]]+)\]")
_VERSION = re.compile(r"[Vv]ersion:?\s*v?(\d+(?:\.\d+)+\S*)")


class BackendUnavailable(Unprocessable):
    code = "backend_unavailable"


@dataclass(frozen=True, slots=True)
class BackendInfo:
    executable: str
    version: str
    flags: frozenset[str]
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def require(self, flag: str, value: str | None = None) -> None:
        if flag not in self.flags:
            raise Unprocessable(
                f"{flag} is not supported by the installed {BACKEND_NAME} {self.version}; "
                "remove it from the profile or upgrade the model server",
                code="unsupported_option",
            )
        allowed = self.choices.get(flag)
        if value is not None and allowed and value not in allowed:
            raise Unprocessable(
                f"{flag} {value!r} is not supported by the installed {BACKEND_NAME} "
                f"{self.version}; choose one of: {', '.join(allowed)}",
                code="unsupported_option",
            )


def parse_help(executable: str, text: str) -> BackendInfo:
    version_match = _VERSION.search(text)
    choices = {
        flag: tuple(option.strip() for option in options.split("|"))
        for flag, options in _CHOICES.findall(text)
    }
    return BackendInfo(
        executable=executable,
        version=version_match.group(1) if version_match else "(unknown version)",
        flags=frozenset(_FLAG.findall(text)),
        choices=choices,
    )


def find_backend(settings: Settings) -> str | None:
    """MLX_MANAGER_BACKEND_BIN, else `.venv-backend` (here or beside the package), else PATH."""
    if settings.backend_bin:
        return settings.backend_bin
    bin_dir = "Scripts" if sys.platform == "win32" else "bin"
    project_root = Path(__file__).resolve().parent.parent
    for root in (Path.cwd(), project_root):
        candidate = root / ".venv-backend" / bin_dir / BACKEND_NAME
        if candidate.exists():
            return str(candidate)
    return shutil.which(BACKEND_NAME)


class BackendProbe:
    """Reads `launch --help` once per gateway and remembers the answer."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._info: BackendInfo | None = None
        self._lock = asyncio.Lock()

    async def info(self) -> BackendInfo:
        async with self._lock:
            if self._info is None:
                self._info = await self._probe()
            return self._info

    async def _probe(self) -> BackendInfo:
        executable = find_backend(self._settings)
        if executable is None:
            raise BackendUnavailable(
                f"{BACKEND_NAME} is not installed; run `make backend` "
                "or set MLX_MANAGER_BACKEND_BIN"
            )
        code, text = await _run(executable, "launch", "--help")
        if code != 0 or "--model-path" not in text:
            raise BackendUnavailable(f"{executable} launch --help failed:\n{text[-2000:]}")
        # The version is printed by `--version` (mlx-openai-server prints a banner with it).
        _, version_text = await _run(executable, "--version")
        return parse_help(executable, version_text + "\n" + text)


async def _run(executable: str, *args: str) -> tuple[int, str]:
    try:
        proc = await asyncio.create_subprocess_exec(
            executable,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    except (OSError, TimeoutError) as exc:
        command = " ".join((executable, *args))
        raise BackendUnavailable(f"could not run {command}: {exc}") from exc
    return proc.returncode or 0, output.decode("utf-8", errors="replace")


def fill_placeholders(argv: list[str], values: dict[str, str]) -> list[str]:
    """Replace {port}, {host}, {model_path} and {name}; other braces pass through untouched."""
    filled = []
    for arg in argv:
        for key in PLACEHOLDERS:
            arg = arg.replace("{" + key + "}", values[key])
        filled.append(arg)
    return filled


def build_command(
    profile: ServerProfile,
    *,
    port: int,
    model_folder: str,
    backend: BackendInfo | None,
    log_level: str = "INFO",
    prompt_cache_dir: str | None = None,
) -> list[str]:
    """The argv for one server. `backend` is required unless the profile has a `command`."""
    if profile.command:
        values = {"port": str(port), "host": "127.0.0.1", "model_path": model_folder}
        return fill_placeholders(list(profile.command), {**values, "name": profile.name})
    if backend is None:
        raise BackendUnavailable(f"{BACKEND_NAME} is not installed")
    argv = [backend.executable, "launch"]

    def add(flag: str, value: str | None = None) -> None:
        backend.require(flag, value)
        argv.append(flag)
        if value is not None:
            argv.append(value)

    add("--model-path", model_folder)
    add("--model-type", profile.model_type)
    add("--served-model-name", profile.name)
    add("--host", "127.0.0.1")
    add("--port", str(port))
    if profile.context_length is not None:
        add("--context-length", str(profile.context_length))
    if profile.tool_call_parser:
        add("--tool-call-parser", profile.tool_call_parser)
    if profile.reasoning_parser:
        add("--reasoning-parser", profile.reasoning_parser)
    if profile.enable_auto_tool_choice:
        add("--enable-auto-tool-choice")
    if profile.chat_template_file:
        add("--chat-template-file", profile.chat_template_file)
    if profile.trust_remote_code:
        add("--trust-remote-code")
    if "--log-level" in backend.flags:
        add("--log-level", log_level.upper())
    if "--no-log-file" in backend.flags:
        add("--no-log-file")
    if prompt_cache_dir and "--prompt-cache-dir" in backend.flags:
        # Its default is a fresh /tmp folder per process that a killed server leaves behind.
        add("--prompt-cache-dir", prompt_cache_dir)
    for arg in profile.extra_args:
        flag = arg.split("=", 1)[0]
        if flag in GATEWAY_OWNED_FLAGS:
            raise Unprocessable(
                f"{flag} is set by the gateway (servers listen on 127.0.0.1 on a port it "
                "chooses); use the profile's own fields instead of extra_args",
                param="extra_args",
                code="reserved_option",
            )
        if arg.startswith("--"):
            backend.require(flag)
    argv.extend(profile.extra_args)
    return argv


# ---- the whole launch: argv, port, environment ---------------------------------------------


async def launch_spec(
    settings: Settings,
    profile: ServerProfile,
    probe: BackendProbe,
    claim_port: Callable[[ServerProfile], int],
    log_file: Path,
) -> LaunchSpec:
    """Everything needed to launch `profile`'s server.

    `claim_port` chooses the port and records it as taken; it is called after the last await
    here, so two starts at once can never pick the same port (the second would see the first's
    /health and think itself ready).
    """
    folder = await asyncio.to_thread(
        resolve_model_folder, profile.model_path, settings.hf_cache_path
    )
    if folder is None and not profile.command:
        raise StartFailed(
            f"model {profile.model_path!r} is neither a local folder nor in the "
            "Hugging Face cache; download it first (POST /api/downloads)"
        )
    backend: BackendInfo | None = None if profile.command else await probe.info()
    cache_dir = prompt_cache_dir(settings, profile.name)
    await asyncio.to_thread(_reset_folder, cache_dir)
    port = claim_port(profile)  # no await from here on
    argv = build_command(
        profile,
        port=port,
        model_folder=str(folder) if folder else profile.model_path,
        backend=backend,
        log_level="DEBUG" if settings.log_level == "debug" else "INFO",
        prompt_cache_dir=str(cache_dir),
    )
    env = {"PYTHONUNBUFFERED": "1", **profile.env}
    if settings.hf_cache_path:
        env.setdefault("HF_HUB_CACHE", str(settings.hf_cache_path))
    if settings.offline_mode:
        env.setdefault("HF_HUB_OFFLINE", "1")
    health = profile.health_path if profile.health_path.startswith("/") else "/health"
    return LaunchSpec(
        argv=argv,
        port=port,
        health_url=f"http://127.0.0.1:{port}{health}",
        log_path=log_file,
        env=env,
    )


def choose_port(profile: ServerProfile, taken: set[int], fixed: set[int], start: int) -> int:
    """The profile's own port if free, else the first free one not held or reserved by others.

    `taken`: ports of other servers that are alive; `fixed`: every profile's configured port.
    """
    if profile.port is not None:
        if profile.port in taken or not port_is_free(profile.port):
            raise StartFailed(f"port {profile.port} is already in use; free it or unset port")
        return profile.port
    return pick_port(start, taken | fixed)


def prompt_cache_dir(settings: Settings, profile_name: str) -> Path:
    """The server's prompt cache: emptied at each start and removed at each stop."""
    return settings.home / "prompt-cache" / log_path(Path(), profile_name).stem


def _reset_folder(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
