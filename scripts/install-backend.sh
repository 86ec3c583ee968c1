#!/usr/bin/env bash
# Build the model server's own virtualenv (mlx-openai-server) with a pinned recipe.
#
# The backend lives in a venv of its own because its dependency tree (mlx, torch, transformers,
# outlines, ...) is large and must not fight with the gateway's. On Linux a plain
# `pip install mlx-openai-server` pulls CUDA builds of mlx and torch and then fails to import, so
# there the CPU recipe from shared/DESIGN.md is followed step by step.
#
# Idempotent: a stamp holding a hash of this recipe is written into the venv as the very last
# step; when it matches and the server's CLI runs, nothing is done. A run that failed midway
# leaves no stamp, so the next run rebuilds the venv from scratch.
#
# Environment:
#   BACKEND_VENV    where to create the venv (default: <repo>/.venv-backend)
#   BACKEND_PYTHON  interpreter to build it with (default: python3.11)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
VENV="${BACKEND_VENV:-$REPO_ROOT/.venv-backend}"
PYTHON="${BACKEND_PYTHON:-python3.11}"
REQS_LINUX="$SCRIPT_DIR/backend-requirements-linux.txt"
STAMP_NAME=".mlx-manager-backend-stamp"
OS="$(uname -s)"

SERVER_VERSION="1.8.1"
TORCH_VERSION="2.13.0"
MLX_STACK=(
    "mlx[cpu]==0.31.2"
    "mlx-lm==0.31.3"
    "mlx-vlm==0.4.4"
    "mlx-embeddings==0.0.5"
    "mlx-whisper==0.4.3"
    "outlines==1.1.1"
)

START=$SECONDS
step() { printf '[install-backend %4ds] %s\n' "$((SECONDS - START))" "$*"; }
die() { printf 'install-backend: error: %s\n' "$*" >&2; exit 1; }

sha256() {
    if command -v sha256sum >/dev/null 2>&1; then sha256sum | cut -d' ' -f1
    else shasum -a 256 | cut -d' ' -f1; fi
}

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set BACKEND_PYTHON)"
PY_VERSION="$("$PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"

# The recipe is this script, the Linux pins, the OS and the interpreter version: changing any of
# them must rebuild the venv.
recipe_hash() {
    {
        cat "${BASH_SOURCE[0]}"
        if [[ "$OS" == Linux ]]; then cat "$REQS_LINUX"; fi
        printf '%s %s %s\n' "$OS" "$(uname -m)" "$PY_VERSION"
    } | sha256
}
HASH="$(recipe_hash)"
STAMP="$VENV/$STAMP_NAME"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]] \
    && "$VENV/bin/mlx-openai-server" --help >/dev/null 2>&1; then
    echo "backend up to date ($VENV)"
    exit 0
fi

# Refuse to wipe a directory that is not a venv: BACKEND_VENV may point somewhere by mistake.
if [[ -e "$VENV" && ! -f "$VENV/pyvenv.cfg" ]] && [[ -n "$(ls -A "$VENV" 2>/dev/null)" ]]; then
    die "$VENV exists and is not a virtualenv; refusing to overwrite it"
fi

step "creating venv $VENV with $PYTHON ($PY_VERSION, $OS $(uname -m))"
"$PYTHON" -m venv --clear "$VENV"
LOG="$VENV/install.log"
: >"$LOG"

pip_install() {
    if ! "$VENV/bin/python" -m pip install --no-input "$@" >>"$LOG" 2>&1; then
        tail -n 40 "$LOG" >&2
        die "pip install $* failed (full log: $LOG); rerun to retry from scratch"
    fi
}

if [[ "$OS" == Darwin ]]; then
    step "installing mlx-openai-server==$SERVER_VERSION"
    pip_install "mlx-openai-server==$SERVER_VERSION"
elif [[ "$OS" == Linux ]]; then
    [[ -f "$REQS_LINUX" ]] || die "missing $REQS_LINUX"
    step "1/4 installing torch==$TORCH_VERSION (CPU)"
    pip_install "torch==$TORCH_VERSION"
    step "2/4 installing the mlx stack (CPU): ${MLX_STACK[*]}"
    pip_install "${MLX_STACK[@]}"
    step "3/4 installing mlx-openai-server==$SERVER_VERSION (--no-deps)"
    pip_install --no-deps "mlx-openai-server==$SERVER_VERSION"
    step "4/4 installing its remaining requirements from $(basename "$REQS_LINUX")"
    pip_install -r "$REQS_LINUX"
else
    die "unsupported OS: $OS"
fi

step "checking: mlx-openai-server --help"
"$VENV/bin/mlx-openai-server" --help >/dev/null 2>>"$LOG" \
    || die "mlx-openai-server --help fails after install (log: $LOG)"

printf '%s\n' "$HASH" >"$STAMP.tmp"
mv "$STAMP.tmp" "$STAMP"
step "done: backend installed in $VENV"
