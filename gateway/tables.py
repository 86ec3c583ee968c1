"""Database tables (SQLModel). The migrations in `gateway/migrations` create exactly these.

Public API shapes live next to the routes that use them; these classes are storage only, so a
password hash or key hash can never leak through a response model by accident.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Integer,
    String,
    text,
)
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from gateway.types import DEFAULT_KEY_SCOPES, utcnow


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that means one instant on every database: written in UTC, read back aware.

    PostgreSQL's timestamptz converts offsets itself, but SQLite keeps text and drops the offset,
    so a value in another zone (a `since` written as +05:00) would compare as the wrong instant
    there. Naive values are taken as UTC, the gateway's own convention.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ts(**kwargs: Any) -> Any:
    """A timestamp column (SQLite stores it as text, PostgreSQL as timestamptz)."""
    nullable = kwargs.pop("nullable", False)
    return Field(sa_column=Column(UTCDateTime(), nullable=nullable), **kwargs)


class User(SQLModel, table=True):
    __tablename__ = "users"
    # Never reuse a deleted user's id: a token minted for them must not fit a newcomer.
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(sa_column=Column(String(320), unique=True, nullable=False, index=True))
    password_hash: str
    is_admin: bool = False
    status: str = Field(default="pending", max_length=16)
    # Bumped on disable or password change: every token carries it, so old ones die at once.
    token_version: int = 0
    created_at: datetime = _ts(default_factory=utcnow)
    last_login_at: datetime | None = _ts(default=None, nullable=True)
    # Optional limits (issue 12): requests and tokens per minute, and tokens per budget period
    # ("day" or "month", UTC). None = unlimited. Counted in `rate_windows`.
    rpm: int | None = None
    tpm: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    token_budget: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    budget_period: str | None = Field(default=None, max_length=8)


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    name: str = Field(max_length=200)
    prefix: str = Field(max_length=16)
    key_hash: str = Field(sa_column=Column(String(64), unique=True, nullable=False))
    models: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    # gateway.types.KEY_SCOPES; keys made before scopes existed have both (migration 0003).
    scopes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_KEY_SCOPES),
        sa_column=Column(JSON, nullable=False, server_default=text("'[\"inference\"]'")),
    )
    expires_at: datetime | None = _ts(default=None, nullable=True)
    created_at: datetime = _ts(default_factory=utcnow)
    last_used_at: datetime | None = _ts(default=None, nullable=True)
    # Optional limits (issue 12): requests and tokens per minute, and tokens per budget period
    # ("day" or "month", UTC). None = unlimited. Counted in `rate_windows`.
    rpm: int | None = None
    tpm: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    token_budget: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    budget_period: str | None = Field(default=None, max_length=8)


class ServerProfile(SQLModel, table=True):
    __tablename__ = "server_profiles"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=Column(String(200), unique=True, nullable=False, index=True))
    model_path: str = ""
    model_type: str = Field(default="lm", max_length=32)
    aliases: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    context_length: int | None = None
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    enable_auto_tool_choice: bool = False
    chat_template_file: str | None = None
    trust_remote_code: bool = False
    extra_args: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    env: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    idle_ttl: float | None = None
    pinned: bool = False
    memory_gb: float | None = None
    auto_start: bool = False
    port: int | None = None
    command: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    health_path: str = "/health"
    # Where it runs: None = this machine only (the default); a list of node names = on those
    # nodes (`mlx-manager node`; "local" = this machine), ["*"] = on any node. See gateway/fleet.
    nodes: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    created_at: datetime = _ts(default_factory=utcnow)
    updated_at: datetime = _ts(default_factory=utcnow)


# The profile fields a running server was launched with (its command line, environment, port,
# log file and health probe): changing one needs a restart. The others (aliases, idle_ttl,
# pinned, memory_gb, auto_start, nodes) take effect without one: `nodes` only says where it
# may run (a server on a machine the profile left is stopped by the manager, not restarted).
# The one list the restart rule reads.
LAUNCH_FIELDS: frozenset[str] = frozenset(
    {
        "name",
        "model_path",
        "model_type",
        "context_length",
        "tool_call_parser",
        "reasoning_parser",
        "enable_auto_tool_choice",
        "chat_template_file",
        "trust_remote_code",
        "extra_args",
        "env",
        "port",
        "command",
        "health_path",
    }
)


def launch_changed(old: ServerProfile, new: ServerProfile) -> bool:
    """Whether a server launched from `old` must restart to run as `new`."""
    return any(getattr(old, field) != getattr(new, field) for field in LAUNCH_FIELDS)


class Node(SQLModel, table=True):
    """A machine running `mlx-manager node`, as its latest heartbeat described it.

    In the database (not only in memory) so every replica sees every node, whichever replica
    the node's heartbeats reach.
    """

    __tablename__ = "nodes"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=Column(String(200), unique=True, nullable=False, index=True))
    url: str = Field(max_length=2000)
    last_seen: datetime = _ts(default_factory=utcnow)
    # The heartbeat's body: memory {cap_bytes, used_bytes, free_bytes}, servers, in_flight...
    status: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class RunningInstance(SQLModel, table=True):
    """A model server this gateway launched; kept so a restarted gateway can find orphans."""

    __tablename__ = "running_instances"

    id: int | None = Field(default=None, primary_key=True)
    profile_id: int = Field(
        sa_column=Column(
            Integer,
            ForeignKey("server_profiles.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        )
    )
    pid: int
    # psutil's create_time: with the pid it identifies the process, so a reused pid is never hit.
    create_time: float
    port: int
    gateway_pid: int
    # Which gateway recorded it, exactly: replicas share the table, so a gateway only ever
    # reaps rows of its own machine (`host`) whose gateway process (pid + start time) is gone.
    host: str = Field(
        default="", sa_column=Column(String(255), nullable=False, server_default="", index=True)
    )
    gateway_create_time: float = Field(
        default=0.0, sa_column=Column(Float, nullable=False, server_default="0")
    )
    started_at: datetime = _ts(default_factory=utcnow)


class Download(SQLModel, table=True):
    """One model download; unfinished rows are resumed when the gateway starts."""

    __tablename__ = "downloads"

    id: int | None = Field(default=None, primary_key=True)
    model_id: str = Field(max_length=300, index=True)
    # The machine whose HF cache it fills: replicas share the table, but files are local, so
    # each gateway lists, resumes and cancels only its own machine's downloads.
    host: str = Field(
        default="", sa_column=Column(String(255), nullable=False, server_default="", index=True)
    )
    revision: str | None = None
    # The commit `revision` resolved to when the download began: a resume continues that very
    # commit (its partial files), even if the branch has moved on since.
    commit_sha: str | None = Field(default=None, max_length=64)
    status: str = Field(default="pending", max_length=16)
    # 64-bit: model files pass 2 GiB, and PostgreSQL's INTEGER stops there.
    bytes_done: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    bytes_total: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    files_done: int = 0
    files_total: int | None = None
    error: str | None = None
    created_at: datetime = _ts(default_factory=utcnow)
    updated_at: datetime = _ts(default_factory=utcnow)
    finished_at: datetime | None = _ts(default=None, nullable=True)


class RateWindow(SQLModel, table=True):
    """Requests and tokens one subject used in one window: the counters behind per-key and
    per-user limits, shared by every replica (atomic upserts keep them exact)."""

    __tablename__ = "rate_windows"

    # "key:<id>" or "user:<id>"
    subject: str = Field(sa_column=Column(String(40), primary_key=True))
    # "minute:<unix minute>", "day:<YYYY-MM-DD>" or "month:<YYYY-MM>" (UTC)
    window: str = Field(sa_column=Column(String(24), primary_key=True))
    requests: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False, index=True)
    )


class Setting(SQLModel, table=True):
    """Small key/value facts the gateway keeps about itself (e.g. who was the first admin)."""

    __tablename__ = "settings"

    key: str = Field(primary_key=True, max_length=200)
    value: str


class Usage(SQLModel, table=True):
    __tablename__ = "usage"

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = _ts(default_factory=utcnow)
    request_id: str | None = Field(default=None, max_length=128)
    # The gateway's own id for this row (a uuid4 hex, made when the request ends): writing a
    # batch again after a failed or unknown commit never doubles it. request_id is the
    # client's and may repeat.
    record_id: str | None = Field(
        default=None, sa_column=Column(String(32), nullable=True, unique=True, index=True)
    )
    user_id: int | None = Field(
        default=None,
        sa_column=Column(
            Integer, ForeignKey("users.id", ondelete="SET NULL"), nullable=True, index=True
        ),
    )
    key_id: int | None = Field(
        default=None,
        sa_column=Column(Integer, ForeignKey("api_keys.id", ondelete="SET NULL"), nullable=True),
    )
    model: str = Field(default="", max_length=200, index=True)
    endpoint: str = Field(default="", max_length=100)
    status: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    ttfb_ms: float | None = None
