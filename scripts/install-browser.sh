#!/usr/bin/env bash
# What the browser tests (tests/ui) need on Linux: Playwright for Python in the gateway's venv
# (the pip package ships its own driver) and Debian's Chromium at /usr/bin/chromium, since
# Playwright's browser download cannot be used here. Idempotent: each part is skipped when it
# is already there, so a second run does nothing. Off Linux it does nothing (on macOS run
# `.venv/bin/playwright install chromium` once instead).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
PLAYWRIGHT_SPEC="${PLAYWRIGHT_SPEC:-playwright>=1.49}"
CHROMIUM="${MLX_MANAGER_TEST_CHROMIUM:-/usr/bin/chromium}"

if [ "$(uname -s)" != "Linux" ]; then
    echo "install-browser: not Linux, nothing to do (macOS: $VENV/bin/playwright install chromium)"
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "install-browser: no $VENV yet; run 'make install-test' first" >&2
    exit 1
fi
if ! "$VENV/bin/python" -c "import playwright.async_api" 2>/dev/null; then
    echo "install-browser: installing $PLAYWRIGHT_SPEC into $VENV"
    "$VENV/bin/python" -m pip install --quiet "$PLAYWRIGHT_SPEC"
fi

if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-browser: no $CHROMIUM and no apt-get; install Chromium and set" \
        "MLX_MANAGER_TEST_CHROMIUM to its path" >&2
    exit 1
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "install-browser: installing chromium needs root (apt-get install chromium)" >&2
        exit 1
    fi
fi
echo "install-browser: installing Debian's chromium"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq chromium >/dev/null
test -x "$CHROMIUM" || { echo "install-browser: $CHROMIUM still missing" >&2; exit 1; }
