"""Sign in, create an account, wait for approval, sign out, and a dead session back to sign-in."""

from __future__ import annotations

from playwright.async_api import expect

from tests.ui.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, Ui


async def test_first_account_is_the_admin_and_later_ones_wait(ui: Ui) -> None:
    page = ui.page
    await ui.open()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await expect(page.get_by_label("Email")).to_be_focused()
    await ui.shoot("sign-in")

    # The first account: an approved admin, signed in at once.
    await ui.sign_up()
    await expect(page.get_by_text(f"{ADMIN_EMAIL} (admin)")).to_be_visible()
    await expect(page.get_by_role("link", name="Admin")).to_be_visible()

    # A reload keeps the session (sessionStorage), with no secret in the address.
    await page.reload()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Servers")

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_text("You are signed out.")).to_be_visible()
    assert await page.evaluate("() => sessionStorage.length") == 0

    # A second account waits for an admin.
    await page.get_by_role("button", name="Create an account").click()
    await expect(page.get_by_role("heading", name="Create an account")).to_be_visible()
    await page.get_by_label("Email").fill("bob@example.com")
    await page.get_by_label("Password").fill(ui.secret("bob-password-1"))
    await page.get_by_role("button", name="Create account").click()
    await expect(page.get_by_text("an admin must approve it")).to_be_visible()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()

    await ui.sign_in("bob@example.com", "bob-password-1")
    await expect(page.get_by_role("alert")).to_contain_text("waiting for an admin's approval")

    await ui.sign_in(ADMIN_EMAIL, "not-the-password")
    await expect(page.get_by_role("alert")).to_contain_text("wrong email or password")

    # The admin approves bob on the Admin screen; bob can then sign in, as a plain user.
    await ui.sign_in(ADMIN_EMAIL, ADMIN_PASSWORD)
    await ui.go("Admin")
    users = page.get_by_role("table", name="Users")
    await expect(users).to_contain_text("1 waiting for approval")
    await users.get_by_role("button", name="Approve bob@example.com").click()
    await expect(users.get_by_role("row", name="bob@example.com")).to_contain_text("approved")
    await page.get_by_role("button", name="Sign out").click()
    await ui.sign_in("bob@example.com", "bob-password-1")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Servers")
    await expect(page.get_by_role("link", name="Keys & usage")).to_be_visible()
    await ui.go("Keys & usage")
    await expect(page.get_by_role("table", name="Users")).to_have_count(0)


async def test_keyboard_only_sign_in(ui: Ui) -> None:
    page = ui.page
    response = await ui.http.post(
        "/api/auth/register", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    )
    assert response.status_code == 201
    ui.secret(ADMIN_PASSWORD)
    await ui.open()
    await expect(page.get_by_label("Email")).to_be_focused()
    await page.keyboard.type(ADMIN_EMAIL)
    await page.keyboard.press("Tab")
    await expect(page.get_by_label("Password")).to_be_focused()
    await page.keyboard.type(ADMIN_PASSWORD)
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Servers")
    ui.secret(await ui.token())
    # The skip link is the first stop, then the top bar's links.
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", level=1)).to_be_focused()

    # Every form control on every screen has a label.
    for screen in ("Models", "Profiles", "Servers", "Chat", "Admin"):
        await ui.go(screen)
        unlabelled = await page.evaluate(
            """() => [...document.querySelectorAll('input, select, textarea')]
                 .filter((el) => el.type !== 'hidden' && !el.closest('[hidden]'))
                 .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
                 .map((el) => el.name || el.outerHTML.slice(0, 60))"""
        )
        assert unlabelled == [], (screen, unlabelled)


async def test_a_dead_session_returns_to_sign_in(ui: Ui) -> None:
    page = ui.page
    await ui.sign_up()
    me = (await ui.api("GET", "/api/auth/me")).json()
    # A password change ends every session of that user; the page's next poll gets 401.
    response = await ui.api(
        "POST", f"/api/users/{me['id']}/password", json={"password": ui.secret("new-password-2")}
    )
    assert response.status_code == 200, response.text
    await expect(page.get_by_text("Your session has ended; sign in again.")).to_be_visible()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await expect(page.locator("#topbar")).to_be_hidden()
    assert await page.evaluate("() => sessionStorage.length") == 0
    await ui.sign_in(ADMIN_EMAIL, "new-password-2")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Servers")
