"""Helpers for the model-server tests: a real gateway with an admin, stub profiles, polling.

Everything runs for real: the gateway app under uvicorn on a real port (in the test's loop),
and each profile's model server is `tests/support/stub_server.py` as a real subprocess on a
real port. Nothing here sleeps to wait for something: `wait_until` polls with a deadline.
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from gateway.serving.manager import ManagedServer, ServerManager
from gateway.settings import Settings
from tests.conftest import bearer, make_settings
from tests.support.gateway import GatewayHandle, running_gateway
from tests.support.stub_server import STUB_SCRIPT, read_events

ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "admin-password"
GIB = 1024**3


class WaitTimeout(AssertionError):
    pass


async def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 15.0,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    """Poll `predicate` (plain or async) until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"{message} not met within {timeout} s (last value: {value!r})")
        await asyncio.sleep(interval)


def port_base() -> int:
    """A random first port for model servers, below Linux's ephemeral range (32768+), so
    concurrent test runs on one machine rarely race for the same port."""
    return random.randrange(20000, 31000, 10)


def stub_command(*options: str) -> list[str]:
    """A gateway `command` profile that runs the stub with the gateway's placeholders."""
    return [sys.executable, str(STUB_SCRIPT), "--port", "{port}", "--name", "{name}", *options]


def process_gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie waiting for its reaper counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def process_alive(pid: int) -> bool:
    return not process_gone(pid)


def count_events(path: Path, event: str) -> int:
    return sum(1 for e in read_events(path) if e["event"] == event)


def sse_data(text: str) -> list[str]:
    """The `data:` payloads of an SSE body, in order."""
    return [
        line.removeprefix("data:").strip() for line in text.splitlines() if line.startswith("data:")
    ]


def stream_contents(payloads: list[str]) -> list[str]:
    """The content deltas of a chat completion stream's payloads ([DONE] excluded)."""
    out = []
    for payload in payloads:
        if payload == "[DONE]":
            continue
        for choice in json.loads(payload).get("choices", []):
            content = choice.get("delta", {}).get("content")
            if content:
                out.append(content)
    return out


def chat_body(model: str, content: str = "hello", stream: bool = False) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream}


@dataclass
class Env:
    """A running gateway, an HTTP client on it, and an admin token."""

    handle: GatewayHandle
    http: httpx.AsyncClient
    token: str
    tmp: Path
    settings: Settings
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def auth(self) -> dict[str, str]:
        return bearer(self.token)

    @property
    def manager(self) -> ServerManager:
        return self.handle.core.servers

    def managed(self, name: str) -> ManagedServer:
        server = self.manager.resolve(name)
        assert server is not None, name
        return server

    def events_path(self, name: str) -> Path:
        return self.tmp / f"events-{name}.jsonl"

    def started_events(self, name: str) -> int:
        return count_events(self.events_path(name), "started")

    async def create_profile(self, name: str, *stub_options: str, **fields: Any) -> dict[str, Any]:
        """A stub `command` profile whose stub records events in `events_path(name)`."""
        body: dict[str, Any] = {
            "name": name,
            "command": stub_command("--events", str(self.events_path(name)), *stub_options),
            **fields,
        }
        response = await self.http.post("/api/profiles", json=body, headers=self.auth)
        assert response.status_code == 201, response.text
        profile: dict[str, Any] = response.json()
        self.profiles[name] = profile
        return profile

    def profile_id(self, name: str) -> int:
        profile_id: int = self.profiles[name]["id"]
        return profile_id

    async def servers(self) -> list[dict[str, Any]]:
        response = await self.http.get("/api/servers", headers=self.auth)
        assert response.status_code == 200, response.text
        servers: list[dict[str, Any]] = response.json()
        return servers

    async def server(self, name: str) -> dict[str, Any]:
        response = await self.http.get(f"/api/servers/{self.profile_id(name)}", headers=self.auth)
        assert response.status_code == 200, response.text
        server: dict[str, Any] = response.json()
        return server

    async def wait_state(self, name: str, *states: str, timeout: float = 15.0) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            server = await self.server(name)
            return server if server["state"] in states else None

        return await wait_until(check, timeout=timeout, message=f"{name} in {states}")

    async def control(self, name: str, action: str) -> httpx.Response:
        return await self.http.post(
            f"/api/servers/{self.profile_id(name)}/{action}", headers=self.auth
        )

    async def start(self, name: str) -> dict[str, Any]:
        response = await self.control(name, "start")
        assert response.status_code == 200, response.text
        server: dict[str, Any] = response.json()
        assert server["state"] == "ready", server
        return server

    async def chat(self, model: str, content: str = "hello", **extra: Any) -> httpx.Response:
        return await self.http.post(
            "/v1/chat/completions", json={**chat_body(model, content), **extra}, headers=self.auth
        )

    @asynccontextmanager
    async def stream(self, model: str, content: str = "hello") -> AsyncIterator[httpx.Response]:
        """A streaming chat completion, open until the block ends."""
        async with self.http.stream(
            "POST",
            "/v1/chat/completions",
            json=chat_body(model, content, stream=True),
            headers=self.auth,
        ) as response:
            yield response


async def admin_token(http: httpx.AsyncClient) -> str:
    """Register the admin (the first user) unless it exists already, and log it in."""
    credentials = {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    created = await http.post("/api/auth/register", json=credentials)
    assert created.status_code in (201, 409), created.text
    response = await http.post("/api/auth/login", json=credentials)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def env_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"default_port_start": port_base(), "stop_timeout": 5}
    values.update(overrides)
    return make_settings(tmp_path / "home", **values)


_template: tuple[Path, str] | None = None


async def _admin_template() -> tuple[Path, str]:
    """A migrated database holding the admin, and a token for it; made once per test run.

    Every test gateway starts from a copy, so it skips the migrations and the password hashing
    of a registration and a login (most of a gateway's start-up cost in these tests). The
    token stays valid on each copy: same user, same token version, same test JWT secret.
    """
    global _template
    if _template is None:
        root = Path(tempfile.mkdtemp(prefix="mlx-manager-template-"))
        atexit.register(shutil.rmtree, root, True)
        settings = make_settings(root / "home")
        async with (
            running_gateway(settings) as handle,
            httpx.AsyncClient(base_url=handle.url, timeout=60, trust_env=False) as http,
        ):
            token = await admin_token(http)
        assert settings.database_path is not None
        _template = (settings.database_path, token)
    return _template


@asynccontextmanager
async def gateway_env(
    tmp_path: Path, settings: Settings | None = None, **overrides: Any
) -> AsyncIterator[Env]:
    """A real gateway on `settings` (default: test settings plus `overrides`) with an admin."""
    settings = settings or env_settings(tmp_path, **overrides)
    template, token = await _admin_template()
    assert settings.database_path is not None
    if not settings.database_path.exists():
        settings.database_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, settings.database_path)
    async with (
        running_gateway(settings) as handle,
        httpx.AsyncClient(base_url=handle.url, timeout=60, trust_env=False) as http,
    ):
        me = await http.get("/api/auth/me", headers=bearer(token))
        if me.status_code != 200:  # not a copy of the template: register the usual way
            token = await admin_token(http)
        env = Env(handle=handle, http=http, token=token, tmp=tmp_path, settings=settings)
        listed = await http.get("/api/profiles", headers=bearer(token))
        env.profiles = {profile["name"]: profile for profile in listed.json()}
        yield env


async def approved_user(env: Env, email: str = "user@example.com") -> str:
    """A token of an approved, non-admin user."""
    credentials = {"email": email, "password": "user-password"}
    response = await env.http.post("/api/auth/register", json=credentials)
    assert response.status_code == 201, response.text
    user_id = response.json()["id"]
    response = await env.http.patch(
        f"/api/users/{user_id}", json={"status": "approved"}, headers=env.auth
    )
    assert response.status_code == 200, response.text
    response = await env.http.post("/api/auth/login", json=credentials)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


# ---- a stand-in for the installed mlx-openai-server ------------------------------------------

TOOL_CALL_PARSERS = (
    "functiongemma",
    "gemma4",
    "glm4_moe",
    "harmony",
    "hermes",
    "iquest_coder_v1",
    "kimi_k2",
    "longcat_flash_lite",
    "minimax_m2",
    "nemotron3_nano",
    "qwen3",
    "qwen3_coder",
    "qwen3_moe",
    "qwen3_vl",
    "solar_open",
    "step_35",
)
REASONING_PARSERS = (
    "gemma4",
    "glm47_flash",
    "glm4_moe",
    "harmony",
    "hermes",
    "kimi_k2",
    "minimax_m2",
    "mixed_think_tool_handoff",
    "nemotron3_nano",
    "qwen3",
    "qwen3_5",
    "qwen3_moe",
    "qwen3_vl",
    "solar_open",
    "step_35",
)
BACKEND_VERSION = "1.8.1"
# `mlx-openai-server --version` of 1.8.1, verbatim: a banner, no "launch --help" text.
BACKEND_VERSION_TEXT = (
    "\n\u2728 mlx-openai-server - OpenAI Compatible API Server for MLX models \u2728\n"
    + "\u2501" * 42
    + f"\n\U0001f680 Version: {BACKEND_VERSION}\n\n"
)
# `mlx-openai-server launch --help` of 1.8.1, verbatim (the two long choice lists joined in).
BACKEND_HELP = """\
Usage: mlx-openai-server launch [OPTIONS]

  Start the FastAPI/Uvicorn server with the supplied flags.

  When ``--config`` is provided the server launches in multi-handler mode,
  loading all models defined in the YAML file. In this mode per-model CLI
  flags (``--model-path``, ``--model-type``, etc.) are ignored.

  Otherwise the command builds a single-model ``MLXServerConfig`` and calls
  the async ``start`` routine.

Options:
  --config PATH                   Path to a YAML config file for multi-handler
                                  mode. When provided, --model-path and other
                                  per-model flags are ignored.
  --model-path TEXT               Path to the model (required for lm,
                                  multimodal, embeddings, image-generation,
                                  image-edit, whisper model types). With
                                  `image-generation` or `image-edit` model
                                  types, it should be the local path to the
                                  model.
  --model-type [lm|multimodal|image-generation|image-edit|embeddings|whisper]
                                  Type of model to run (lm: text-only,
                                  multimodal: text+vision+audio, image-
                                  generation: flux image generation, image-
                                  edit: flux image edit, embeddings: text
                                  embeddings, whisper: audio transcription)
  --context-length INTEGER        Context length for language models. If not
                                  specified, uses model default. Only works
                                  with `lm` or `multimodal` model types.
  --served-model-name TEXT        Override the model name returned by
                                  /v1/models and accepted in request 'model'
                                  field. Defaults to model_path if not set.
  --port INTEGER                  Port to run the server on
  --host TEXT                     Host to run the server on
  --queue-timeout INTEGER         Request timeout in seconds
  --queue-size INTEGER            Maximum queue size for pending requests
  --quantize INTEGER              Quantization level for the model. Only used
                                  for image-generation and image-edit Flux
                                  models.
  --config-name CONFIG_NAME       Config name of the model. Only used for
                                  image-generation and image-edit models.
  --lora-paths TEXT               Path to the LoRA file(s). Multiple paths
                                  should be separated by commas.
  --lora-scales TEXT              Scale factor for the LoRA file(s). Multiple
                                  scales should be separated by commas.
  --disable-auto-resize           Disable automatic model resizing. Only work
                                  for Vision Language Models.
  --log-file TEXT                 Path to log file. If not specified, logs
                                  will be written to 'logs/app.log' by
                                  default.
  --no-log-file                   Disable file logging entirely. Only console
                                  output will be shown.
  --log-level [DEBUG|INFO|WARNING|ERROR|CRITICAL]
                                  Set the logging level. Default is INFO.
  --enable-auto-tool-choice       Enable automatic tool choice. Only works
                                  with language models.
  --tool-call-parser [{tool_call_parsers}]
                                  Specify tool call parser to use instead of
                                  auto-detection. Only works with language
                                  models.
  --reasoning-parser [{reasoning_parsers}]
                                  Specify reasoning parser to use instead of
                                  auto-detection. Only works with language
                                  models.
  --trust-remote-code             Enable trust_remote_code when loading
                                  models. This allows loading custom code from
                                  model repositories.
  --chat-template-file TEXT       Path to a custom chat template file. Only
                                  works with language models (lm) and
                                  multimodal models.
  --debug                         Enable debug mode for language models. Only
                                  works with language models (lm) and
                                  multimodal models.
  --prompt-cache-size INTEGER     Maximum number of prompt KV cache entries to
                                  store. Only works with language models (lm).
                                  Default is 10.
  --max-bytes INTEGER             Maximum total bytes retained by prompt KV
                                  caches before eviction. Only works with
                                  language models (lm).
  --prompt-cache-dir DIRECTORY    Directory for disk-backed prompt KV cache
                                  payloads. Defaults to a process-local
                                  temporary directory.
  --draft-model-path TEXT         Path to the draft model for speculative
                                  decoding. Only supported with model type
                                  'lm'. When set, --num-draft-tokens controls
                                  how many tokens the draft model generates
                                  per step.
  --num-draft-tokens INTEGER      Number of draft tokens per step when using
                                  speculative decoding (--draft-model-path).
                                  Only supported with model type 'lm'. Default
                                  is 2.
  --kv-bits INTEGER               Number of bits for KV cache quantization
                                  (e.g. 4, 8). Reduces memory usage at the
                                  cost of some quality. Only works with 'lm'
                                  and 'multimodal' model types.
  --kv-group-size INTEGER         Group size for KV cache quantization.
                                  Default is 64.
  --quantized-kv-start INTEGER    Step to begin using a quantized KV cache
                                  when --kv-bits is set. Default is 0.
  --decode-concurrency INTEGER    When a request is batchable, decode that
                                  many requests in parallel. Applies to 'lm'
                                  and 'multimodal' model types. Default is 32.
  --prompt-concurrency INTEGER    When a request is batchable, prefill that
                                  many prompts in parallel. Applies to 'lm'
                                  and 'multimodal' model types. Default is 8.
  --prefill-step-size INTEGER     Maximum tokens processed per prefill step
                                  during batched generation. Applies to 'lm'
                                  and 'multimodal' model types. Default is
                                  2048.
  --disable-batching              Disable continuous batching for LM/VLM
                                  models. Use this when per-request positive
                                  seeds must be honored.
  --max-tokens INTEGER            Default maximum number of tokens to
                                  generate. If omitted, uses model
                                  generation_config.json when available.
  --temperature FLOAT             Default sampling temperature.
  --top-p FLOAT                   Default nucleus sampling (top-p)
                                  probability.
  --top-k INTEGER                 Default top-k sampling parameter.
  --min-p FLOAT                   Default min-p sampling parameter.
  --repetition-penalty FLOAT      Default repetition penalty for token
                                  generation.
  --presence-penalty FLOAT        Default presence penalty for token
                                  generation.
  --xtc-probability FLOAT         Default XTC probability sampling parameter.
  --xtc-threshold FLOAT           Default XTC threshold sampling parameter.
  --seed INTEGER                  Default random seed for generation.
  --repetition-context-size INTEGER
                                  Default repetition context size parameter.
  --help                          Show this message and exit.
""".format(
    tool_call_parsers="|".join(TOOL_CALL_PARSERS),
    reasoning_parsers="|".join(REASONING_PARSERS),
)

_FAKE_BACKEND = """\
#!{python}
# Answers like mlx-openai-server {version}: `--version` and `launch --help`; records each call.
import sys
with open({calls!r}, "a") as handle:
    handle.write(" ".join(sys.argv[1:]) + "\\n")
args = sys.argv[1:]
if args == ["--version"]:
    sys.stdout.write({version_text!r})
elif args == ["launch", "--help"]:
    sys.stdout.write({help!r})
else:
    sys.stderr.write("fake mlx-openai-server: unexpected arguments %r\\n" % (args,))
    sys.exit(2)
"""


def fake_backend(directory: Path) -> Path:
    """An executable that answers `--version` and `launch --help` as mlx-openai-server 1.8.1
    does; every call is appended to `<directory>/backend-calls.txt`."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "mlx-openai-server"
    script.write_text(
        _FAKE_BACKEND.format(
            python=sys.executable,
            version=BACKEND_VERSION,
            calls=str(directory / "backend-calls.txt"),
            version_text=BACKEND_VERSION_TEXT,
            help=BACKEND_HELP,
        )
    )
    script.chmod(0o755)
    return script


def fake_hf_cache(root: Path, repo_id: str, files: dict[str, bytes] | None = None) -> Path:
    """A Hugging Face cache (hub layout) holding one snapshot of `repo_id`; returns the cache."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in (files or {"config.json": b"{}"}).items():
        (snapshot / name).write_bytes(data)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return root
