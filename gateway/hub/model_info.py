"""What a model folder is, read from its files: family, kind, quantization, context, parsers.

Pure and side-effect free (it only reads a few small files), so the proxy can call it to build a
profile on the fly (JIT profiles) and the control plane to describe the local cache. Everything
here is a best guess from `config.json` and friends: a wrong guess must degrade to "no
suggestion", never to a flag the model server rejects, which is why parser names are checked
against what the installed mlx-openai-server accepts.

Call the functions that touch the disk (`describe_model`, `find_cached_mlx_model`) from a
thread (`asyncio.to_thread`) on the event loop: they read files.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from gateway.hub.cache import find_cached_snapshot
from gateway.types import ModelType

Kind = Literal["lm", "multimodal", "embeddings", "whisper", "image"]

# What mlx-openai-server 1.8.1 `launch --help` accepts; a newer server's own list can be passed
# to `suggested_profile` (BackendInfo.choices) so a suggestion never names a parser it lacks.
TOOL_CALL_PARSERS: frozenset[str] = frozenset(
    [
        "functiongemma",
        "gemma4",
        "glm4_moe",
        "harmony",
        "hermes",
        "iquest_coder_v1",
        "kimi_k2",
        "longcat_flash_lite",
        "minimax_m2",
        "nemotron3_nano",
        "qwen3",
        "qwen3_coder",
        "qwen3_moe",
        "qwen3_vl",
        "solar_open",
        "step_35",
    ]
)
REASONING_PARSERS: frozenset[str] = frozenset(
    [
        "gemma4",
        "glm47_flash",
        "glm4_moe",
        "harmony",
        "hermes",
        "kimi_k2",
        "minimax_m2",
        "mixed_think_tool_handoff",
        "nemotron3_nano",
        "qwen3",
        "qwen3_5",
        "qwen3_moe",
        "qwen3_vl",
        "solar_open",
        "step_35",
    ]
)

MLX_ORGANIZATIONS = frozenset({"mlx-community", "lmstudio-community-mlx", "mlx-vision"})
MAX_SAFETENSORS_HEADER = 64 * 1024 * 1024
# The weight formats MLX loads (see `weights_bytes`).
WEIGHT_SUFFIXES = (".safetensors", ".npz", ".gguf")
CONTEXT_KEYS = (
    "max_position_embeddings",
    "max_sequence_length",
    "max_seq_len",
    "seq_length",
    "n_positions",
    "n_ctx",
    "model_max_length",
)
# Ordered: the first prefix that matches the config's model_type names the family.
FAMILY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("qwen", "qwen"),
    ("mllama", "llama"),
    ("llava", "llava"),
    ("llama", "llama"),
    ("mixtral", "mistral"),
    ("ministral", "mistral"),
    ("pixtral", "mistral"),
    ("mistral", "mistral"),
    ("paligemma", "gemma"),
    ("recurrent_gemma", "gemma"),
    ("gemma", "gemma"),
    ("phi", "phi"),
    ("chatglm", "glm"),
    ("glm", "glm"),
    ("deepseek", "deepseek"),
    ("kimi", "kimi"),
    ("minimax", "minimax"),
    ("nemotron", "nemotron"),
    ("gpt_oss", "gpt-oss"),
    ("gpt2", "gpt2"),
    ("whisper", "whisper"),
    ("modernbert", "bert"),
    ("nomic_bert", "bert"),
    ("distilbert", "bert"),
    ("xlm-roberta", "bert"),
    ("roberta", "bert"),
    ("bert", "bert"),
    ("olmo", "olmo"),
    ("granite", "granite"),
    ("cohere", "cohere"),
    ("exaone", "exaone"),
    ("internlm", "internlm"),
    ("starcoder", "starcoder"),
    ("falcon", "falcon"),
    ("mamba", "mamba"),
    ("step", "step"),
    ("solar", "solar"),
    ("longcat", "longcat"),
    ("ernie", "ernie"),
    ("hunyuan", "hunyuan"),
    ("baichuan", "baichuan"),
    ("lfm", "lfm"),
    ("smolvlm", "smolvlm"),
    ("idefics", "idefics"),
)
EMBEDDING_MODEL_TYPES = frozenset(
    {"bert", "roberta", "xlm-roberta", "modernbert", "nomic_bert", "distilbert", "mpnet", "e5"}
)
VLM_MARKERS = (
    "_vl",
    "vl_",
    "llava",
    "idefics",
    "paligemma",
    "pixtral",
    "smolvlm",
    "mllama",
    "florence",
    "molmo",
    "gemma3n",
)
SENTENCE_TRANSFORMER_FILES = (
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
)
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class ModelCharacteristics:
    """What a model folder holds, as far as its files tell."""

    repo_id: str | None
    family: str | None
    model_type: str | None  # config.json's model_type (the architecture), e.g. "qwen3_moe"
    architectures: tuple[str, ...]
    kind: Kind
    quantization_bits: int | None
    quantization_group_size: int | None
    quantization_mode: str | None
    dtype: str | None
    context_length: int | None
    is_mlx: bool
    weights_bytes: int
    has_chat_template: bool
    needs_remote_code: bool  # config has auto_map: the model ships its own Python code

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["architectures"] = list(self.architectures)
        return data


@dataclass(frozen=True, slots=True)
class SuggestedProfile:
    """Profile options that suit a model; `fields()` feeds a ServerProfile directly."""

    model_type: ModelType
    tool_call_parser: str | None
    reasoning_parser: str | None
    enable_auto_tool_choice: bool
    trust_remote_code: bool = False  # never guessed on: running a repo's code is the user's call

    def fields(self) -> dict[str, Any]:
        return asdict(self)


# ---- reading the folder --------------------------------------------------------------------


def describe_model(folder: Path, repo_id: str | None = None) -> ModelCharacteristics:
    """Read `folder` (a snapshot or any local model folder) and say what the model is.

    `repo_id` sharpens name-based hints (a "Coder" or "FunctionGemma" variant shares its base
    model's config); inside the HF cache it is derived from the path when not given.
    """
    repo_id = repo_id or repo_id_from_snapshot(folder)
    name = (repo_id or folder.name).lower()
    config = _read_json(folder / "config.json")
    model_type = _str(config.get("model_type"))
    architectures = tuple(str(a) for a in config.get("architectures") or () if isinstance(a, str))
    kind = _kind(folder, config, model_type, architectures, name)
    bits, group_size, mode = _quantization(config)
    return ModelCharacteristics(
        repo_id=repo_id,
        family=_family(model_type, kind, name),
        model_type=model_type,
        architectures=architectures,
        kind=kind,
        quantization_bits=bits,
        quantization_group_size=group_size,
        quantization_mode=mode,
        dtype=_str(config.get("torch_dtype") or config.get("dtype")),
        context_length=None if kind in ("whisper", "image") else _context_length(config),
        is_mlx=_is_mlx(folder, config, repo_id),
        weights_bytes=weights_bytes(folder),
        has_chat_template=_has_chat_template(folder),
        needs_remote_code=bool(config.get("auto_map")),
    )


def repo_id_from_snapshot(folder: Path) -> str | None:
    """`.../models--org--name/snapshots/<sha>` -> "org/name"; None outside the HF cache."""
    parent = folder.parent
    if parent.name != "snapshots":
        return None
    repo_folder = parent.parent.name
    if not repo_folder.startswith("models--"):
        return None
    return repo_folder.removeprefix("models--").replace("--", "/")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(value, float) and value.is_integer() and value > 0:
        return int(value)
    return None


def _kind(
    folder: Path,
    config: dict[str, Any],
    model_type: str | None,
    architectures: tuple[str, ...],
    name: str,
) -> Kind:
    mt = (model_type or "").lower()
    if mt == "whisper" or ("n_mels" in config and "n_audio_ctx" in config):
        return "whisper"
    if (
        (folder / "model_index.json").exists()
        or "_class_name" in config
        or ((folder / "transformer").is_dir() and (folder / "vae").is_dir())
    ):
        return "image"
    if _is_embeddings(folder, mt, architectures, name):
        return "embeddings"
    if (
        "vision_config" in config
        or "vision_tower" in config
        or any(marker in mt for marker in VLM_MARKERS)
    ):
        return "multimodal"
    return "lm"


def _is_embeddings(folder: Path, mt: str, architectures: tuple[str, ...], name: str) -> bool:
    if mt in EMBEDDING_MODEL_TYPES:
        return True
    if any((folder / f).exists() for f in SENTENCE_TRANSFORMER_FILES):
        return True
    if "embedding" in name or "embed-" in name:
        return True
    generative = ("ForCausalLM", "ForConditionalGeneration", "LMHeadModel", "ForSeq2SeqLM")
    return bool(architectures) and all(
        a.endswith("Model") and not a.endswith(generative) for a in architectures
    )


def _family(model_type: str | None, kind: Kind, name: str) -> str | None:
    if kind == "whisper":
        return "whisper"
    mt = (model_type or "").lower()
    for prefix, family in FAMILY_PREFIXES:
        if mt.startswith(prefix):
            return family
    if kind == "image":
        for hint in ("flux", "stable-diffusion", "sdxl", "qwen-image"):
            if hint in name:
                return hint
    return mt or None


def _quantization(config: dict[str, Any]) -> tuple[int | None, int | None, str | None]:
    """MLX writes `quantization` ({"bits", "group_size", "mode"}); transformers writes
    `quantization_config`. Either counts; per-layer overrides (mixed quants) are ignored."""
    for key in ("quantization", "quantization_config"):
        value = config.get(key)
        if isinstance(value, dict):
            bits = _int(value.get("bits"))
            if bits is None and isinstance(value.get("weights"), str):
                bits = _int(re.sub(r"\D", "", value["weights"]) or None)
            mode = _str(value.get("mode")) or _str(value.get("quant_method"))
            return bits, _int(value.get("group_size")), mode
    return None, None, None


def _context_length(config: dict[str, Any]) -> int | None:
    for section in (config, config.get("text_config"), config.get("llm_config")):
        if not isinstance(section, dict):
            continue
        for key in CONTEXT_KEYS:
            value = _int(section.get(key))
            # Tokenizer configs use 1e30 for "no limit"; no model has a trillion-token window.
            if value is not None and value < 100_000_000:
                return value
    return None


def _is_mlx(folder: Path, config: dict[str, Any], repo_id: str | None) -> bool:
    """MLX evidence, cheapest first: an MLX org, MLX's `quantization` key, the model card's
    `library_name: mlx` / `mlx` tag, MLX's `format: mlx` safetensors metadata, MLX whisper's
    `weights.npz`/`weights.safetensors` beside a whisper config."""
    if repo_id and repo_id.split("/", 1)[0].lower() in MLX_ORGANIZATIONS:
        return True
    if isinstance(config.get("quantization"), dict):
        return True
    if _card_says_mlx(folder / "README.md"):
        return True
    if "n_mels" in config and any(
        (folder / w).exists() for w in ("weights.npz", "weights.safetensors")
    ):
        return True
    first = next(iter(sorted(folder.glob("*.safetensors"))), None)
    return first is not None and _safetensors_metadata(first).get("format") == "mlx"


def _card_says_mlx(readme: Path) -> bool:
    try:
        with readme.open(encoding="utf-8", errors="replace") as handle:
            head = handle.read(16 * 1024)
    except OSError:
        return False
    match = _FRONT_MATTER.match(head)
    if match is None:
        return False
    in_tags = False
    for raw in match.group(1).splitlines():
        line = raw.strip()
        key, sep, value = line.partition(":")
        if sep and not line.startswith("-"):
            in_tags = key.strip() == "tags"
            value = value.strip().strip("'\"")
            if key.strip() == "library_name" and value.lower() == "mlx":
                return True
            if in_tags and value.startswith("["):
                tags = [t.strip().strip("'\"").lower() for t in value.strip("[]").split(",")]
                if "mlx" in tags:
                    return True
        elif in_tags and line.startswith("-") and line[1:].strip().strip("'\"").lower() == "mlx":
            return True
    return False


def _safetensors_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` of a safetensors header (8-byte length, then JSON), or {}."""
    try:
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                return {}
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_SAFETENSORS_HEADER:
                return {}
            header = json.loads(handle.read(length))
    except (OSError, ValueError, struct.error):
        return {}
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}


def weights_bytes(folder: Path) -> int:
    """Bytes of the weight files MLX loads from `folder`: the one rule for "how big is it".

    The scheduler's memory estimate and the size the admin page shows both come from here, so
    they cannot disagree. The rule, for MLX model folders:
    - the whole tree is walked, not just the top level: image models (mflux) keep their weights
      in `transformer/`, `vae/`, `text_encoder/` subfolders, and they are mapped too;
    - only formats MLX loads count (`.safetensors`, MLX whisper's `.npz`, `.gguf`); a PyTorch
      `.bin`/`.pt`/`.pth` is never loaded by mlx-openai-server, and a repo that ships one next to
      its safetensors would otherwise be counted twice;
    - the HF cache's symlinks are followed (a snapshot holds links to `blobs/`), and a file
      reached twice (two links to one blob) counts once.
    """
    total = 0
    seen: set[tuple[int, int]] = set()
    for root, _dirs, files in os.walk(folder, followlinks=True):
        for name in files:
            if not name.endswith(WEIGHT_SUFFIXES):
                continue
            try:
                info = (Path(root) / name).stat()
            except OSError:
                continue
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_size
    return total


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").exists() or (folder / "chat_template.json").exists():
        return True
    return bool(_read_json(folder / "tokenizer_config.json").get("chat_template"))


# ---- suggestions ---------------------------------------------------------------------------


def suggested_profile(
    model: ModelCharacteristics,
    tool_call_parsers: Collection[str] = TOOL_CALL_PARSERS,
    reasoning_parsers: Collection[str] = REASONING_PARSERS,
) -> SuggestedProfile:
    """Profile options for `model`; parsers only when the server in use accepts them.

    Pass the installed server's own choices (`BackendInfo.choices["--tool-call-parser"]`) when
    known; the defaults are mlx-openai-server 1.8.1's.
    """
    tool, reasoning = _parsers(model)
    if tool is not None and tool not in tool_call_parsers:
        tool = None
    if reasoning is not None and reasoning not in reasoning_parsers:
        reasoning = None
    if model.kind != "lm" and model.kind != "multimodal":
        tool = reasoning = None
    return SuggestedProfile(
        model_type=_profile_model_type(model),
        tool_call_parser=tool,
        reasoning_parser=reasoning,
        enable_auto_tool_choice=tool is not None,
    )


def _profile_model_type(model: ModelCharacteristics) -> ModelType:
    if model.kind == "image":
        name = (model.repo_id or "").lower()
        return "image-edit" if "edit" in name or "kontext" in name else "image-generation"
    return model.kind


def _parsers(model: ModelCharacteristics) -> tuple[str | None, str | None]:
    """(tool-call parser, reasoning parser) for the model's architecture and name.

    Only families whose output format mlx-openai-server parses; Llama, Mistral, DeepSeek and
    the like get none rather than a parser for some other format.
    """
    mt = (model.model_type or "").lower()
    name = (model.repo_id or "").lower()
    if "functiongemma" in name:
        return "functiongemma", None
    if "iquest" in name:
        return "iquest_coder_v1", None
    if mt in ("qwen3_vl", "qwen3_vl_moe"):
        return "qwen3_vl", "qwen3_vl"
    if mt.startswith("qwen3_5"):
        return "qwen3_coder", "qwen3_5"
    if mt in ("qwen3_moe", "qwen3_next"):
        return ("qwen3_coder" if "coder" in name else "qwen3_moe"), "qwen3_moe"
    if mt == "qwen3":
        return ("qwen3_coder" if "coder" in name else "qwen3"), "qwen3"
    if mt.startswith("qwen2") and "vl" not in mt:
        return "hermes", None
    if mt == "glm4_moe_lite" or "glm-4.7-flash" in name:
        return "glm4_moe", "glm47_flash"
    if mt == "glm4_moe":
        return "glm4_moe", "glm4_moe"
    if mt == "gpt_oss":
        return "harmony", "harmony"
    if mt.startswith("gemma4"):
        return "gemma4", "gemma4"
    if mt == "kimi_k2" or ("kimi-k2" in name and mt.startswith("deepseek")):
        return "kimi_k2", "kimi_k2"
    if mt.startswith("minimax"):
        return "minimax_m2", "minimax_m2"
    if mt == "nemotron_h":
        return "nemotron3_nano", "nemotron3_nano"
    if mt.startswith("step3p5") or "step-3.5" in name:
        return "step_35", "step_35"
    if mt == "solar_open":
        return "solar_open", "solar_open"
    if mt.startswith("longcat") and "lite" in name:
        return "longcat_flash_lite", None
    if "hermes" in name:
        return "hermes", "hermes"
    return None, None


# ---- the HF cache --------------------------------------------------------------------------


def find_cached_mlx_model(model_id: str, cache_dir: Path | None) -> Path | None:
    """The snapshot folder of `model_id` ("org/name") if it is a complete MLX model in the
    local cache, else None. Never touches the network.

    Found by `find_cached_snapshot` (the one case and revision rule), so a snapshot that a
    download is still filling (its tree listing names files that are missing) does not count.
    """
    snapshot = find_cached_snapshot(model_id, cache_dir)
    if snapshot is None:
        return None
    if not describe_model(snapshot, repo_id_from_snapshot(snapshot)).is_mlx:
        return None
    return snapshot


@dataclass(frozen=True, slots=True)
class CachedModelProfile:
    """A cached MLX model and the profile that suits it (what JIT profiles are built from)."""

    repo_id: str  # as the cache spells it: the model_path that loads it
    folder: Path
    characteristics: ModelCharacteristics
    suggestion: SuggestedProfile

    def profile_fields(self, name: str) -> dict[str, Any]:
        """ServerProfile(**fields) for a profile called `name` (what the client asked for)."""
        return {"name": name, "model_path": self.repo_id, **self.suggestion.fields()}


def profile_for_cached_model(
    model_id: str,
    cache_dir: Path | None,
    tool_call_parsers: Collection[str] = TOOL_CALL_PARSERS,
    reasoning_parsers: Collection[str] = REASONING_PARSERS,
) -> CachedModelProfile | None:
    """`find_cached_mlx_model` + `describe_model` + `suggested_profile` in one call; None when
    `model_id` is not a complete MLX model in the cache. Reads files: call it in a thread."""
    folder = find_cached_mlx_model(model_id, cache_dir)
    if folder is None:
        return None
    repo_id = repo_id_from_snapshot(folder) or model_id
    model = describe_model(folder, repo_id)
    return CachedModelProfile(
        repo_id=repo_id,
        folder=folder,
        characteristics=model,
        suggestion=suggested_profile(model, tool_call_parsers, reasoning_parsers),
    )
