"""The page as files: served at / and /ui/*, with security headers, and nothing unsafe inside."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from admin.ui import STATIC
from tests.support.gateway import GatewayHandle

SCRIPTS = sorted(STATIC.rglob("*.js"))


def code_of(path: Path) -> str:
    """A script without its comments (which may name what the code must not do)."""
    text = re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.DOTALL)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))


async def test_index_has_security_headers(gateway: GatewayHandle) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        response = await http.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'"  # no unsafe-inline, no unsafe-eval
    assert directives["frame-ancestors"] == "'none'"
    assert directives["connect-src"] == "'self'"
    assert directives["default-src"] == "'none'"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"
    assert "x-request-id" in response.headers


async def test_assets_are_served_with_their_types_and_headers(gateway: GatewayHandle) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        for path, media_type in [
            ("/ui/js/app.js", "text/javascript"),
            ("/ui/app.css", "text/css"),
            ("/ui/icon.svg", "image/svg+xml"),
        ]:
            response = await http.get(path)
            assert response.status_code == 200, path
            assert response.headers["content-type"].startswith(media_type), path
            assert "script-src 'self'" in response.headers["content-security-policy"]
            assert response.headers["x-content-type-options"] == "nosniff"
            again = await http.get(path, headers={"if-none-match": response.headers["etag"]})
            assert again.status_code == 304
        assert (await http.get("/ui/nothing.js")).status_code == 404
        assert (await http.get("/ui/../ui.py")).status_code == 404
        assert (await http.get("/ui/%2e%2e/ui.py")).status_code == 404


def test_the_page_has_no_inline_script_or_style() -> None:
    html = (STATIC / "index.html").read_text()
    for tag in re.findall(r"<script\b[^>]*>", html):
        assert "src=" in tag, tag
    assert re.search(r"<script\b[^>]*>\s*[^<\s]", html) is None
    assert "<style" not in html
    assert " style=" not in html
    assert re.search(r"\son[a-z]+=", html) is None  # no inline event handlers


def test_scripts_never_use_local_storage_or_parse_html() -> None:
    assert SCRIPTS, STATIC
    for path in SCRIPTS:
        text = code_of(path)
        name = path.relative_to(STATIC)
        assert "localStorage" not in text, name
        for unsafe in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
            assert unsafe not in text, (name, unsafe)
        for unsafe in ("eval(", "new Function", 'setTimeout("', 'setInterval("'):
            assert unsafe not in text, (name, unsafe)
        assert "EventSource" not in text, name  # it would need the token in the URL


def test_scripts_only_fetch_the_gateway_api() -> None:
    """Every fetch goes through api.js, which refuses paths outside /api and /v1."""
    callers = [p for p in SCRIPTS if "fetch(" in code_of(p)]
    assert [p.name for p in callers] == ["api.js"]
    api = (STATIC / "js" / "api.js").read_text()
    assert r"/^\/(api|v1)\//" in api
    assert 'credentials: "omit"' in api


def test_module_imports_resolve() -> None:
    """Every relative import names a file that exists (a typo would only show in a browser)."""
    for path in SCRIPTS:
        for target in re.findall(r"""from\s+["'](\.[^"']+)["']""", path.read_text()):
            assert (path.parent / target).resolve().is_file(), f"{path.name}: {target}"


def test_static_files_are_package_data() -> None:
    """The page ships inside the `admin` package (no Node.js, no build step)."""
    assert Path(STATIC).is_relative_to(Path(__file__).resolve().parents[2] / "admin")
    assert (STATIC / "index.html").is_file()
