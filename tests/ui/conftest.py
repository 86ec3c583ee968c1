"""Browser tests of the admin page: headless Chromium (Playwright) against a real gateway.

Each test gets its own gateway (uvicorn on a real port, own SQLite and HF cache), its own
browser, and a `Ui` helper around the page. The helper records every URL the page requested
or navigated to, console errors, CSP violations and uncaught exceptions; at teardown it fails
the test if any secret (password, token, API key) appeared in a URL or localStorage is not
empty, or if the page raised or broke its own Content-Security-Policy.

The browser is Debian's Chromium (`scripts/install-browser.sh`), since no browser can be
downloaded here; `MLX_MANAGER_TEST_CHROMIUM` points elsewhere. Off Linux without that file,
Playwright's own Chromium is used when installed. Screenshots go to the test's temporary
folder, or to `$MLX_MANAGER_UI_SCREENSHOTS` (e.g. docs/screenshots) when set.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Error, Page, async_playwright, expect

from gateway.settings import Settings
from tests.conftest import bearer, make_settings
from tests.models.conftest import hub, hub_root, hub_server  # noqa: F401 (fixtures)
from tests.support import secrets
from tests.support.gateway import GatewayHandle, running_gateway
from tests.support.stub_server import STUB_SCRIPT

CHROMIUM = Path(os.environ.get("MLX_MANAGER_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS_ENV = "MLX_MANAGER_UI_SCREENSHOTS"
REASONING_STUB = Path(__file__).with_name("reasoning_stub.py")
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "admin-password-ui"

expect.set_options(timeout=15_000)


def stub_command(*options: str) -> list[str]:
    """The stub model server as a `command` profile: streams tok0, tok1, ... 50 ms apart."""
    return [
        sys.executable,
        str(STUB_SCRIPT),
        "--port",
        "{port}",
        "--name",
        "{name}",
        "--chunk-delay",
        "0.05",
        *options,
    ]


def reasoning_command() -> list[str]:
    return [sys.executable, str(REASONING_STUB), "--port", "{port}"]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path / "home",
        hf_cache_path=tmp_path / "hf-cache",
        default_port_start=random.randrange(20000, 31000, 10),
    )


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[GatewayHandle]:
    async with running_gateway(settings) as handle:
        yield handle


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        if CHROMIUM.exists():
            launched = await playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
            )
        elif sys.platform.startswith("linux"):
            pytest.fail(f"no Chromium at {CHROMIUM}: run scripts/install-browser.sh")
        else:
            try:
                launched = await playwright.chromium.launch(args=CHROMIUM_ARGS)
            except Error as exc:
                pytest.fail(f"no Chromium ({exc}); run .venv/bin/playwright install chromium")
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
def shots_dir(tmp_path: Path) -> Path:
    target = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path / "screenshots")
    target.mkdir(parents=True, exist_ok=True)
    return target


@dataclass
class Ui:
    """The page under test, the gateway behind it, and what the page did."""

    page: Page
    gateway: GatewayHandle
    http: httpx.AsyncClient
    shots: Path
    urls: list[str] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (resource type, url)
    problems: list[str] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set)

    @property
    def url(self) -> str:
        return self.gateway.url

    def secret(self, value: str) -> str:
        self.secrets.add(value)
        secrets.SEEN.add(value)
        return value

    async def open(self, route: str = "") -> None:
        await self.page.goto(f"{self.url}/{route}")

    async def go(self, name: str) -> None:
        """Navigate with the top bar, as a person would."""
        await (
            self.page.get_by_role("navigation", name="Main").get_by_role("link", name=name).click()
        )
        await expect(self.page.get_by_role("heading", level=1)).to_have_text(name)

    async def sign_up(self, email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD) -> None:
        """Create the first account through the page: it is the admin and is signed in."""
        self.secret(password)
        await self.open()
        page = self.page
        await page.get_by_role("button", name="Create an account").click()
        await page.get_by_label("Email").fill(email)
        await page.get_by_label("Password").fill(password)
        await page.get_by_role("button", name="Create account").click()
        await expect(page.get_by_role("heading", level=1)).to_have_text("Servers")
        self.secret(await self.token())

    async def sign_in(self, email: str, password: str) -> None:
        self.secret(password)
        page = self.page
        await page.get_by_label("Email").fill(email)
        await page.get_by_label("Password").fill(password)
        await page.get_by_role("button", name="Sign in").click()

    async def token(self) -> str:
        value = await self.page.evaluate("() => sessionStorage.getItem('mlx-manager.session')")
        assert value, "no session token after signing in"
        return str(value)

    async def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request with the page's own token (the test acting as another client)."""
        headers = bearer(await self.token())
        return await self.http.request(method, path, headers=headers, **kwargs)

    async def shoot(self, name: str) -> None:
        """Screenshots of the page as it is, in light and dark."""
        page = self.page
        await page.evaluate("() => document.getElementById('toasts').replaceChildren()")
        for scheme in ("light", "dark"):
            await page.emulate_media(color_scheme=scheme)
            await page.screenshot(
                path=str(self.shots / f"{name}-{scheme}.png"), animations="disabled", full_page=True
            )
        await page.emulate_media(color_scheme="light")
        assert (self.shots / f"{name}-dark.png").stat().st_size > 5000

    async def assert_clean(self) -> None:
        """No secret in any URL or in localStorage; no page error or CSP violation; only
        JavaScript requests to /api and /v1 besides the page's own files, all same-origin."""
        assert not self.problems, "\n".join(self.problems)
        assert self.requests, "the page made no request"
        for kind, url in self.requests:
            assert url.startswith(f"{self.url}/"), f"a request left the gateway: {url}"
            path = url[len(self.url) :]
            if kind in ("fetch", "xhr"):
                assert path.startswith(("/api/", "/v1/")), f"{kind} to {path}"
            else:
                assert kind in ("document", "script", "stylesheet", "image", "other"), (kind, path)
                assert path == "/" or path.startswith("/ui/"), (kind, path)  # "other": the icon
        for url in [*self.urls, self.page.url]:
            for secret in self.secrets:
                assert secret not in url, f"a secret reached a URL: {url[:80]}"
        stored = await self.page.evaluate("() => JSON.stringify(Object.entries(localStorage))")
        assert stored == "[]", f"localStorage is not empty: {stored[:200]}"
        for cookie in await self.page.context.cookies():
            for secret in self.secrets:
                assert secret not in cookie["value"], "a secret reached a cookie"


def _watch(page: Page, ui: Ui) -> None:
    def on_console(message: Any) -> None:
        text = message.text
        if "Content Security Policy" in text or "Refused to" in text:
            ui.problems.append(f"CSP violation: {text}")
        elif message.type == "error" and not text.startswith("Failed to load resource"):
            ui.problems.append(f"console error: {text}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: ui.problems.append(f"page error: {error}"))
    page.on("request", lambda request: ui.urls.append(request.url))
    page.on("request", lambda request: ui.requests.append((request.resource_type, request.url)))
    page.on(
        "framenavigated",
        lambda frame: ui.urls.append(frame.url) if frame == page.main_frame else None,
    )


@pytest.fixture
async def ui(browser: Browser, gateway: GatewayHandle, shots_dir: Path) -> AsyncIterator[Ui]:
    context = await browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-US")
    page = await context.new_page()
    async with httpx.AsyncClient(
        base_url=gateway.url, timeout=30, event_hooks=secrets.HOOKS
    ) as http:
        handle = Ui(page=page, gateway=gateway, http=http, shots=shots_dir)
        _watch(page, handle)
        try:
            yield handle
            await handle.assert_clean()
        finally:
            await context.close()
