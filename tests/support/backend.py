"""The real mlx-openai-server for tests: where it is, and the tiny model it serves."""

from __future__ import annotations

import json
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


def without_end_tokens() -> dict[str, int]:
    """A `logit_bias` (OpenAI's own parameter) that keeps the tiny model from ending early.

    Its weights are random and the server samples: now and then the first token drawn is an
    end token, and an answer meant to stream several chunks is one token long. With the end
    tokens banned, an answer is always `max_tokens` long.
    """
    config = json.loads((tiny_model() / "config.json").read_text())
    ends = config["eos_token_id"]
    return {str(token): -100 for token in (ends if isinstance(ends, list) else [ends])}
