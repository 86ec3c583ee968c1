"""The page with the real mlx-openai-server: a profile made in the form, then a streamed chat."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.async_api import expect

from gateway.settings import Settings
from tests.conftest import make_settings
from tests.support.backend import require_backend, tiny_model
from tests.ui.conftest import Ui

pytestmark = pytest.mark.backend

LOAD_TIMEOUT_MS = 180_000  # loading a model on 2 busy cores


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path / "home",
        hf_cache_path=tmp_path / "hf-cache",
        backend_bin=require_backend(),
        start_timeout=180,
    )


async def test_chat_with_the_real_model_server(ui: Ui) -> None:
    page = ui.page
    folder = str(tiny_model())
    await ui.sign_up()

    await ui.go("Profiles")
    await page.get_by_role("button", name="New profile").click()
    dialog = page.get_by_role("dialog", name="New profile")
    await dialog.get_by_label("Name", exact=True).fill("tiny")
    await dialog.get_by_label("Model path").fill(folder)
    await dialog.get_by_label("Tool call parser").fill("no-such-parser")
    await dialog.get_by_role("button", name="Create profile").click()
    # The gateway checks options against the installed server; the form shows why.
    await expect(dialog.get_by_role("alert")).to_contain_text("no-such-parser")
    await dialog.get_by_label("Tool call parser").fill("")
    await dialog.get_by_role("button", name="Create profile").click()
    await expect(dialog).to_be_hidden()
    await expect(page.get_by_role("row", name="tiny")).to_contain_text(folder)

    await ui.go("Chat")
    await page.get_by_label("Model").select_option("tiny")
    await page.get_by_text("Options").click()
    await page.get_by_label("Max tokens").fill("12")
    message = page.get_by_role("textbox", name="Message")
    await message.fill("Tell me a story")
    await message.press("Enter")
    answer = page.locator("article.message.assistant").last
    await expect(answer).to_have_attribute("data-state", "done", timeout=LOAD_TIMEOUT_MS)
    # Random weights: the words vary (they may even be empty); the streamed usage below is
    # what proves the answer came through the page.
    assert await answer.locator(".content").count() == 1
    footer = await answer.locator("footer").text_content() or ""
    assert re.search(r"\b([1-9]|1[0-2]) tokens\b", footer), footer  # usage from the stream

    await ui.go("Servers")
    row = page.get_by_role("table", name="Model servers").get_by_role("row", name="tiny")
    await expect(row.locator("td").first).to_have_text("ready")
    await expect(row.locator("td").nth(1)).to_contain_text("MiB")  # measured memory
    await row.get_by_role("button", name="Stop tiny").click()
    await expect(row.locator("td").first).to_have_text("stopped")
