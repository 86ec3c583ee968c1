"""describe_model, suggested_profile and find_cached_mlx_model on real-world config shapes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from gateway.hub.cache import write_ref, write_tree_listing
from gateway.hub.model_info import (
    REASONING_PARSERS,
    TOOL_CALL_PARSERS,
    describe_model,
    find_cached_mlx_model,
    suggested_profile,
)
from tests.support.hub_fixtures import safetensors_bytes

MLX_CARD = "---\nlibrary_name: mlx\ntags:\n- mlx\n- text-generation\n---\n# card\n"


def make_folder(root: Path, name: str, config: dict[str, Any], **files: str | bytes) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    for rel, content in files.items():
        path = folder / rel.replace("__", ".")
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return folder


def test_quantized_llama(tmp_path: Path) -> None:
    folder = make_folder(
        tmp_path,
        "Llama-3.2-1B-Instruct-4bit",
        {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "max_position_embeddings": 131072,
            "quantization": {"group_size": 64, "bits": 4},
            "torch_dtype": "bfloat16",
        },
        model__safetensors=b"x" * 1000,
        tokenizer_config__json=json.dumps({"chat_template": "{{ messages }}"}),
    )
    model = describe_model(folder, "mlx-community/Llama-3.2-1B-Instruct-4bit")
    assert (model.family, model.kind, model.model_type) == ("llama", "lm", "llama")
    assert (model.quantization_bits, model.quantization_group_size) == (4, 64)
    assert model.context_length == 131072
    assert model.is_mlx
    assert model.has_chat_template
    assert model.weights_bytes == 1000
    profile = suggested_profile(model)
    # No parser for Llama's tool format ships with mlx-openai-server: suggest none, not a wrong one.
    assert profile.fields() == {
        "model_type": "lm",
        "tool_call_parser": None,
        "reasoning_parser": None,
        "enable_auto_tool_choice": False,
        "trust_remote_code": False,
    }


@pytest.mark.parametrize(
    ("model_type", "repo", "tool", "reasoning"),
    [
        ("qwen3", "mlx-community/Qwen3-4B-4bit", "qwen3", "qwen3"),
        ("qwen3_moe", "mlx-community/Qwen3-30B-A3B-4bit", "qwen3_moe", "qwen3_moe"),
        (
            "qwen3_moe",
            "mlx-community/Qwen3-Coder-30B-A3B-Instruct-4bit",
            "qwen3_coder",
            "qwen3_moe",
        ),
        ("qwen3_next", "mlx-community/Qwen3-Coder-Next-4bit", "qwen3_coder", "qwen3_moe"),
        ("qwen2", "mlx-community/Qwen2.5-7B-Instruct-4bit", "hermes", None),
        ("glm4_moe", "mlx-community/GLM-4.5-Air-4bit", "glm4_moe", "glm4_moe"),
        ("gpt_oss", "mlx-community/gpt-oss-20b-MXFP4-Q8", "harmony", "harmony"),
        ("minimax_m2", "mlx-community/MiniMax-M2.5-4bit", "minimax_m2", "minimax_m2"),
        ("mistral", "mlx-community/Mistral-7B-Instruct-v0.3-4bit", None, None),
    ],
)
def test_parsers_by_family(
    tmp_path: Path, model_type: str, repo: str, tool: str | None, reasoning: str | None
) -> None:
    folder = make_folder(
        tmp_path, "m", {"model_type": model_type, "architectures": ["XForCausalLM"]}
    )
    profile = suggested_profile(describe_model(folder, repo))
    assert (profile.tool_call_parser, profile.reasoning_parser) == (tool, reasoning)
    assert profile.enable_auto_tool_choice is (tool is not None)
    assert tool is None or tool in TOOL_CALL_PARSERS
    assert reasoning is None or reasoning in REASONING_PARSERS


def test_parsers_limited_to_what_the_installed_server_accepts(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, "m", {"model_type": "qwen3"})
    model = describe_model(folder, "mlx-community/Qwen3-4B-4bit")
    profile = suggested_profile(model, tool_call_parsers={"hermes"}, reasoning_parsers=set())
    assert (profile.tool_call_parser, profile.reasoning_parser) == (None, None)
    assert profile.enable_auto_tool_choice is False


def test_gemma3_vision_is_multimodal_with_nested_context(tmp_path: Path) -> None:
    folder = make_folder(
        tmp_path,
        "gemma-3-4b-it-4bit",
        {
            "architectures": ["Gemma3ForConditionalGeneration"],
            "model_type": "gemma3",
            "text_config": {"model_type": "gemma3_text", "max_position_embeddings": 131072},
            "vision_config": {"model_type": "siglip_vision_model"},
            "quantization": {"group_size": 64, "bits": 4},
        },
    )
    model = describe_model(folder, "mlx-community/gemma-3-4b-it-4bit")
    assert (model.family, model.kind, model.context_length) == ("gemma", "multimodal", 131072)
    assert suggested_profile(model).model_type == "multimodal"


def test_gemma3_text_only_is_an_lm(tmp_path: Path) -> None:
    folder = make_folder(
        tmp_path, "g", {"model_type": "gemma3_text", "max_position_embeddings": 32768}
    )
    model = describe_model(folder, "mlx-community/gemma-3-1b-it-4bit")
    assert (model.family, model.kind, model.context_length) == ("gemma", "lm", 32768)


def test_functiongemma_gets_its_parser(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, "g", {"model_type": "gemma3_text"})
    model = describe_model(folder, "mlx-community/functiongemma-270m-it-4bit")
    assert suggested_profile(model).tool_call_parser == "functiongemma"


def test_mlx_whisper_config(tmp_path: Path) -> None:
    # MLX whisper conversions carry OpenAI's dims and no model_type.
    folder = make_folder(
        tmp_path,
        "whisper-large-v3-turbo",
        {"n_mels": 128, "n_audio_ctx": 1500, "n_text_ctx": 448, "n_vocab": 51866},
        weights__npz=b"npz",
    )
    model = describe_model(folder, "someone/whisper-large-v3-turbo")
    assert (model.family, model.kind, model.context_length) == ("whisper", "whisper", None)
    assert model.is_mlx  # weights.npz beside a whisper config is MLX whisper's format
    profile = suggested_profile(model)
    assert (profile.model_type, profile.tool_call_parser) == ("whisper", None)


@pytest.mark.parametrize(
    ("config", "files", "repo"),
    [
        (
            {"model_type": "bert", "architectures": ["BertModel"]},
            {},
            "mlx-community/all-MiniLM-L6-v2-4bit",
        ),
        (
            {"model_type": "qwen3", "architectures": ["Qwen3Model"]},
            {},
            "mlx-community/Qwen3-Embedding-0.6B-4bit-DWQ",
        ),
        (
            {"model_type": "xlm-roberta", "architectures": ["XLMRobertaModel"]},
            {"modules__json": "[]"},
            "mlx-community/multilingual-e5-small-mlx",
        ),
    ],
)
def test_embeddings_models(
    tmp_path: Path, config: dict[str, Any], files: dict[str, str], repo: str
) -> None:
    model = describe_model(make_folder(tmp_path, "e", config, **files), repo)
    assert model.kind == "embeddings"
    profile = suggested_profile(model)
    assert (profile.model_type, profile.tool_call_parser, profile.reasoning_parser) == (
        "embeddings",
        None,
        None,
    )


def test_qwen_vl_is_multimodal(tmp_path: Path) -> None:
    folder = make_folder(
        tmp_path,
        "q",
        {
            "model_type": "qwen2_5_vl",
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "vision_config": {"depth": 32},
            "max_position_embeddings": 128000,
        },
    )
    model = describe_model(folder, "mlx-community/Qwen2.5-VL-7B-Instruct-4bit")
    assert (model.family, model.kind, model.context_length) == ("qwen", "multimodal", 128000)
    assert suggested_profile(model).tool_call_parser is None


def test_qwen3_vl_gets_vl_parsers(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, "q", {"model_type": "qwen3_vl", "vision_config": {}})
    profile = suggested_profile(describe_model(folder, "mlx-community/Qwen3-VL-8B-Instruct-4bit"))
    assert (profile.model_type, profile.tool_call_parser, profile.reasoning_parser) == (
        "multimodal",
        "qwen3_vl",
        "qwen3_vl",
    )


def test_diffusers_model_is_image(tmp_path: Path) -> None:
    folder = tmp_path / "flux"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    model = describe_model(folder, "black-forest-labs/FLUX.1-Kontext-dev")
    assert model.kind == "image"
    assert suggested_profile(model).model_type == "image-edit"


def test_transformers_quantization_config_and_non_mlx(tmp_path: Path) -> None:
    folder = make_folder(
        tmp_path,
        "awq",
        {"model_type": "mistral", "quantization_config": {"bits": 4, "quant_method": "awq"}},
    )
    model = describe_model(folder, "TheBloke/Mistral-7B-AWQ")
    assert (model.quantization_bits, model.quantization_mode) == (4, "awq")
    assert model.family == "mistral"
    assert not model.is_mlx


def test_mlx_evidence_from_card_and_safetensors_metadata(tmp_path: Path) -> None:
    card = make_folder(tmp_path, "a", {"model_type": "llama"}, README__md=MLX_CARD)
    assert describe_model(card, "someone/converted").is_mlx
    inline = make_folder(
        tmp_path, "b", {"model_type": "llama"}, README__md="---\ntags: [mlx, chat]\n---\n"
    )
    assert describe_model(inline, "someone/converted").is_mlx
    weights = make_folder(
        tmp_path,
        "c",
        {"model_type": "llama"},
        model__safetensors=safetensors_bytes(b"w", {"format": "mlx"}),
    )
    assert describe_model(weights, "someone/converted").is_mlx
    torch = make_folder(
        tmp_path,
        "d",
        {"model_type": "llama"},
        model__safetensors=safetensors_bytes(b"w", {"format": "pt"}),
    )
    assert not describe_model(torch, "someone/original").is_mlx


def test_missing_or_broken_config_degrades_to_unknown_lm(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    model = describe_model(folder)
    assert (model.kind, model.family, model.context_length, model.quantization_bits) == (
        "lm",
        None,
        None,
        None,
    )


# ---- find_cached_mlx_model --------------------------------------------------------------------


def fake_cached_repo(
    cache: Path, repo_id: str, files: dict[str, bytes], *, listing_extra: int = 0
) -> Path:
    """A repo laid out as huggingface-hub lays it out: blobs, relative symlinks, refs/main."""
    commit = "a" * 40
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (folder / "blobs").mkdir()
    listing: dict[str, dict[str, Any]] = {}
    for i, (name, content) in enumerate(files.items()):
        etag = f"{i:040x}"
        (folder / "blobs" / etag).write_bytes(content)
        os.symlink(f"../../blobs/{etag}", snapshot / name)
        listing[name] = {"size": len(content), "blob_id": etag}
    for j in range(listing_extra):
        listing[f"missing-{j}.safetensors"] = {"size": 1, "blob_id": f"{j:040x}"}
    write_tree_listing(folder, commit, listing)
    write_ref(folder, "main", commit)
    return snapshot


def test_find_cached_mlx_model(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    config = json.dumps({"model_type": "qwen3", "quantization": {"bits": 4}}).encode()
    snapshot = fake_cached_repo(cache, "mlx-community/Qwen3-4B-4bit", {"config.json": config})
    assert find_cached_mlx_model("mlx-community/Qwen3-4B-4bit", cache) == snapshot
    # Clients often lowercase model names.
    assert find_cached_mlx_model("mlx-community/qwen3-4b-4bit", cache) == snapshot
    assert find_cached_mlx_model("mlx-community/Other", cache) is None
    assert find_cached_mlx_model("not-a-repo-id", cache) is None
    assert find_cached_mlx_model("../etc/passwd", cache) is None


def test_find_cached_mlx_model_skips_incomplete_and_non_mlx(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    mlx_config = json.dumps({"model_type": "llama", "quantization": {"bits": 4}}).encode()
    fake_cached_repo(cache, "mlx-community/Half-Done", {"config.json": mlx_config}, listing_extra=1)
    assert find_cached_mlx_model("mlx-community/Half-Done", cache) is None
    plain = json.dumps({"model_type": "llama"}).encode()
    fake_cached_repo(cache, "meta-llama/Llama-3.2-1B", {"config.json": plain})
    assert find_cached_mlx_model("meta-llama/Llama-3.2-1B", cache) is None
