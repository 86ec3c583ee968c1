"""Profiles, chat and servers with real model servers (the stub, and a stub that reasons)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from pathlib import Path

from playwright.async_api import expect

from tests.support.stub_server import read_events
from tests.support.waiting import wait_until
from tests.ui.conftest import Ui, reasoning_command, stub_command

CHUNKS = 30  # tok0 .. tok29, 50 ms apart: 1.5 s of streaming

RECORD_ANSWERS = """() => {
    // Every distinct text the last answer shows, in order, as the DOM changes.
    window.answerSteps = [];
    const transcript = document.querySelector('.transcript');
    new MutationObserver(() => {
        const answers = transcript.querySelectorAll('article.message.assistant .content');
        const text = answers.length ? answers[answers.length - 1].textContent : '';
        if (text && window.answerSteps[window.answerSteps.length - 1] !== text) {
            window.answerSteps.push(text);
        }
    }).observe(transcript, {subtree: true, childList: true, characterData: true});
}"""

STREAMING_WITH = """(token) => {
    const answers = document.querySelectorAll('article.message.assistant');
    const last = answers[answers.length - 1];
    return Boolean(last) && last.getAttribute('aria-busy') === 'true'
        && last.querySelector('.content').textContent.includes(token);
}"""


async def wait_for_event(path: Path, event: str, timeout: float = 10.0) -> None:
    """Poll the stub's events file (another process writes it) until `event` shows up."""
    await wait_until(
        lambda: any(e["event"] == event for e in read_events(path)),
        timeout=timeout,
        message=f"a {event} event in {path}",
    )


async def test_profiles_chat_and_servers(ui: Ui, tmp_path: Path) -> None:
    page = ui.page
    events = tmp_path / "stub-events.jsonl"
    await ui.sign_up()

    # ---- Profiles: create through the form, with an error shown on the field first --------
    await ui.go("Profiles")
    await page.get_by_role("button", name="New profile").click()
    dialog = page.get_by_role("dialog", name="New profile")
    # The kinds offered are the gateway's own (GET /api/system/info), in its order.
    info = (await ui.api("GET", "/api/system/info")).json()
    model_types = dialog.get_by_label("Model type").locator("option")
    await expect(model_types).to_have_text(info["model_types"])
    await expect(dialog.get_by_label("Model type")).to_have_value("lm")
    await dialog.get_by_label("Name", exact=True).fill("stub")
    await dialog.get_by_role("button", name="Create profile").click()
    await expect(dialog.get_by_role("alert")).to_contain_text("model_path is required")
    await expect(dialog.get_by_label("Model path")).to_have_attribute("aria-invalid", "true")
    await expect(dialog.get_by_label("Model path")).to_be_focused()
    await dialog.get_by_text("Advanced: command, arguments, environment").click()
    command = stub_command("--chunks", str(CHUNKS), "--events", str(events))
    await dialog.get_by_label("Command (one argument per line)").fill("\n".join(command))
    await dialog.get_by_label("Memory (GiB)").fill("0.5")
    await dialog.get_by_role("button", name="Create profile").click()
    await expect(dialog).to_be_hidden()
    profiles = page.get_by_role("table", name="Profiles")
    row = profiles.get_by_role("row", name="stub")
    await expect(row).to_contain_text("512 MiB of")  # its need against the cap
    await expect(row).to_contain_text("stopped")

    # Edit: an alias. Pin: a checkbox, saved at once.
    await row.get_by_role("button", name="Edit stub").click()
    dialog = page.get_by_role("dialog", name="Edit stub")
    await expect(dialog.get_by_label("Memory (GiB)")).to_have_value("0.5")
    await dialog.get_by_label("Aliases").fill("stubby")
    await dialog.get_by_role("button", name="Save").click()
    await expect(dialog).to_be_hidden()
    await expect(row).to_contain_text("aliases: stubby")
    await row.get_by_role("checkbox", name="Pin stub (never evicted)").check()
    await expect(page.get_by_text("stub pinned")).to_be_visible()
    (stored,) = (await ui.api("GET", "/api/profiles")).json()
    assert stored["pinned"] is True
    assert stored["aliases"] == ["stubby"]
    assert stored["command"] == command
    assert stored["memory_gb"] == 0.5
    response = await ui.api(
        "POST", "/api/profiles", json={"name": "thinker", "command": reasoning_command()}
    )
    assert response.status_code == 201, response.text
    await expect(profiles.get_by_role("row", name="thinker")).to_be_visible()
    await ui.shoot("profiles")

    # ---- Chat: the answer grows token by token --------------------------------------------
    await ui.go("Chat")
    await page.get_by_label("Model").select_option("stub")
    await page.evaluate(RECORD_ANSWERS)
    message = page.get_by_role("textbox", name="Message")
    await message.fill("hello")
    await message.press("Enter")
    await page.wait_for_function(STREAMING_WITH, arg="tok2")  # partial text, still streaming
    await expect(page.get_by_role("button", name="Stop")).to_be_enabled()
    answer = page.locator("article.message.assistant").last
    await expect(answer).to_have_attribute("data-state", "done")
    await expect(answer.locator(".content")).to_have_text(
        " ".join(f"tok{i}" for i in range(CHUNKS)) + " "
    )
    steps: list[str] = await page.evaluate("() => window.answerSteps")
    assert len(steps) >= CHUNKS // 2, steps  # many visible steps, not one final paint
    assert all(b.startswith(a) and len(b) > len(a) for a, b in itertools.pairwise(steps))
    assert steps[0].startswith("tok0 ")
    assert steps[-1].endswith(f"tok{CHUNKS - 1} ")
    await expect(page.get_by_role("button", name="Stop")).to_be_disabled()
    await expect(page.locator(".chat-status")).to_contain_text("Done")

    # Stop aborts the request: the text stops growing and the model server sees the close.
    await message.fill("a long answer please")
    await message.press("Enter")
    await page.wait_for_function(STREAMING_WITH, arg="tok3")
    await page.get_by_role("button", name="Stop").click()
    answer = page.locator("article.message.assistant").last
    await expect(answer).to_have_attribute("data-state", "stopped")
    await expect(answer).to_contain_text("Stopped.")
    await expect(answer.locator(".content")).not_to_contain_text(f"tok{CHUNKS - 1}")
    await wait_for_event(events, "stream_closed_by_client")

    # Reasoning shown apart: from reasoning_content deltas, and from <think> tags.
    await page.get_by_role("button", name="New chat").click()
    await page.get_by_label("Model").select_option("thinker")
    await message.fill("why is the sky blue?")
    await message.press("Enter")
    answer = page.locator("article.message.assistant").last
    await expect(answer).to_have_attribute("data-state", "done")
    await expect(answer.locator(".reasoning")).to_be_visible()
    await expect(answer.locator(".reasoning-text")).to_have_text(
        "thinking step 0 thinking step 1 thinking step 2 thinking step 3 "
    )
    await expect(answer.locator(".content")).to_have_text("answer 0 answer 1 answer 2 answer 3 ")
    await message.fill("now with tags")
    await message.press("Enter")
    answer = page.locator("article.message.assistant").nth(1)
    await expect(answer).to_have_attribute("data-state", "done")
    await expect(answer.locator(".reasoning-text")).to_have_text(
        "thinking step 0 thinking step 1 thinking step 2 thinking step 3 "
    )
    await expect(answer.locator(".content")).to_have_text("answer 0 answer 1 answer 2 answer 3 ")
    await ui.shoot("chat")

    # ---- Servers: live state, the log followed, restart and stop ---------------------------
    await ui.go("Servers")
    servers = page.get_by_role("table", name="Model servers")
    stub_row = servers.get_by_role("row", name="stub")
    await expect(stub_row).to_contain_text("ready")
    await expect(stub_row).to_contain_text("pinned")
    await expect(servers.get_by_role("row", name="thinker")).to_contain_text("ready")
    # "Running" is the gateway's running_states (GET /api/system/info): both count.
    summary = page.locator("p.summary")
    await expect(summary).to_contain_text("2 of 2 running")
    await expect(stub_row.get_by_role("button", name="Start stub", exact=True)).to_be_disabled()
    # The table refreshes itself every 2 s without taking the keyboard focus away.
    log_button = servers.get_by_role("button", name="Show the log of thinker")
    await log_button.focus()
    async with page.expect_response(lambda r: r.url.endswith("/api/servers")):
        pass
    async with page.expect_response(lambda r: r.url.endswith("/api/servers")):
        pass
    await expect(log_button).to_be_focused()

    # In flight: a slow request from another client shows up, and goes.
    slow = asyncio.create_task(
        ui.api(
            "POST",
            "/v1/chat/completions",
            json={"model": "stubby", "messages": [{"role": "user", "content": "__slow__"}]},
        )
    )
    inflight = stub_row.locator("td").nth(3)
    await expect(inflight).to_have_text("1")
    slow.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await slow
    await expect(inflight).to_have_text("0")

    await stub_row.get_by_role("button", name="Show the log of stub").click()
    log = page.get_by_role("log")
    await expect(log).to_contain_text("stub: listening on")
    await expect(page.get_by_role("region", name="Log of stub")).to_have_attribute(
        "data-state", "open"
    )
    response = await ui.api(
        "POST", "/v1/embeddings", json={"model": "stub", "input": "followed live"}
    )
    assert response.status_code == 200, response.text
    await expect(log).to_contain_text("POST /v1/embeddings -> 200")  # arrived while we watched
    await ui.shoot("servers")

    pid_cell = stub_row.locator("td").nth(6)
    pid_before = await pid_cell.text_content()
    await stub_row.get_by_role("button", name="Restart stub").click()
    await expect(pid_cell).not_to_have_text(pid_before or "")
    await expect(stub_row).to_contain_text("ready")

    await stub_row.get_by_role("button", name="Stop stub").click()
    await expect(stub_row.locator("td").first).to_have_text("stopped")
    await expect(summary).to_contain_text("1 of 2 running")
    await expect(stub_row.get_by_role("button", name="Start stub", exact=True)).to_be_enabled()
    await expect(stub_row.get_by_role("button", name="Stop stub")).to_be_disabled()
    states = {s["name"]: s["state"] for s in (await ui.api("GET", "/api/servers")).json()}
    assert states == {"stub": "stopped", "thinker": "ready"}
    await stub_row.get_by_role("button", name="Start stub", exact=True).click()
    await expect(stub_row.locator("td").first).to_have_text("ready")

    # Deleting a profile whose server runs stops that server (the dialog says so).
    await ui.go("Profiles")
    await profiles.get_by_role("button", name="Delete thinker").click()
    confirm = page.get_by_role("dialog")
    await expect(confirm).to_contain_text("Its server will be stopped.")
    await confirm.get_by_role("button", name="Delete").click()
    await expect(profiles.get_by_role("row", name="thinker")).to_have_count(0)
    states = {s["name"]: s["state"] for s in (await ui.api("GET", "/api/servers")).json()}
    assert states == {"stub": "ready"}
