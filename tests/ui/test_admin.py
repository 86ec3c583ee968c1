"""Admin screen: users (approve, disable, promote), API keys (shown once, revoke), usage."""

from __future__ import annotations

import asyncio
import time

import httpx
from playwright.async_api import expect

from tests.conftest import bearer
from tests.ui.conftest import ADMIN_EMAIL, Ui, stub_command


async def test_users_keys_and_usage(ui: Ui) -> None:
    page = ui.page
    await ui.sign_up()
    for email in ("carol@example.com", "dave@example.com"):
        response = await ui.http.post(
            "/api/auth/register", json={"email": email, "password": ui.secret(f"{email}-pw")}
        )
        assert response.status_code == 201
    stub = {"name": "stub", "command": stub_command()}
    response = await ui.api("POST", "/api/profiles", json=stub)
    assert response.status_code == 201, response.text

    await ui.go("Admin")
    users = page.get_by_role("table", name="Users")
    await expect(users).to_contain_text("2 waiting for approval")
    carol = users.get_by_role("row", name="carol@example.com")
    dave = users.get_by_role("row", name="dave@example.com")
    await expect(users.get_by_role("row", name=ADMIN_EMAIL)).to_contain_text("(you)")
    await expect(users.get_by_role("row", name=ADMIN_EMAIL).get_by_role("button")).to_have_count(0)

    await carol.get_by_role("button", name="Approve carol@example.com").click()
    await expect(carol).to_contain_text("approved")
    await carol.get_by_role("button", name="Promote carol@example.com").click()
    await expect(carol.locator("td").nth(1)).to_have_text("admin")
    await dave.get_by_role("button", name="Disable dave@example.com").click()
    await expect(dave).to_contain_text("disabled")
    await expect(dave.get_by_role("button", name="Enable dave@example.com")).to_be_visible()
    by_email = {u["email"]: u for u in (await ui.api("GET", "/api/users")).json()}
    assert by_email["carol@example.com"]["status"] == "approved"
    assert by_email["carol@example.com"]["is_admin"] is True
    assert by_email["dave@example.com"]["status"] == "disabled"

    # An API key: shown once, works, and never stored by the page.
    keys = page.get_by_role("table", name="API keys")
    form = page.get_by_role("form", name="Create an API key")
    await form.get_by_label("Name").fill("laptop")
    await form.get_by_label("Models").fill("stub")
    await form.get_by_role("button", name="Create key").click()
    shown = page.get_by_role("textbox", name="New API key laptop")
    await expect(shown).to_be_focused()
    key = ui.secret(await shown.input_value())
    assert key.startswith("sk-")
    prefix_cell = keys.get_by_role("row", name="laptop").locator("td").first
    await expect(prefix_cell).to_contain_text(key[:8])
    assert key not in (await keys.text_content() or "")
    assert key not in await page.evaluate("() => JSON.stringify(sessionStorage)")
    async with httpx.AsyncClient(base_url=ui.url) as other:
        for text in ("one", "two", "three"):
            response = await other.post(
                "/v1/chat/completions",
                headers=bearer(key),
                json={"model": "stub", "messages": [{"role": "user", "content": text}]},
            )
            assert response.status_code == 200, response.text
        # Made without "Also /api": the key is for /v1 only.
        response = await other.get("/api/auth/me", headers=bearer(key))
        assert response.status_code == 403, response.text
    row = keys.get_by_role("row", name="laptop")
    await expect(row).to_contain_text("/v1")
    await expect(row).not_to_contain_text("/api")
    await page.get_by_role("button", name="Done").click()
    await expect(shown).to_have_count(0)
    assert key not in (await page.content())

    # A key that may also manage: the checkbox adds the admin scope.
    await form.get_by_label("Name").fill("ops")
    await form.get_by_label("Also /api").check()
    await form.get_by_role("button", name="Create key").click()
    ops = ui.secret(await page.get_by_role("textbox", name="New API key ops").input_value())
    await expect(keys.get_by_role("row", name="ops")).to_contain_text("/v1, /api")
    async with httpx.AsyncClient(base_url=ui.url) as other:
        response = await other.get("/api/auth/me", headers=bearer(ops))
        assert response.status_code == 200, response.text
    await expect(form.get_by_label("Also /api")).not_to_be_checked()
    await page.get_by_role("button", name="Done").click()

    # Usage by user and by model, for the chosen period.
    await page.get_by_label("Period").select_option(label="Last 24 hours")
    by_model = page.get_by_role("table", name="By model")
    by_user = page.get_by_role("table", name="By user")
    requests = "td:nth-of-type(1)"  # the first cell after the row's header
    await expect(by_model.get_by_role("row", name="stub").locator(requests)).to_have_text("3")
    await expect(by_user.get_by_role("row", name=ADMIN_EMAIL).locator(requests)).to_have_text("3")
    await ui.shoot("admin")

    # Limits: set in the key form, enforced on /v1, changed in the dialog, shown in usage.
    await form.get_by_label("Name").fill("limited")
    await form.get_by_label("Requests/min").fill("1")
    await form.get_by_role("button", name="Create key").click()
    shown = page.get_by_role("textbox", name="New API key limited")
    limited = ui.secret(await shown.input_value())
    await page.get_by_role("button", name="Done").click()
    limited_row = keys.get_by_role("row", name="limited")
    await expect(limited_row).to_contain_text("1 rpm")
    if 60 - time.time() % 60 < 5:  # both requests in one UTC minute
        await asyncio.sleep(6)
    async with httpx.AsyncClient(base_url=ui.url) as other:
        body = {"model": "stub", "messages": [{"role": "user", "content": "hi"}]}
        headers = bearer(limited)
        statuses = [
            (await other.post("/v1/chat/completions", headers=headers, json=body)).status_code
            for _ in range(2)
        ]
    assert statuses == [200, 429]
    await limited_row.get_by_role("button", name="Limits of limited").click()
    dialog = page.get_by_role("dialog", name="Limits of limited")
    await expect(dialog.get_by_label("Requests/min")).to_have_value("1")
    await dialog.get_by_label("Tokens/min").fill("500")
    await dialog.get_by_role("button", name="Save limits").click()
    await expect(limited_row).to_contain_text("1 rpm · 500 tpm")
    await carol.get_by_role("button", name="Limits of carol@example.com").click()
    dialog = page.get_by_role("dialog", name="Limits of carol@example.com")
    await dialog.get_by_label("Token budget").fill("900")
    await dialog.get_by_label("Budget window").select_option("day")
    await dialog.get_by_role("button", name="Save limits").click()
    await expect(carol).to_contain_text("900 tokens/day")
    by_email = {u["email"]: u for u in (await ui.api("GET", "/api/users")).json()}
    carol_limits = by_email["carol@example.com"]
    assert (carol_limits["token_budget"], carol_limits["budget_period"]) == (900, "day")
    await page.get_by_label("Period").select_option(label="Last 7 days")  # reloads the report
    limits_now = page.get_by_role("table", name="Limits now")
    await expect(limits_now.get_by_role("row", name="key limited")).to_contain_text("1 / 1")
    await expect(limits_now.get_by_role("row", name="carol@example.com")).to_contain_text(
        "0 / 900 this day"
    )

    # Revoke (confirmed): the key stops working at once.
    await keys.get_by_role("button", name="Revoke laptop").click()
    await page.get_by_role("dialog").get_by_role("button", name="Revoke").click()
    await expect(keys.get_by_role("row", name="laptop")).to_have_count(0)
    async with httpx.AsyncClient(base_url=ui.url) as other:
        response = await other.get("/v1/models", headers=bearer(key))
    assert response.status_code == 401
