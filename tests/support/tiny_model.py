"""A tiny random-weight Llama model that the real mlx-openai-server can load.

Tests that run the real model server need a model on disk, and this machine cannot download one.
A 2-layer, 64-wide Llama with a small byte-level BPE tokenizer loads in seconds, streams real
tokens and needs only numpy, safetensors and tokenizers, which the gateway's test environment
already has (this runs in the test process, not in the backend venv). Its output is noise, but
the whole serving path (tokenizer, chat template, generation, streaming, usage) is the real one.

Usage: ``python tests/support/tiny_model.py DEST`` or ``build_tiny_model(path)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

# Bumped whenever the files written change, so that a model cached by an older version of this
# module is rebuilt rather than silently reused.
FORMAT_VERSION = 1
MARKER_NAME = ".tiny-model-marker"
WEIGHTS_NAME = "model.safetensors"
SEED = 1234

HIDDEN_SIZE = 64
INTERMEDIATE_SIZE = 128
NUM_LAYERS = 2
NUM_HEADS = 4
TARGET_VOCAB_SIZE = 768
MAX_POSITION_EMBEDDINGS = 2048

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [UNK, BOS, EOS, PAD, IM_START, IM_END]

# ChatML, the shape most instruct models use, so the server's chat path is exercised as it is
# for a real model. Each turn ends with <|im_end|>, which is therefore the end-of-turn token.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}"
    "<|im_start|>system\nYou may call these tools: {{ tools | tojson }}<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] in ['system', 'user', 'assistant', 'tool'] %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% elif message['content'] %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% else %}"
    "{{ raise_exception('Unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Training text for the tokenizer: plain English, enough for a few hundred merges so that common
# words become single tokens and prompts tokenize to realistic lengths.
CORPUS = """\
The quick brown fox jumps over the lazy dog. A small model can still say hello to the world.
Once upon a time there was a little town by the sea. The people of the town woke up early
every morning to fish, to bake bread and to sell fruit at the market near the old harbour.
The children walked to school along the river, and the teachers told them stories about the
stars, the moon and the long history of their country. In the evening the families sat
together, shared a warm meal and talked about the weather, the price of apples and the news.
What is the capital of France? Paris is the capital of France, and Berlin is the capital of
Germany. Please write a short poem about the ocean. Can you help me with my homework today?
Tell me a joke about a cat and a computer. How many days are there in a week? There are seven
days in a week and twelve months in a year. Water boils at one hundred degrees at sea level.
The assistant answers questions, writes code, explains ideas and summarizes long documents.
The user asks a question and the assistant gives a helpful, honest and clear answer. If the
question is unclear, the assistant asks what the user means before it answers.
Computers store numbers in memory, and a program tells the processor what to do with them.
A server listens on a port, accepts a request, does some work and sends back a response.
When the memory is full, the oldest model is unloaded so that a new one can be started.
Good software is tested, measured and kept simple, so that other people can read and change it.
The garden was full of red roses, yellow tulips and tall green trees that moved in the wind.
She opened the window, looked at the rain and decided to stay at home with a good book.
He bought two tickets for the train, one for himself and one for his younger brother.
Numbers: zero, one, two, three, four, five, six, seven, eight, nine, ten, eleven, twelve.
Colors: red, orange, yellow, green, blue, purple, black, white, gray, brown and pink.
Thank you very much for your help. You are welcome, have a nice day and see you tomorrow.
"""


def _spec() -> dict[str, Any]:
    """Everything that determines the files written; hashed into the marker."""
    return {
        "format_version": FORMAT_VERSION,
        "seed": SEED,
        "hidden_size": HIDDEN_SIZE,
        "intermediate_size": INTERMEDIATE_SIZE,
        "num_layers": NUM_LAYERS,
        "num_heads": NUM_HEADS,
        "target_vocab_size": TARGET_VOCAB_SIZE,
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "special_tokens": SPECIAL_TOKENS,
        "chat_template": CHAT_TEMPLATE,
        "corpus": CORPUS,
    }


def _marker_text() -> str:
    digest = hashlib.sha256(json.dumps(_spec(), sort_keys=True).encode()).hexdigest()
    return f"tiny-llama v{FORMAT_VERSION} {digest}\n"


def _is_complete(dest: Path) -> bool:
    marker = dest / MARKER_NAME
    required = ("config.json", WEIGHTS_NAME, "tokenizer.json", "tokenizer_config.json")
    return (
        all((dest / name).is_file() for name in required)
        and marker.is_file()
        and marker.read_text() == _marker_text()
    )


def _train_tokenizer() -> Tokenizer:
    """Byte-level BPE so that any text (emoji, other scripts) tokenizes without unknowns."""
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # Keep offsets right but add no BOS here: the chat template adds it, and a second one
    # would change prompt token counts.
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TARGET_VOCAB_SIZE,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in CORPUS.splitlines() if line.strip()]
    tokenizer.train_from_iterator(lines, trainer=trainer)
    return tokenizer


def _config(vocab_size: int, tokenizer: Tokenizer) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN_SIZE,
        "intermediate_size": INTERMEDIATE_SIZE,
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": NUM_HEADS,
        "num_key_value_heads": NUM_HEADS,
        "head_dim": HIDDEN_SIZE // NUM_HEADS,
        "vocab_size": vocab_size,
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_traditional": False,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "bos_token_id": tokenizer.token_to_id(BOS),
        # Both end markers stop generation, as they would for a real ChatML model.
        "eos_token_id": [tokenizer.token_to_id(IM_END), tokenizer.token_to_id(EOS)],
        "pad_token_id": tokenizer.token_to_id(PAD),
    }


def _weights(vocab_size: int) -> dict[str, np.ndarray[Any, np.dtype[np.float32]]]:
    """Small random matrices (std 0.02, as models are initialised) and unit norms.

    Embeddings are tied, so no lm_head is written: mlx-lm's llama would drop it anyway.
    """
    rng = np.random.default_rng(SEED)

    def normal(*shape: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        return rng.normal(0.0, 0.02, size=shape).astype(np.float32)

    def ones(size: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        return np.ones(size, dtype=np.float32)

    head_dim = HIDDEN_SIZE // NUM_HEADS
    attn_width = NUM_HEADS * head_dim
    tensors = {"model.embed_tokens.weight": normal(vocab_size, HIDDEN_SIZE)}
    for i in range(NUM_LAYERS):
        p = f"model.layers.{i}"
        tensors[f"{p}.self_attn.q_proj.weight"] = normal(attn_width, HIDDEN_SIZE)
        tensors[f"{p}.self_attn.k_proj.weight"] = normal(attn_width, HIDDEN_SIZE)
        tensors[f"{p}.self_attn.v_proj.weight"] = normal(attn_width, HIDDEN_SIZE)
        tensors[f"{p}.self_attn.o_proj.weight"] = normal(HIDDEN_SIZE, attn_width)
        tensors[f"{p}.mlp.gate_proj.weight"] = normal(INTERMEDIATE_SIZE, HIDDEN_SIZE)
        tensors[f"{p}.mlp.up_proj.weight"] = normal(INTERMEDIATE_SIZE, HIDDEN_SIZE)
        tensors[f"{p}.mlp.down_proj.weight"] = normal(HIDDEN_SIZE, INTERMEDIATE_SIZE)
        tensors[f"{p}.input_layernorm.weight"] = ones(HIDDEN_SIZE)
        tensors[f"{p}.post_attention_layernorm.weight"] = ones(HIDDEN_SIZE)
    tensors["model.norm.weight"] = ones(HIDDEN_SIZE)
    return tensors


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _write_model(folder: Path) -> None:
    tokenizer = _train_tokenizer()
    vocab_size = tokenizer.get_vocab_size()
    tokenizer.save(str(folder / "tokenizer.json"))
    _write_json(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS,
            "eos_token": IM_END,
            "unk_token": UNK,
            "pad_token": PAD,
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": MAX_POSITION_EMBEDDINGS,
            "chat_template": CHAT_TEMPLATE,
        },
    )
    _write_json(
        folder / "special_tokens_map.json",
        {"bos_token": BOS, "eos_token": IM_END, "unk_token": UNK, "pad_token": PAD},
    )
    config = _config(vocab_size, tokenizer)
    _write_json(folder / "config.json", config)
    _write_json(
        folder / "generation_config.json",
        {
            "bos_token_id": config["bos_token_id"],
            "eos_token_id": config["eos_token_id"],
            "pad_token_id": config["pad_token_id"],
        },
    )
    save_file(_weights(vocab_size), str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    # Last, so that a folder with a marker is always complete.
    (folder / MARKER_NAME).write_text(_marker_text())


def build_tiny_model(dest: Path) -> Path:
    """Write the tiny model into ``dest`` unless an identical one is already there.

    The model is built in a sibling temp folder and renamed into place, so a crash or a
    concurrent builder never leaves a half-written model at ``dest``. Returns ``dest``.
    """
    dest = Path(dest).absolute()
    if _is_complete(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        _write_model(tmp)
        # mkdtemp makes a private folder; the model is meant to be read by other processes.
        tmp.chmod(0o755)
        (tmp / WEIGHTS_NAME).chmod(0o644)
        if dest.exists():
            # Stale or partial leftovers from an older version: move aside, then delete, so
            # that dest is never a mix of old and new files.
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.replace(dest, old / dest.name)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, dest)
        except OSError:
            # Another process renamed its copy into place first; theirs is as good as ours.
            if not _is_complete(dest):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tests/support/tiny_model.py DEST", file=sys.stderr)
        return 2
    print(build_tiny_model(Path(argv[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
