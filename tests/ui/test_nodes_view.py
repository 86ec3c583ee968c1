"""Servers screen with nodes: each server's node, and (for admins) the nodes themselves."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.async_api import expect

from gateway.settings import Settings
from tests.conftest import TEST_SECRET, make_settings
from tests.support import secrets
from tests.support.env import stub_command
from tests.support.gateway_process import GatewayProcess, serve_environment
from tests.ui.conftest import Ui

NODE_TOKEN = "ui-node-token-" + "u" * 40


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    secrets.SEEN.add(NODE_TOKEN)
    return make_settings(
        tmp_path / "home",
        hf_cache_path=tmp_path / "hf-cache",
        default_port_start=random.randrange(20000, 31000, 10),
        node_token=NODE_TOKEN,
        node_timeout=3,
    )


@pytest.fixture
def studio(tmp_path: Path, settings: Settings, ui: Ui) -> Iterator[GatewayProcess]:
    """A node named "studio" heartbeating to the page's gateway."""
    env = serve_environment(
        tmp_path / "node-home",
        TEST_SECRET,
        node_token=NODE_TOKEN,
        gateway_url=ui.url,
        node_name="studio",
        heartbeat_interval="0.2",
    )
    node = GatewayProcess(env, tmp_path / "node.log", command="node")
    try:
        node.wait_healthy_sync()
        yield node
    finally:
        node.terminate()


async def test_servers_show_their_node_and_admins_see_the_nodes(
    ui: Ui, studio: GatewayProcess
) -> None:
    page = ui.page
    await ui.sign_up()
    for body in (
        {"name": "on-this-mac", "command": stub_command("--quiet")},
        {"name": "on-studio", "command": stub_command("--quiet"), "nodes": ["studio"]},
    ):
        response = await ui.api("POST", "/api/profiles", json=body)
        assert response.status_code == 201, response.text
    await ui.go("Servers")

    nodes = page.get_by_role("table", name="Nodes")
    row = nodes.get_by_role("row", name="studio")
    await expect(row).to_contain_text("up")
    await expect(row).to_contain_text("none running")
    await expect(nodes.get_by_role("row", name="this machine (local)")).to_contain_text("up")

    # Served once through the node: the server's row names the node, with no buttons to
    # start or stop it (the node does that on demand), while the local one has them.
    chat = {"model": "on-studio", "messages": [{"role": "user", "content": "hi"}]}
    response = await ui.api("POST", "/v1/chat/completions", json=chat)
    assert response.status_code == 200, response.text
    servers = page.get_by_role("table", name="Model servers")
    there = servers.get_by_role("row", name="on-studio")
    await expect(there).to_contain_text("studio")
    await expect(there).to_contain_text("ready")
    await expect(there.get_by_role("button")).to_have_count(0)
    here = servers.get_by_role("row", name="on-this-mac")
    await expect(here).to_contain_text("this machine")
    await expect(here.get_by_role("button", name="Start on-this-mac", exact=True)).to_be_visible()
    await expect(row).to_contain_text("on-studio (ready)")

    # The node stops: the page shows it down once its heartbeats are overdue.
    studio.kill()
    await expect(row).to_contain_text("down", timeout=30_000)
    await ui.assert_clean()
