"""Typed settings, read once from the environment and a `.env` file.

Every knob is an ``MLX_MANAGER_*`` variable (see CONTRACT.md). A bad value must stop the
gateway at start with a message naming the variable and what it accepts, so settings are
validated here rather than where they are used.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "MLX_MANAGER_"
SECRET_FILE_NAME = "jwt-secret"
MIN_SECRET_BYTES = 32

# Placeholders copied from examples are the most common way a "secret" leaks into production.
KNOWN_PLACEHOLDER_SECRETS = frozenset(
    {
        "change_me_in_production",
        "changeme",
        "change-me",
        "secret",
        "your-secret-key",
        "your_secret_key",
        "replace-me",
        "please-change-me",
    }
)


class SettingsError(Exception):
    """The configuration cannot be used; the message says which variable and why."""


class Settings(BaseSettings):
    """The gateway's configuration. Field names map to ``MLX_MANAGER_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    home: Path = Field(default_factory=lambda: Path.home() / ".mlx-manager")
    database_path: Path | None = None
    database_url: str | None = None

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8080

    jwt_secret: str | None = Field(default=None, repr=False)
    jwt_expire_days: Annotated[int, Field(ge=1, le=365)] = 7

    hf_cache_path: Path | None = None
    hf_organization: str | None = None
    offline_mode: bool = False
    auto_profiles: bool = True

    default_port_start: Annotated[int, Field(ge=1024, le=65000)] = 10240
    max_memory_percent: Annotated[float, Field(gt=0, le=100)] = 80
    max_memory_gb: Annotated[float | None, Field(gt=0)] = None
    idle_ttl: Annotated[float, Field(ge=0)] = 600
    queue_timeout: Annotated[float, Field(gt=0, le=3600)] = 120
    health_check_interval: Annotated[float, Field(gt=0, le=3600)] = 30
    health_check_failures: Annotated[int, Field(ge=1, le=100)] = 3
    start_timeout: Annotated[float, Field(gt=0, le=3600)] = 600
    # After a failed start, requests get its error at once for this long instead of relaunching
    # a server that just died (SDK retries would each launch it again); 0 = retry every time.
    start_failure_backoff: Annotated[float, Field(ge=0, le=3600)] = 30
    stop_timeout: Annotated[float, Field(gt=0, le=600)] = 10
    backend_bin: str | None = None
    log_max_bytes: Annotated[int, Field(ge=4096)] = 10 * 1024 * 1024
    log_backups: Annotated[int, Field(ge=0, le=100)] = 3

    max_body_mb: Annotated[float, Field(gt=0, le=4096)] = 100
    max_admin_body_bytes: Annotated[int, Field(ge=1024, le=100 * 1024 * 1024)] = 1024 * 1024
    # Longest `model` a /v1 request may name (UTF-8 bytes); profile names are at most 200.
    max_model_name_bytes: Annotated[int, Field(ge=200, le=4096)] = 256
    # Seconds to read a model server's /openapi.json (asked after a 404: is it the endpoint?).
    endpoint_probe_timeout: Annotated[float, Field(gt=0, le=600)] = 5
    metrics_public: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_json: bool = False

    login_max_failures: Annotated[int, Field(ge=1, le=1000)] = 5
    login_window_seconds: Annotated[float, Field(gt=0, le=86400)] = 300
    login_max_failures_per_address: Annotated[int, Field(ge=1, le=100000)] = 50
    register_max_per_address: Annotated[int, Field(ge=1, le=100000)] = 10
    register_window_seconds: Annotated[float, Field(gt=0, le=86400)] = 3600
    max_pending_users: Annotated[int, Field(ge=0, le=1_000_000)] = 100

    # Cached logins (gateway/auth.py, gateway/revocation.py). On PostgreSQL, while the
    # revocation listener is connected, other replicas' changes arrive by NOTIFY and a cached
    # login is trusted this long; otherwise (SQLite, or the listener reconnecting) only the
    # backstop TTL, so a change made elsewhere (a replica, the CLI) counts after at most that.
    auth_cache_ttl: Annotated[float, Field(ge=0, le=3600)] = 60
    auth_cache_backstop_ttl: Annotated[float, Field(ge=0, le=60)] = 1
    # While the database is unreachable, a cached login loaded at most this long ago keeps
    # serving (an uncached one gets 503); 0 = none does.
    auth_stale_max_age: Annotated[float, Field(ge=0, le=86400)] = 300
    # An auth lookup slower than this counts as the database being unreachable.
    auth_db_timeout: Annotated[float, Field(gt=0, le=60)] = 5
    # GET /ready's `SELECT 1`, and the revocation listener's keepalive round trip.
    ready_timeout: Annotated[float, Field(gt=0, le=60)] = 2
    # Seconds between keepalive round trips on the listener's connection (a silently dead
    # connection is found within this plus READY_TIMEOUT), and the longest wait between
    # reconnection attempts (the wait starts at 0.1 s and doubles).
    revocation_ping_interval: Annotated[float, Field(gt=0, le=3600)] = 5
    revocation_reconnect_max: Annotated[float, Field(gt=0, le=300)] = 5

    # Usage records (gateway/usage.py, gateway/usage_spool.py): each is spooled to
    # HOME/usage-spool before its response ends and committed to the database every second.
    # The spool's cap (per gateway process): at it, /v1 requests are refused with 503 until the
    # database takes the backlog (a record is never dropped). Seconds between commits; the
    # longest wait between commit attempts while the database fails (the wait starts at the
    # interval and doubles); how long one batch's insert may take before it counts as failed
    # (and is retried, doubling nothing).
    usage_spool_max_bytes: Annotated[int, Field(ge=1024 * 1024, le=1024**4)] = 1024**3
    usage_flush_interval: Annotated[float, Field(gt=0, le=3600)] = 1
    usage_retry_max: Annotated[float, Field(gt=0, le=3600)] = 10
    usage_flush_timeout: Annotated[float, Field(gt=0, le=3600)] = 30

    # The HTTP edge (gateway/edge.py): bounds on what a client may hold before the app runs.
    max_header_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024)] = 32 * 1024
    header_timeout: Annotated[float, Field(gt=0, le=3600)] = 30
    body_timeout: Annotated[float, Field(gt=0, le=3600)] = 60
    # Comma-separated Host names served (gateway/hosts.py); unset = loopback + bind address.
    allowed_hosts: str | None = None
    # Comma-separated proxy addresses/networks whose X-Forwarded-* headers are believed
    # (uvicorn's forwarded_allow_ips); unset = none, so a client cannot pick its own address.
    trusted_proxies: str | None = None

    # Nodes (gateway/fleet, gateway/node): model servers on other machines. The shared secret
    # nodes and the gateway present to each other; unset = nodes disabled (this machine only).
    node_token: str | None = Field(default=None, repr=False)
    # Gateway side: per-node secrets, "name=token,name=token": a node with its own token may
    # heartbeat only under its name and receives only its profiles; the gateway calls it with
    # that token. With or without the shared NODE_TOKEN.
    node_tokens: str | None = Field(default=None, repr=False)
    # Gateway side: a node silent this long is out of rotation; an open stream from a node that
    # sends nothing for this long ends with an SSE error event; how a profile with no ready
    # server is placed (binpack: the fullest node that fits; spread: the emptiest).
    node_timeout: Annotated[float, Field(gt=0, le=3600)] = 6
    node_stream_idle_timeout: Annotated[float, Field(gt=0, le=3600)] = 15
    placement: Literal["binpack", "spread"] = "binpack"
    # Whether this machine is the node `local` too: profiles whose `nodes` name `local` or are
    # ["*"] may run here. Off on a replica that cannot run models (no Apple silicon).
    local_node: bool = True
    # Node side (`mlx-manager node`): where the gateway is, this node's name (default: the
    # hostname), how the gateway reaches it (default http://<host>:<port>), and seconds
    # between heartbeats (the gateway also re-reads the nodes table this often).
    gateway_url: str | None = Field(default=None, pattern=r"^https?://\S+$", max_length=2000)
    node_name: str | None = Field(
        default=None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][\w.:@+-]*$"
    )
    node_advertise_url: str | None = Field(default=None, pattern=r"^https?://\S+$", max_length=2000)
    heartbeat_interval: Annotated[float, Field(gt=0, le=60)] = 2

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("jwt_secret", mode="after")
    @classmethod
    def _check_secret(cls, value: str | None) -> str | None:
        if value is None:
            return None
        check_secret_strength(value)
        return value

    @field_validator("node_name", mode="after")
    @classmethod
    def _check_node_name(cls, value: str | None) -> str | None:
        if value is not None and value.lower() == "local":
            raise ValueError("'local' names the gateway's own machine; name this node otherwise")
        return value

    @field_validator("node_tokens", mode="after")
    @classmethod
    def _check_node_tokens(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            shared = info.data.get("node_token")
            for name, token in parse_node_tokens(value).items():
                if token == shared:
                    raise ValueError(
                        f"node {name!r} has the shared MLX_MANAGER_NODE_TOKEN as its own "
                        "token: give it one of its own"
                    )
        return value

    @field_validator("node_token", mode="after")
    @classmethod
    def _check_node_token(cls, value: str | None) -> str | None:
        if value is None:
            return None
        check_secret_strength(value)
        return value

    @model_validator(mode="after")
    def _derive_paths(self) -> Settings:
        if self.database_path is None:
            self.database_path = self.home / "mlx-manager.db"
        else:
            self.database_path = self.database_path.expanduser()
        if self.hf_cache_path is not None:
            self.hf_cache_path = self.hf_cache_path.expanduser()
        return self

    @cached_property
    def node_token_map(self) -> dict[str, str]:
        """Each node's own token (MLX_MANAGER_NODE_TOKENS), by node name; parsed once (every
        request to a node looks its token up here)."""
        return parse_node_tokens(self.node_tokens) if self.node_tokens else {}

    @property
    def nodes_enabled(self) -> bool:
        """Whether this gateway takes nodes: a shared node token, or per-node ones."""
        return self.node_token is not None or bool(self.node_tokens)

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    def prepare_home(self) -> None:
        """HOME and its logs folder, private to this user (see `make_private_dir`)."""
        make_private_dir(self.home)
        make_private_dir(self.logs_dir)

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.database_path}"

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    def resolved_jwt_secret(self) -> str:
        """The signing key: the configured one, else the one generated on first start.

        Generating it lazily (not at import) keeps tests and `--help` free of side effects;
        keeping it in a 0600 file keeps tokens valid across restarts.
        """
        if self.jwt_secret is not None:
            return self.jwt_secret
        return load_or_create_secret(self.home / SECRET_FILE_NAME)


def check_secret_strength(value: str) -> None:
    if len(value.encode()) < MIN_SECRET_BYTES:
        raise ValueError(
            f"must be at least {MIN_SECRET_BYTES} bytes long; "
            "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
        )
    if value.strip().lower() in KNOWN_PLACEHOLDER_SECRETS or "change_me" in value.lower():
        raise ValueError("is a known placeholder; set a random value or unset it")


def parse_node_tokens(value: str) -> dict[str, str]:
    """ "studio-1=TOKEN,studio-2=TOKEN" by name; errors name the entry, never its token."""
    tokens: dict[str, str] = {}
    for number, entry in enumerate(value.split(","), start=1):
        name, sep, token = entry.strip().partition("=")
        name = name.strip()
        if not sep or not _NODE_NAME.fullmatch(name):
            raise ValueError(
                f"entry {number} is not name=token (names: letters, digits, _ . : @ + -)"
            )
        if name.lower() == "local":
            raise ValueError(f"entry {number}: 'local' names the gateway's own machine")
        if name in tokens:
            raise ValueError(f"node {name!r} is listed twice")
        try:
            check_secret_strength(token)
        except ValueError as exc:
            raise ValueError(f"the token of node {name!r} {exc}") from None
        if token in tokens.values():
            raise ValueError(f"node {name!r} has the token of another node: give each its own")
        tokens[name] = token
    return tokens


_NODE_NAME = re.compile(r"[A-Za-z0-9][\w.:@+-]{0,199}")


def make_private_dir(path: Path) -> None:
    """Create `path` (mode 0700), or take group and other access off it if it exists.

    HOME holds the database (password hashes, profile env secrets), the JWT secret and the
    model servers' logs: nobody but the gateway's user has business there. Existing installs
    made before this get tightened at start.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    make_private(path)


def make_private(path: Path) -> None:
    """Take group and other permissions off `path`, if it exists; never widen anything."""
    try:
        current = stat.S_IMODE(path.stat().st_mode)
        if current & 0o077:
            path.chmod(current & ~0o077)
    except FileNotFoundError:
        pass


def load_or_create_secret(path: Path) -> str:
    """Read the generated secret, creating it with mode 0600 exactly once."""
    make_private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        value = path.read_text().strip()
        try:
            check_secret_strength(value)
        except ValueError as exc:
            raise SettingsError(
                f"the secret in {path} {exc}; delete the file to regenerate"
            ) from exc
        return value
    value = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


def load_settings(**overrides: object) -> Settings:
    """Build settings, turning pydantic's report into one readable message per variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from exc


def describe_validation_error(exc: ValidationError) -> str:
    lines = ["invalid configuration:"]
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "settings"
        variable = ENV_PREFIX + field.upper()
        message = error["msg"].removeprefix("Value error, ")
        value = error.get("input")
        # A secret's value is never shown; nor is a model-level error's input (every setting).
        hidden = not error["loc"] or "secret" in field or "token" in field
        shown = "" if hidden else f" (got {value!r})"
        lines.append(f"  {variable}: {message}{shown}")
    return "\n".join(lines)
