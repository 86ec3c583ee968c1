"""Stand-ins for what a real machine has installed: the mlx-openai-server CLI, an HF cache.

`fake_backend` answers `--version` and `launch --help` exactly as mlx-openai-server 1.8.1 does,
so launch-spec detection is tested against the real text without the real (slow) backend.
"""

from __future__ import annotations

import sys
from pathlib import Path

TOOL_CALL_PARSERS = (
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
)
REASONING_PARSERS = (
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
)
BACKEND_VERSION = "1.8.1"
# `mlx-openai-server --version` of 1.8.1, verbatim: a banner, no "launch --help" text.
BACKEND_VERSION_TEXT = (
    "\n\u2728 mlx-openai-server - OpenAI Compatible API Server for MLX models \u2728\n"
    + "\u2501" * 42
    + f"\n\U0001f680 Version: {BACKEND_VERSION}\n\n"
)
# `mlx-openai-server launch --help` of 1.8.1, verbatim (the two long choice lists joined in).
BACKEND_HELP = """\
Usage: mlx-openai-server launch [OPTIONS]

  Start the FastAPI/Uvicorn server with the supplied flags.

  When ``--config`` is provided the server launches in multi-handler mode,
  loading all models defined in the YAML file. In this mode per-model CLI
  flags (``--model-path``, ``--model-type``, etc.) are ignored.

  Otherwise the command builds a single-model ``MLXServerConfig`` and calls
  the async ``start`` routine.

Options:
  --config PATH                   Path to a YAML config file for multi-handler
                                  mode. When provided, --model-path and other
                                  per-model flags are ignored.
  --model-path TEXT               Path to the model (required for lm,
                                  multimodal, embeddings, image-generation,
                                  image-edit, whisper model types). With
                                  `image-generation` or `image-edit` model
                                  types, it should be the local path to the
                                  model.
  --model-type [lm|multimodal|image-generation|image-edit|embeddings|whisper]
                                  Type of model to run (lm: text-only,
                                  multimodal: text+vision+audio, image-
                                  generation: flux image generation, image-
                                  edit: flux image edit, embeddings: text
                                  embeddings, whisper: audio transcription)
  --context-length INTEGER        Context length for language models. If not
                                  specified, uses model default. Only works
                                  with `lm` or `multimodal` model types.
  --served-model-name TEXT        Override the model name returned by
                                  /v1/models and accepted in request 'model'
                                  field. Defaults to model_path if not set.
  --port INTEGER                  Port to run the server on
  --host TEXT                     Host to run the server on
  --queue-timeout INTEGER         Request timeout in seconds
  --queue-size INTEGER            Maximum queue size for pending requests
  --quantize INTEGER              Quantization level for the model. Only used
                                  for image-generation and image-edit Flux
                                  models.
  --config-name CONFIG_NAME       Config name of the model. Only used for
                                  image-generation and image-edit models.
  --lora-paths TEXT               Path to the LoRA file(s). Multiple paths
                                  should be separated by commas.
  --lora-scales TEXT              Scale factor for the LoRA file(s). Multiple
                                  scales should be separated by commas.
  --disable-auto-resize           Disable automatic model resizing. Only work
                                  for Vision Language Models.
  --log-file TEXT                 Path to log file. If not specified, logs
                                  will be written to 'logs/app.log' by
                                  default.
  --no-log-file                   Disable file logging entirely. Only console
                                  output will be shown.
  --log-level [DEBUG|INFO|WARNING|ERROR|CRITICAL]
                                  Set the logging level. Default is INFO.
  --enable-auto-tool-choice       Enable automatic tool choice. Only works
                                  with language models.
  --tool-call-parser [{tool_call_parsers}]
                                  Specify tool call parser to use instead of
                                  auto-detection. Only works with language
                                  models.
  --reasoning-parser [{reasoning_parsers}]
                                  Specify reasoning parser to use instead of
                                  auto-detection. Only works with language
                                  models.
  --trust-remote-code             Enable trust_remote_code when loading
                                  models. This allows loading custom code from
                                  model repositories.
  --chat-template-file TEXT       Path to a custom chat template file. Only
                                  works with language models (lm) and
                                  multimodal models.
  --debug                         Enable debug mode for language models. Only
                                  works with language models (lm) and
                                  multimodal models.
  --prompt-cache-size INTEGER     Maximum number of prompt KV cache entries to
                                  store. Only works with language models (lm).
                                  Default is 10.
  --max-bytes INTEGER             Maximum total bytes retained by prompt KV
                                  caches before eviction. Only works with
                                  language models (lm).
  --prompt-cache-dir DIRECTORY    Directory for disk-backed prompt KV cache
                                  payloads. Defaults to a process-local
                                  temporary directory.
  --draft-model-path TEXT         Path to the draft model for speculative
                                  decoding. Only supported with model type
                                  'lm'. When set, --num-draft-tokens controls
                                  how many tokens the draft model generates
                                  per step.
  --num-draft-tokens INTEGER      Number of draft tokens per step when using
                                  speculative decoding (--draft-model-path).
                                  Only supported with model type 'lm'. Default
                                  is 2.
  --kv-bits INTEGER               Number of bits for KV cache quantization
                                  (e.g. 4, 8). Reduces memory usage at the
                                  cost of some quality. Only works with 'lm'
                                  and 'multimodal' model types.
  --kv-group-size INTEGER         Group size for KV cache quantization.
                                  Default is 64.
  --quantized-kv-start INTEGER    Step to begin using a quantized KV cache
                                  when --kv-bits is set. Default is 0.
  --decode-concurrency INTEGER    When a request is batchable, decode that
                                  many requests in parallel. Applies to 'lm'
                                  and 'multimodal' model types. Default is 32.
  --prompt-concurrency INTEGER    When a request is batchable, prefill that
                                  many prompts in parallel. Applies to 'lm'
                                  and 'multimodal' model types. Default is 8.
  --prefill-step-size INTEGER     Maximum tokens processed per prefill step
                                  during batched generation. Applies to 'lm'
                                  and 'multimodal' model types. Default is
                                  2048.
  --disable-batching              Disable continuous batching for LM/VLM
                                  models. Use this when per-request positive
                                  seeds must be honored.
  --max-tokens INTEGER            Default maximum number of tokens to
                                  generate. If omitted, uses model
                                  generation_config.json when available.
  --temperature FLOAT             Default sampling temperature.
  --top-p FLOAT                   Default nucleus sampling (top-p)
                                  probability.
  --top-k INTEGER                 Default top-k sampling parameter.
  --min-p FLOAT                   Default min-p sampling parameter.
  --repetition-penalty FLOAT      Default repetition penalty for token
                                  generation.
  --presence-penalty FLOAT        Default presence penalty for token
                                  generation.
  --xtc-probability FLOAT         Default XTC probability sampling parameter.
  --xtc-threshold FLOAT           Default XTC threshold sampling parameter.
  --seed INTEGER                  Default random seed for generation.
  --repetition-context-size INTEGER
                                  Default repetition context size parameter.
  --help                          Show this message and exit.
""".format(
    tool_call_parsers="|".join(TOOL_CALL_PARSERS),
    reasoning_parsers="|".join(REASONING_PARSERS),
)

_FAKE_BACKEND = """\
#!{python}
# Answers like mlx-openai-server {version}: `--version` and `launch --help`; records each call.
import sys
with open({calls!r}, "a") as handle:
    handle.write(" ".join(sys.argv[1:]) + "\\n")
args = sys.argv[1:]
if args == ["--version"]:
    sys.stdout.write({version_text!r})
elif args == ["launch", "--help"]:
    sys.stdout.write({help!r})
else:
    sys.stderr.write("fake mlx-openai-server: unexpected arguments %r\\n" % (args,))
    sys.exit(2)
"""


def fake_backend(directory: Path) -> Path:
    """An executable that answers `--version` and `launch --help` as mlx-openai-server 1.8.1
    does; every call is appended to `<directory>/backend-calls.txt`."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "mlx-openai-server"
    script.write_text(
        _FAKE_BACKEND.format(
            python=sys.executable,
            version=BACKEND_VERSION,
            calls=str(directory / "backend-calls.txt"),
            version_text=BACKEND_VERSION_TEXT,
            help=BACKEND_HELP,
        )
    )
    script.chmod(0o755)
    return script


def fake_hf_cache(root: Path, repo_id: str, files: dict[str, bytes] | None = None) -> Path:
    """A Hugging Face cache (hub layout) holding one snapshot of `repo_id`; returns the cache."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in (files or {"config.json": b"{}"}).items():
        (snapshot / name).write_bytes(data)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return root
