"""Models screen against the hub emulator: search, download with a moving progress bar, cancel,
the local cache, a profile made from a downloaded model, and deleting it."""

from __future__ import annotations

from playwright.async_api import expect

from tests.support.hub_emulator import EmulatorProcess
from tests.support.hub_fixtures import BIG, HUGE, NOT_MLX, TINY, WHISPER
from tests.ui.conftest import Ui, stub_command

# Slow enough that the bar is seen between 0 and full (the page is told every 0.5 s).
THROTTLE_BYTES_PER_SECOND = 24 * 1024

BAR = "li.download[data-status] progress[aria-label='Download progress of {model}']"


async def progress_of(ui: Ui, model: str, above: float = 0.0, partial: bool = True) -> float:
    """Wait until the model's bar shows more than `above` (and, if `partial`, less than full)."""
    handle = await ui.page.wait_for_function(
        """([selector, above, partial]) => {
            const bar = document.querySelector(selector);
            if (!bar || !bar.hasAttribute('value')) return false;
            return bar.value > above && (!partial || bar.value < bar.max) ? bar.value : false;
        }""",
        arg=[BAR.format(model=model), above, partial],
    )
    value = await handle.json_value()
    return float(value)


async def test_search_download_cancel_and_local_cache(ui: Ui, hub: EmulatorProcess) -> None:
    page = ui.page
    await ui.sign_up()
    await ui.go("Models")

    # Search: only MLX models, with sizes; the size cap and the author filter apply.
    search = page.get_by_role("search", name="Search the hub")
    await search.get_by_role("button", name="Search").click()
    results = page.get_by_role("table", name="found")
    await expect(results.get_by_role("row", name=TINY)).to_be_visible()
    await expect(results.get_by_role("row", name=HUGE)).to_contain_text("20.0 GiB")
    await expect(results.get_by_role("row", name=NOT_MLX)).to_have_count(0)
    await search.get_by_label("Max size (GiB)").fill("1")
    await search.get_by_label("Sort by").select_option(label="Most liked")
    await search.get_by_role("button", name="Search").click()
    await expect(results.get_by_role("row", name=HUGE)).to_have_count(0)
    rows = results.locator("tbody tr")
    await expect(rows.first).to_have_attribute("data-model", BIG)  # most liked under 1 GiB
    await search.get_by_label("Search").fill("whisper")
    await search.get_by_role("button", name="Search").click()
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-model", WHISPER)
    await search.get_by_label("Search").fill("")
    await search.get_by_label("Author").fill("mlx-community")
    await search.get_by_role("button", name="Search").click()
    await expect(results.get_by_role("row", name=TINY)).to_be_visible()

    hub.configure(bytes_per_second=THROTTLE_BYTES_PER_SECOND)

    # A big download, cancelled while it runs.
    await results.get_by_role("button", name=f"Download {BIG}").click()
    await progress_of(ui, BIG)
    await page.get_by_role("button", name=f"Cancel download of {BIG}").click()
    big = page.locator(f"li.download:has-text('{BIG}')")
    await expect(big).to_have_attribute("data-status", "cancelled")
    await expect(page.get_by_role("button", name=f"Cancel download of {BIG}")).to_be_hidden()

    # A small one: the bar moves while rate and time left show, then it lands in the cache.
    await results.get_by_role("button", name=f"Download {TINY}").click()
    await expect(results.get_by_role("row", name=TINY)).to_contain_text("downloading")
    tiny = page.locator(f"li.download:has-text('{TINY}')")
    first = await progress_of(ui, TINY)
    await expect(tiny.locator(".meta")).to_contain_text("/s")
    await expect(tiny.locator(".meta")).to_contain_text("left")
    await ui.shoot("models")
    second = await progress_of(ui, TINY, above=first, partial=False)
    assert second > first
    await expect(tiny).to_have_attribute("data-status", "completed")
    bar = page.get_by_role("progressbar", name=f"Download progress of {TINY}")
    assert await bar.evaluate("bar => bar.value === bar.max")
    await expect(results.get_by_role("row", name=TINY)).to_contain_text("on this machine")

    local = page.get_by_role("table", name="Models on this machine")
    row = local.get_by_role("row", name=TINY)
    await expect(row).to_contain_text("lm")
    await expect(row).to_contain_text("llama")
    await expect(row).to_contain_text("4-bit")
    await expect(row).to_contain_text("2,048")
    await expect(local).not_to_contain_text(BIG)  # cancelled: nothing left behind

    # A profile from the downloaded model: the form comes filled with what the model suggests.
    await row.get_by_role("button", name=f"Create a profile for {TINY}").click()
    dialog = page.get_by_role("dialog", name="New profile")
    await expect(dialog).to_be_visible()
    await expect(dialog.get_by_label("Name", exact=True)).to_have_value("tiny-llama-4bit")
    await expect(dialog.get_by_label("Model path")).to_have_value(TINY)
    await expect(dialog.get_by_label("Model type")).to_have_value("lm")
    await expect(dialog.get_by_label("Context length")).to_have_value("2048")
    await ui.shoot("profile-form")
    # Served by the stub here (no MLX on this machine): the command replaces mlx-openai-server.
    await dialog.get_by_text("Advanced: command, arguments, environment").click()
    await dialog.get_by_label("Command (one argument per line)").fill("\n".join(stub_command()))
    await dialog.get_by_role("button", name="Create profile").click()
    await expect(dialog).to_be_hidden()
    profile = page.get_by_role("table", name="Profiles").get_by_role("row", name="tiny-llama-4bit")
    await expect(profile).to_contain_text(TINY)
    await expect(profile).to_contain_text("stopped")
    stored = (await ui.api("GET", "/api/profiles")).json()
    assert stored[0]["model_path"] == TINY
    assert stored[0]["context_length"] == 2048
    assert stored[0]["command"] == stub_command()

    # Delete the model from the cache (confirmed in a dialog); search offers it again.
    await ui.go("Models")
    local = page.get_by_role("table", name="Models on this machine")
    await local.get_by_role("button", name=f"Delete {TINY}").click()
    confirm = page.get_by_role("dialog")
    await expect(confirm).to_contain_text(f"Delete {TINY}")
    await confirm.get_by_role("button", name="Delete").click()
    await expect(local.get_by_role("row", name=TINY)).to_have_count(0)
    await expect(page.get_by_text("No model in the local cache yet.")).to_be_visible()
    assert (await ui.api("GET", "/api/models/local")).json() == []
