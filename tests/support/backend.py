"""The real mlx-openai-server for tests: where it is, and the tiny model it serves."""

from __future__ import annotations

from pathlib import Path

from gateway.serving.launch import BACKEND_NAME
from tests.support.tiny_model import build_tiny_model

REPO = Path(__file__).resolve().parents[2]
BACKEND_BIN = REPO / ".venv-backend" / "bin" / BACKEND_NAME
TINY_MODEL_DIR = REPO / ".cache" / "tiny-llama"


def require_backend() -> str:
    """The backend executable; a missing one is an install problem, never a reason to skip."""
    if not BACKEND_BIN.exists():
        raise RuntimeError(f"{BACKEND_BIN} is missing: run `make backend` (make test does it)")
    return str(BACKEND_BIN)


def tiny_model() -> Path:
    return build_tiny_model(TINY_MODEL_DIR)
