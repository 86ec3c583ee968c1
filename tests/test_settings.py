"""Settings: read from the environment and `.env`; bad values refused with the variable's name."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError, model_validator

from gateway.settings import (
    SECRET_FILE_NAME,
    Settings,
    SettingsError,
    describe_validation_error,
    load_settings,
)

CLI = str(Path(sys.executable).with_name("mlx-manager"))
GOOD_SECRET = "a-perfectly-random-secret-" + "q" * 20


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path: Path) -> None:
    """No MLX_MANAGER_* from the outside, and a working directory without a `.env`."""
    for name in list(os.environ):
        if name.startswith("MLX_MANAGER_"):
            monkeypatch.delenv(name)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("MLX_MANAGER_HOME", str(tmp_path / "home"))


def test_defaults(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("MLX_MANAGER_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    settings = load_settings()
    assert settings.home == tmp_path / "user" / ".mlx-manager"
    assert settings.database_path == settings.home / "mlx-manager.db"
    assert settings.sqlalchemy_url == f"sqlite+aiosqlite:///{settings.database_path}"
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.jwt_expire_days == 7
    assert settings.max_memory_percent == 80
    assert settings.max_memory_gb is None
    assert settings.idle_ttl == 600
    assert settings.queue_timeout == 120
    assert settings.health_check_interval == 30
    assert settings.default_port_start == 10240
    assert settings.offline_mode is False
    assert settings.jwt_secret is None
    assert not settings.home.exists()  # loading settings has no side effects


def test_environment_variables_are_read(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("MLX_MANAGER_PORT", "9999")
    monkeypatch.setenv("MLX_MANAGER_HOST", "0.0.0.0")
    monkeypatch.setenv("MLX_MANAGER_OFFLINE_MODE", "true")
    monkeypatch.setenv("MLX_MANAGER_MAX_MEMORY_PERCENT", "55.5")
    monkeypatch.setenv("MLX_MANAGER_JWT_SECRET", GOOD_SECRET)
    monkeypatch.setenv("MLX_MANAGER_JWT_EXPIRE_DAYS", "2")
    monkeypatch.setenv("MLX_MANAGER_DATABASE_PATH", str(tmp_path / "elsewhere.db"))
    settings = load_settings()
    assert settings.home == tmp_path / "home"
    assert settings.port == 9999
    assert settings.host == "0.0.0.0"
    assert settings.offline_mode is True
    assert settings.max_memory_percent == 55.5
    assert settings.jwt_secret == GOOD_SECRET
    assert settings.resolved_jwt_secret() == GOOD_SECRET
    assert settings.jwt_expire_days == 2
    assert settings.database_path == tmp_path / "elsewhere.db"
    assert GOOD_SECRET not in repr(settings)


def test_database_url_overrides_the_path(monkeypatch):
    monkeypatch.setenv("MLX_MANAGER_DATABASE_URL", "postgresql+asyncpg://db/mlx")
    assert load_settings().sqlalchemy_url == "postgresql+asyncpg://db/mlx"


def test_dotenv_file_is_read_and_the_environment_wins(monkeypatch):
    Path(".env").write_text(
        "MLX_MANAGER_PORT=9123\nMLX_MANAGER_JWT_EXPIRE_DAYS=3\nMLX_MANAGER_HF_ORGANIZATION=acme\n"
    )
    settings = load_settings()
    assert settings.port == 9123
    assert settings.jwt_expire_days == 3
    assert settings.hf_organization == "acme"
    monkeypatch.setenv("MLX_MANAGER_PORT", "9124")
    assert load_settings().port == 9124


def test_bad_value_in_dotenv_is_refused():
    Path(".env").write_text("MLX_MANAGER_MAX_MEMORY_PERCENT=150\n")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "MLX_MANAGER_MAX_MEMORY_PERCENT" in str(caught.value)


@pytest.mark.parametrize(
    ("variable", "value", "hint"),
    [
        ("PORT", "0", "greater than or equal to 1"),
        ("PORT", "70000", "less than or equal to 65535"),
        ("PORT", "-1", "greater than or equal to 1"),
        ("PORT", "http", "integer"),
        ("MAX_MEMORY_PERCENT", "-5", "greater than 0"),
        ("MAX_MEMORY_PERCENT", "0", "greater than 0"),
        ("MAX_MEMORY_PERCENT", "100.5", "less than or equal to 100"),
        ("MAX_MEMORY_PERCENT", "250", "less than or equal to 100"),
        ("MAX_MEMORY_GB", "0", "greater than 0"),
        ("JWT_EXPIRE_DAYS", "0", "greater than or equal to 1"),
        ("IDLE_TTL", "-1", "greater than or equal to 0"),
        ("QUEUE_TIMEOUT", "0", "greater than 0"),
        ("DEFAULT_PORT_START", "80", "greater than or equal to 1024"),
        ("OFFLINE_MODE", "perhaps", "boolean"),
        ("LOG_LEVEL", "verbose", "'debug'"),
        ("USAGE_SPOOL_MAX_BYTES", str(1024 * 1024 - 1), "greater than or equal to 1048576"),
        ("USAGE_SPOOL_MAX_BYTES", str(1024**4 + 1), "less than or equal to 1099511627776"),
        ("USAGE_FLUSH_INTERVAL", "0", "greater than 0"),
        ("USAGE_FLUSH_INTERVAL", "3601", "less than or equal to 3600"),
        ("USAGE_RETRY_MAX", "0", "greater than 0"),
        ("USAGE_RETRY_MAX", "3601", "less than or equal to 3600"),
        ("USAGE_FLUSH_TIMEOUT", "0", "greater than 0"),
        ("USAGE_FLUSH_TIMEOUT", "3601", "less than or equal to 3600"),
        ("AUTH_CACHE_TTL", "-1", "greater than or equal to 0"),
        ("AUTH_CACHE_TTL", "3601", "less than or equal to 3600"),
        ("AUTH_CACHE_BACKSTOP_TTL", "-0.5", "greater than or equal to 0"),
        ("AUTH_CACHE_BACKSTOP_TTL", "61", "less than or equal to 60"),
        ("AUTH_STALE_MAX_AGE", "-1", "greater than or equal to 0"),
        ("AUTH_STALE_MAX_AGE", "86401", "less than or equal to 86400"),
        ("AUTH_DB_TIMEOUT", "0", "greater than 0"),
        ("AUTH_DB_TIMEOUT", "61", "less than or equal to 60"),
        ("READY_TIMEOUT", "0", "greater than 0"),
        ("READY_TIMEOUT", "61", "less than or equal to 60"),
        ("REVOCATION_PING_INTERVAL", "0", "greater than 0"),
        ("REVOCATION_PING_INTERVAL", "3601", "less than or equal to 3600"),
        ("REVOCATION_RECONNECT_MAX", "0", "greater than 0"),
        ("REVOCATION_RECONNECT_MAX", "301", "less than or equal to 300"),
    ],
)
def test_bad_values_are_refused_naming_the_variable(monkeypatch, variable, value, hint):
    monkeypatch.setenv(f"MLX_MANAGER_{variable}", value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert f"MLX_MANAGER_{variable}" in message
    assert hint in message


@pytest.mark.parametrize(
    ("secret", "hint"),
    [
        ("short", "at least 32 bytes"),
        ("x" * 31, "at least 32 bytes"),
        ("CHANGE_ME_IN_PRODUCTION", ""),
        ("CHANGE_ME_IN_PRODUCTION_" + "0" * 20, "placeholder"),
        ("please-change_me-before-going-live-ok", "placeholder"),
    ],
)
def test_weak_jwt_secrets_are_refused(monkeypatch, secret, hint):
    monkeypatch.setenv("MLX_MANAGER_JWT_SECRET", secret)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "MLX_MANAGER_JWT_SECRET" in message
    assert hint in message
    assert secret not in message  # the secret itself is never echoed


def test_weak_secret_refused_when_passed_directly():
    with pytest.raises(SettingsError) as caught:
        load_settings(jwt_secret="CHANGE_ME_IN_PRODUCTION")
    assert "MLX_MANAGER_JWT_SECRET" in str(caught.value)


def test_secret_length_is_counted_in_bytes():
    assert load_settings(jwt_secret="x" * 32).jwt_secret == "x" * 32
    assert load_settings(jwt_secret="é" * 16).jwt_secret == "é" * 16  # 32 bytes in UTF-8
    with pytest.raises(SettingsError):
        load_settings(jwt_secret="é" * 15 + "x")  # 31 bytes


def test_generated_secret_is_0600_and_reused(tmp_path: Path):
    home = tmp_path / "home"
    previous_umask = os.umask(0)  # the file mode must not depend on a permissive umask
    try:
        first = load_settings().resolved_jwt_secret()
    finally:
        os.umask(previous_umask)
    path = home / SECRET_FILE_NAME
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first.encode()) >= 32
    assert path.read_text().strip() == first

    second = load_settings().resolved_jwt_secret()
    assert second == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    other_home = Settings(home=tmp_path / "other", _env_file=None).resolved_jwt_secret()
    assert other_home != first


def test_configured_secret_creates_no_file(tmp_path: Path):
    settings = load_settings(jwt_secret=GOOD_SECRET)
    assert settings.resolved_jwt_secret() == GOOD_SECRET
    assert not (tmp_path / "home" / SECRET_FILE_NAME).exists()


@pytest.mark.parametrize("content", ["too-short\n", "", "CHANGE_ME_IN_PRODUCTION_" + "0" * 20])
def test_weak_secret_in_the_generated_file_is_refused(tmp_path: Path, content):
    path = tmp_path / "home" / SECRET_FILE_NAME
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(SettingsError) as caught:
        load_settings().resolved_jwt_secret()
    assert str(path) in str(caught.value)
    assert path.read_text() == content  # never silently replaced


# --- `mlx-manager serve` refuses to start -----------------------------------------------------


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MLX_MANAGER_")}
    environment.update({"MLX_MANAGER_HOME": str(tmp_path / "home"), **env})
    return subprocess.run(
        [CLI, *args],
        env=environment,
        cwd=tmp_path / "cwd",
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MLX_MANAGER_PORT", "0"),
        ("MLX_MANAGER_PORT", "70000"),
        ("MLX_MANAGER_JWT_SECRET", "CHANGE_ME_IN_PRODUCTION"),
    ],
)
def test_serve_with_a_bad_setting_exits_naming_the_variable(tmp_path: Path, variable, value):
    result = run_cli(tmp_path, "serve", **{variable: value})
    assert result.returncode != 0
    assert variable in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "home" / "mlx-manager.db").exists()


def test_serve_with_a_weak_secret_file_exits(tmp_path: Path):
    path = tmp_path / "home" / SECRET_FILE_NAME
    path.parent.mkdir(parents=True)
    path.write_text("short\n")
    result = run_cli(tmp_path, "serve", MLX_MANAGER_PORT="1")
    assert result.returncode != 0
    assert SECRET_FILE_NAME in result.stderr.replace("\n", ""), result.stderr
    assert "Traceback" not in result.stderr


def test_serve_reports_a_bad_value_that_looks_like_console_markup(tmp_path: Path):
    """The message is printed with rich: a value like `[/red]` must not crash the report."""
    result = run_cli(tmp_path, "serve", MLX_MANAGER_LOG_LEVEL="[/red]")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "MLX_MANAGER_LOG_LEVEL" in result.stderr
    assert "MarkupError" not in result.stderr


def test_every_setting_is_documented_and_in_the_example_env() -> None:
    """A limit nobody can find is a limit nobody can change: each setting has a row in
    docs/configuration.md and a line in config/example.env."""
    root = Path(__file__).resolve().parents[1]
    names = {f"MLX_MANAGER_{name.upper()}" for name in Settings.model_fields}
    docs = (root / "docs" / "configuration.md").read_text()
    example = (root / "config" / "example.env").read_text()
    assert sorted(n for n in names if f"`{n}`" not in docs) == []
    assert sorted(n for n in names if f"# {n}=" not in example) == []


class _Checked(BaseModel):
    jwt_secret: str
    port: int

    @model_validator(mode="after")
    def _whole(self) -> _Checked:
        raise ValueError("the settings disagree")


def test_errors_show_plain_values_but_never_secrets_or_a_whole_input() -> None:
    """A field's bad value is shown (it helps), a secret's never; an error about the settings
    as a whole would carry all of them as its input, so it shows none."""
    with pytest.raises(ValidationError) as field_error:
        _Checked(jwt_secret="s3cret-value", port="eighty")
    assert "(got 'eighty')" in describe_validation_error(field_error.value)
    with pytest.raises(ValidationError) as whole:
        _Checked(jwt_secret="s3cret-value", port=80)
    text = describe_validation_error(whole.value)
    assert "the settings disagree" in text
    assert "s3cret-value" not in text
