"""A tiny OpenAI-compatible model server that "thinks": for the chat page's reasoning display.

Run as a gateway `command` profile: ``python reasoning_stub.py --port {port}``. Only the
standard library and aiohttp. `POST /v1/chat/completions` (streamed) answers in one of two
ways, chosen by the last user message:

* default: `delta.reasoning_content` chunks ("thinking step 0 ...") then `delta.content`
  chunks ("answer 0 ..."), as mlx-openai-server sends with a reasoning parser;
* a message containing "tags": the same, but inline in `content` as ``<think>...</think>``,
  with the tags cut across chunks (``<th`` + ``ink>``), as a server without a parser sends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from aiohttp import web

STEPS = 4
DELAY = 0.03


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-think",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "thinker",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n".encode()


def _pieces(tags: bool) -> list[dict[str, Any]]:
    thinking = [f"thinking step {i} " for i in range(STEPS)]
    answer = [f"answer {i} " for i in range(STEPS)]
    if not tags:
        return [{"reasoning_content": t} for t in thinking] + [{"content": a} for a in answer]
    # Tags cut at awkward places, as tokenizers do.
    text = "<think>" + "".join(thinking) + "</think>\n\n" + "".join(answer)
    close = text.index("</think>")
    cuts = [3, 9, 20, 41, close + 3, close + 12, len(text) - 7]
    pieces, start = [], 0
    for cut in [*sorted(cuts), len(text)]:
        pieces.append({"content": text[start:cut]})
        start = cut
    return pieces


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "thinker", "object": "model"}]})


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    last = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(_chunk({"role": "assistant", "content": ""}))
    for delta in _pieces("tags" in str(last)):
        await asyncio.sleep(DELAY)
        await response.write(_chunk(delta))
    await response.write(_chunk({}, "stop"))
    await response.write(b"data: [DONE]\n\n")
    return response


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
