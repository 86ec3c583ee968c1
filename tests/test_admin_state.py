"""Admin state has one owner per app: `AdminState`, opened and closed with the gateway.

Two gateways in one process keep their own download managers and system facts, and the facts
worth reading once (backend package versions, a subprocess) are read once per app.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from admin.state import AdminState
from gateway.errors import ServiceUnavailable
from tests.conftest import bearer, make_settings, register_and_login
from tests.support.gateway import running_gateway


def counting_backend(folder: Path, version: str) -> tuple[Path, Path]:
    """A backend venv whose `python` answers the version probe and logs each run."""
    folder.mkdir(parents=True)
    runs = folder / "runs.log"
    python = folder / "python"
    python.write_text(
        f"#!{sys.executable}\n"
        "import json\n"
        f"open({str(runs)!r}, 'a').write('run\\n')\n"
        f"print(json.dumps({{'mlx': {version!r}}}))\n"
    )
    python.chmod(0o755)
    executable = folder / "mlx-openai-server"
    executable.write_text("#!/bin/sh\nexit 1\n")
    executable.chmod(0o755)
    return executable, runs


async def test_each_app_owns_its_state_from_open_to_close(tmp_path: Path) -> None:
    first_bin, first_runs = counting_backend(tmp_path / "a" / "bin", "1.0")
    second_bin, second_runs = counting_backend(tmp_path / "b" / "bin", "2.0")
    first_settings = make_settings(tmp_path / "a" / "home", backend_bin=str(first_bin))
    second_settings = make_settings(tmp_path / "b" / "home", backend_bin=str(second_bin))
    async with (
        running_gateway(first_settings) as first,
        running_gateway(second_settings) as second,
    ):
        states = [first.app.state.control, second.app.state.control]
        assert all(isinstance(s, AdminState) for s in states)
        assert states[0] is not states[1]
        assert states[0].downloads is not states[1].downloads

        for handle, expected in ((first, "1.0"), (second, "2.0")):
            async with httpx.AsyncClient(base_url=handle.url) as client:
                token = await register_and_login(client, "admin@example.com", "correct horse 9")
                for _ in range(3):
                    info = await client.get("/api/system/info", headers=bearer(token))
                    assert info.status_code == 200, info.text
                    assert info.json()["backend"]["packages"]["mlx"] == expected
                listed = await client.get("/api/downloads", headers=bearer(token))
                assert listed.status_code == 200, listed.text
        assert first_runs.read_text() == "run\n"  # read once per app, not per request
        assert second_runs.read_text() == "run\n"

    for state in states:  # closed with its app
        with pytest.raises(ServiceUnavailable):
            _ = state.downloads
