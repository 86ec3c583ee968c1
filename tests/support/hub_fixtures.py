"""Fixture repos for the hub emulator, written at test time (random bytes stay out of git).

Each repo is a folder ``ROOT/<org>/<name>/`` plus a ``.hub.json`` with its hub metadata. The
contents are deterministic (seeded), so hashes are stable across runs; `REPOS` names them so
tests refer to constants, not strings.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import struct
from pathlib import Path
from typing import Any

TINY = "mlx-community/Tiny-Llama-4bit"
BIG = "mlx-community/Qwen3-Big-8bit"
GATED = "mlx-community/Gated-Llama-4bit"
WHISPER = "mlx-community/whisper-tiny-mlx"
HUGE = "other-org/Phi-3-mini-mlx"
NOT_MLX = "other-org/bert-base-uncased"
GATE_TOKEN = "hf_emulator_valid_token"

MIB = 1024 * 1024
BIG_SHARDS = (3 * MIB, 2 * MIB)

MLX_README = """---
library_name: mlx
license: apache-2.0
pipeline_tag: text-generation
tags:
- mlx
---

# {name}

This model was converted to MLX format.
"""

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def safetensors_bytes(payload: bytes, metadata: dict[str, str] | None = None) -> bytes:
    """A valid safetensors file holding `payload` as one uint8 tensor."""
    header: dict[str, Any] = {
        "weight": {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]}
    }
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + payload


def random_bytes(seed: str, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _write(
    folder: Path, files: dict[str, bytes | str | dict[str, Any]], meta: dict[str, Any]
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, dict):
            path.write_text(json.dumps(content, indent=2))
        elif isinstance(content, str):
            path.write_text(content)
        else:
            path.write_bytes(content)
    (folder / ".hub.json").write_text(json.dumps(meta, indent=2))


def llama_config(bits: int | None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 2048,
        "vocab_size": 256,
    }
    if bits:
        config["quantization"] = {"group_size": 64, "bits": bits}
    return config


def tokenizer_files() -> dict[str, bytes | str | dict[str, Any]]:
    return {
        "tokenizer.json": {"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}},
        "tokenizer_config.json": {"chat_template": CHAT_TEMPLATE, "eos_token": "<|im_end|>"},
    }


def build_hub(root: Path) -> Path:
    """Write every fixture repo under `root` (idempotent) and return it."""
    if (root / ".complete").exists():
        return root
    _write(
        root / TINY,
        {
            "config.json": llama_config(4),
            **tokenizer_files(),
            "model.safetensors": safetensors_bytes(
                random_bytes(TINY, 96 * 1024), {"format": "mlx"}
            ),
            "README.md": MLX_README.format(name=TINY),
        },
        {
            "library_name": "mlx",
            "tags": ["safetensors", "llama", "text-generation", "4-bit"],
            "pipeline_tag": "text-generation",
            "downloads": 1500,
            "likes": 12,
            "lastModified": "2025-03-01T10:00:00.000Z",
        },
    )
    shards = {
        f"model-0000{i + 1}-of-00002.safetensors": safetensors_bytes(
            random_bytes(f"{BIG}-{i}", size), {"format": "mlx"}
        )
        for i, size in enumerate(BIG_SHARDS)
    }
    _write(
        root / BIG,
        {
            "config.json": {
                "architectures": ["Qwen3ForCausalLM"],
                "model_type": "qwen3",
                "max_position_embeddings": 40960,
                "quantization": {"group_size": 64, "bits": 8},
            },
            **tokenizer_files(),
            **shards,
            "model.safetensors.index.json": {"weight_map": dict.fromkeys(shards, "x")},
            "extras/generation/notes.txt": "nested files keep their folders\n",
            "README.md": MLX_README.format(name=BIG),
        },
        {
            "library_name": "mlx",
            "tags": ["safetensors", "qwen3", "text-generation", "8-bit"],
            "pipeline_tag": "text-generation",
            "downloads": 900,
            "likes": 80,
            "lastModified": "2025-06-01T10:00:00.000Z",
        },
    )
    _write(
        root / GATED,
        {
            "config.json": llama_config(4),
            "model.safetensors": safetensors_bytes(random_bytes(GATED, 4096), {"format": "mlx"}),
            "README.md": MLX_README.format(name=GATED),
        },
        {
            "library_name": "mlx",
            "tags": ["llama"],
            "gated": "manual",
            "downloads": 50,
            "likes": 3,
            "lastModified": "2024-11-01T10:00:00.000Z",
        },
    )
    _write(
        root / WHISPER,
        {
            "config.json": {
                "n_mels": 80,
                "n_audio_ctx": 1500,
                "n_audio_state": 384,
                "n_text_ctx": 448,
                "n_vocab": 51865,
                "model_type": "whisper",
            },
            "weights.npz": random_bytes(WHISPER, 8192),
            "README.md": MLX_README.format(name=WHISPER),
        },
        {
            "library_name": "mlx",
            "tags": ["whisper"],
            "pipeline_tag": "automatic-speech-recognition",
            "downloads": 3000,
            "likes": 5,
            "lastModified": "2024-08-01T10:00:00.000Z",
        },
    )
    _write(
        root / HUGE,
        {"config.json": {"model_type": "phi3", "max_position_embeddings": 131072}},
        {
            "library_name": "mlx",
            "tags": ["phi3"],
            "downloads": 10,
            "likes": 200,
            "lastModified": "2025-09-01T10:00:00.000Z",
            "usedStorage": 20 * 1024**3,
        },
    )
    _write(
        root / NOT_MLX,
        {"config.json": {"model_type": "bert", "architectures": ["BertForMaskedLM"]}},
        {
            "library_name": "transformers",
            "tags": ["pytorch", "bert"],
            "downloads": 99999,
            "likes": 999,
            "lastModified": "2023-01-01T10:00:00.000Z",
        },
    )
    (root / ".complete").write_text("ok")
    return root


def publish_folder(
    root: Path, repo_id: str, folder: Path, meta: dict[str, Any] | None = None
) -> Path:
    """Serve a model folder (e.g. tests/support/tiny_model.py's) as hub repo `repo_id`, with an
    MLX model card unless it has one; call the emulator's `reload()` afterwards."""
    target = root / repo_id
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns(".*"))
    if not (target / "README.md").exists():
        (target / "README.md").write_text(MLX_README.format(name=repo_id))
    info = {"library_name": "mlx", "tags": ["text-generation"], "downloads": 1, "likes": 0}
    (target / ".hub.json").write_text(json.dumps({**info, **(meta or {})}, indent=2))
    return target


def repo_file_hashes(root: Path, repo_id: str) -> dict[str, str]:
    """sha256 of every file of a fixture repo, by repo-relative path."""
    folder = root / repo_id
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".hub.json"
    }


def repo_size(root: Path, repo_id: str) -> int:
    folder = root / repo_id
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != ".hub.json")
