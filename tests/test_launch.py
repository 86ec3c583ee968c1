"""From a profile to an argv: reading the installed server's `launch --help`, building the
mlx-openai-server command line, refusing what that version lacks, and `command` profiles.

The help text is mlx-openai-server 1.8.1's own, verbatim; the probe runs a stand-in executable
that answers `--version` and `launch --help` exactly as 1.8.1 does.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from gateway.errors import Unprocessable
from gateway.serving.launch import (
    BackendInfo,
    BackendProbe,
    BackendUnavailable,
    build_command,
    fill_placeholders,
    find_backend,
    parse_help,
)
from gateway.tables import ServerProfile
from tests.conftest import make_settings
from tests.support.fake_backend import (
    BACKEND_HELP,
    BACKEND_VERSION,
    REASONING_PARSERS,
    TOOL_CALL_PARSERS,
    fake_backend,
)

EXE = "/opt/backend/bin/mlx-openai-server"


@pytest.fixture
def backend() -> BackendInfo:
    # What the probe learns from the installed 1.8.1 (its version comes from `--version`).
    return dataclasses.replace(parse_help(EXE, BACKEND_HELP), version=BACKEND_VERSION)


def profile(**fields: object) -> ServerProfile:
    values: dict[str, object] = {"id": 1, "name": "qwen", "model_path": "org/qwen"}
    values.update(fields)
    return ServerProfile(**values)  # type: ignore[arg-type]


# ---- parse_help ----------------------------------------------------------------------------


def test_parse_help_finds_every_flag_of_the_real_help_text():
    info = parse_help(EXE, BACKEND_HELP)
    assert info.executable == EXE
    for flag in (
        "--model-path",
        "--model-type",
        "--served-model-name",
        "--host",
        "--port",
        "--context-length",
        "--tool-call-parser",
        "--reasoning-parser",
        "--enable-auto-tool-choice",
        "--chat-template-file",
        "--trust-remote-code",
        "--log-level",
        "--no-log-file",
        "--log-file",
        "--max-tokens",
        "--repetition-context-size",
        "--help",
    ):
        assert flag in info.flags, flag
    assert "--model" not in info.flags
    assert "--served-model" not in info.flags


def test_parse_help_reads_the_bracketed_choices():
    info = parse_help(EXE, BACKEND_HELP)
    assert info.choices["--model-type"] == (
        "lm",
        "multimodal",
        "image-generation",
        "image-edit",
        "embeddings",
        "whisper",
    )
    assert info.choices["--log-level"] == ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    assert info.choices["--tool-call-parser"] == TOOL_CALL_PARSERS
    assert info.choices["--reasoning-parser"] == REASONING_PARSERS
    assert "--port" not in info.choices  # INTEGER is not a choice list


def test_parse_help_reads_a_version_line_when_there_is_one():
    info = parse_help(EXE, "mlx-openai-server, version 1.9.0\nOptions:\n  --model-path TEXT\n")
    assert info.version == "1.9.0"
    assert info.flags == frozenset({"--model-path"})


# ---- build_command --------------------------------------------------------------------------


def test_build_command_for_a_full_profile(backend):
    full = profile(
        model_type="lm",
        context_length=8192,
        tool_call_parser="qwen3",
        reasoning_parser="qwen3",
        enable_auto_tool_choice=True,
        chat_template_file="/templates/chat.jinja",
        trust_remote_code=True,
        extra_args=["--max-tokens", "512", "--temperature=0.2", "--disable-batching"],
    )
    argv = build_command(full, port=10241, model_folder="/cache/qwen/snap", backend=backend)
    assert argv == [
        EXE,
        "launch",
        "--model-path",
        "/cache/qwen/snap",
        "--model-type",
        "lm",
        "--served-model-name",
        "qwen",
        "--host",
        "127.0.0.1",
        "--port",
        "10241",
        "--context-length",
        "8192",
        "--tool-call-parser",
        "qwen3",
        "--reasoning-parser",
        "qwen3",
        "--enable-auto-tool-choice",
        "--chat-template-file",
        "/templates/chat.jinja",
        "--trust-remote-code",
        "--log-level",
        "INFO",
        "--no-log-file",
        "--max-tokens",
        "512",
        "--temperature=0.2",
        "--disable-batching",
    ]


def test_build_command_for_a_minimal_profile_has_only_what_is_set(backend):
    argv = build_command(
        profile(model_type="embeddings"),
        port=10300,
        model_folder="/m",
        backend=backend,
        log_level="debug",
    )
    assert argv == [
        EXE,
        "launch",
        "--model-path",
        "/m",
        "--model-type",
        "embeddings",
        "--served-model-name",
        "qwen",
        "--host",
        "127.0.0.1",
        "--port",
        "10300",
        "--log-level",
        "DEBUG",
        "--no-log-file",
    ]


def test_an_option_the_installed_version_lacks_is_refused_naming_flag_and_version(backend):
    with pytest.raises(Unprocessable) as caught:
        build_command(
            profile(extra_args=["--speculative-depth", "3"]),
            port=1,
            model_folder="/m",
            backend=backend,
        )
    assert caught.value.code == "unsupported_option"
    assert "--speculative-depth" in caught.value.message
    assert f"mlx-openai-server {BACKEND_VERSION}" in caught.value.message
    assert caught.value.status_code == 422


def test_a_flag_with_an_inline_value_is_checked_by_its_name(backend):
    with pytest.raises(Unprocessable) as caught:
        build_command(
            profile(extra_args=["--no-such-option=1"]), port=1, model_folder="/m", backend=backend
        )
    assert "--no-such-option" in caught.value.message
    assert "=1" not in caught.value.message.split(" is not supported")[0]


def test_a_choice_the_installed_version_lacks_is_refused_naming_the_choices(backend):
    with pytest.raises(Unprocessable) as caught:
        build_command(
            profile(tool_call_parser="llama3_json"), port=1, model_folder="/m", backend=backend
        )
    message = caught.value.message
    assert "--tool-call-parser" in message
    assert "llama3_json" in message
    assert BACKEND_VERSION in message
    assert "qwen3_coder" in message  # the choices the installed version offers


def test_a_flag_an_older_version_lacks_is_refused():
    old_help = BACKEND_HELP.replace("--reasoning-parser", "--reasoning-mode")
    old = dataclasses.replace(parse_help(EXE, old_help), version="1.0.0")
    with pytest.raises(Unprocessable) as caught:
        build_command(profile(reasoning_parser="qwen3"), port=1, model_folder="/m", backend=old)
    assert "--reasoning-parser" in caught.value.message
    assert "1.0.0" in caught.value.message
    # Without the option, the same backend builds the command.
    assert build_command(profile(), port=1, model_folder="/m", backend=old)[0] == EXE


def test_every_model_type_is_accepted_by_the_real_help(backend):
    for model_type in (
        "lm",
        "multimodal",
        "embeddings",
        "whisper",
        "image-generation",
        "image-edit",
    ):
        argv = build_command(
            profile(model_type=model_type), port=1, model_folder="/m", backend=backend
        )
        assert argv[argv.index("--model-type") + 1] == model_type


def test_build_command_without_a_backend_is_refused_unless_the_profile_has_a_command():
    with pytest.raises(BackendUnavailable):
        build_command(profile(), port=1, model_folder="/m", backend=None)


# ---- command profiles -----------------------------------------------------------------------


def test_a_command_profile_gets_its_placeholders_filled():
    custom = profile(
        name="my-model",
        model_path="/models/mine",
        command=[
            "/usr/bin/server",
            "--port",
            "{port}",
            "--bind={host}:{port}",
            "--model",
            "{model_path}",
            "--alias",
            "{name}",
            "--json",
            '{"keep": "{braces}"}',
        ],
        extra_args=["--ignored-for-commands"],
    )
    argv = build_command(custom, port=12345, model_folder="/resolved/mine", backend=None)
    assert argv == [
        "/usr/bin/server",
        "--port",
        "12345",
        "--bind=127.0.0.1:12345",
        "--model",
        "/resolved/mine",
        "--alias",
        "my-model",
        "--json",
        '{"keep": "{braces}"}',
    ]


def test_fill_placeholders_leaves_unknown_braces_alone():
    values = {"port": "1", "host": "h", "model_path": "p", "name": "n"}
    assert fill_placeholders(["{port}{port}", "{other}", "{ name }"], values) == [
        "11",
        "{other}",
        "{ name }",
    ]


# ---- the probe of the installed server -----------------------------------------------------


async def test_the_probe_reads_the_installed_servers_flags_and_version(tmp_path):
    executable = fake_backend(tmp_path / "bin")
    settings = make_settings(tmp_path / "home", backend_bin=str(executable))
    assert find_backend(settings) == str(executable)
    probe = BackendProbe(settings)
    info = await probe.info()
    assert info.executable == str(executable)
    assert "--served-model-name" in info.flags
    assert info.choices["--tool-call-parser"] == TOOL_CALL_PARSERS
    assert info.version == BACKEND_VERSION


async def test_the_probe_runs_launch_help_once(tmp_path):
    executable = fake_backend(tmp_path / "bin")
    probe = BackendProbe(make_settings(tmp_path / "home", backend_bin=str(executable)))
    first, *others = await asyncio.gather(*(probe.info() for _ in range(5)))
    assert all(other is first for other in others)
    calls = (tmp_path / "bin" / "backend-calls.txt").read_text().splitlines()
    assert calls.count("launch --help") == 1


async def test_a_missing_backend_is_reported_with_what_to_do(tmp_path):
    settings = make_settings(tmp_path / "home", backend_bin=str(tmp_path / "nope"))
    with pytest.raises(BackendUnavailable) as caught:
        await BackendProbe(settings).info()
    assert str(tmp_path / "nope") in caught.value.message


async def test_a_backend_whose_help_fails_is_reported(tmp_path):
    broken = tmp_path / "broken-server"
    broken.write_text("#!/bin/sh\necho 'Error: No such command launch' >&2\nexit 2\n")
    broken.chmod(0o755)
    settings = make_settings(tmp_path / "home", backend_bin=str(broken))
    with pytest.raises(BackendUnavailable) as caught:
        await BackendProbe(settings).info()
    assert "No such command launch" in caught.value.message
