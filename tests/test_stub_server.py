"""Tests of the stub model server, run as a real subprocess on a real port.

The gateway's own tests and the benchmark rely on this stub behaving exactly as
documented (stream framing, events file, failure simulations), so it gets its own checks.
"""

from __future__ import annotations

import base64
import json
import signal
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.support.stub_server import (
    CRASH_EXIT_CODE,
    FATAL_LINE,
    StubProcess,
    embedding_for,
    free_port,
    read_events,
    start_stub,
    stub_argv,
)
from tests.support.waiting import wait_until_sync

CHUNKS = 3

Launch = Callable[..., StubProcess]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """Start stubs for one test; every one of them is SIGKILLed afterwards."""
    started: list[StubProcess] = []

    def _launch(*args: str, wait: bool = True) -> StubProcess:
        stub = start_stub(tmp_path / "logs", *args, wait=wait)
        started.append(stub)
        return stub

    yield _launch
    for stub in started:
        stub.kill()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StubProcess, Path]]:
    """One stub for the stateless endpoint checks (saves a process start per test)."""
    directory = tmp_path_factory.mktemp("shared-stub")
    events = directory / "events.jsonl"
    stub = start_stub(
        directory, "--name", "shared-model", "--chunks", str(CHUNKS), "--events", str(events)
    )
    try:
        yield stub, events
    finally:
        stub.kill()


@pytest.fixture
def client(shared: tuple[StubProcess, Path]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared[0].base_url, timeout=10) as c:
        yield c


def chat_body(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "whatever", "messages": [{"role": "user", "content": text}], **extra}


def wait_for_event(
    path: Path, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0
) -> dict[str, Any]:
    def matching() -> dict[str, Any] | None:
        return next((event for event in read_events(path) if predicate(event)), None)

    return wait_until_sync(matching, timeout=timeout, interval=0.02, message="a matching event")


def sse_frames(body: str) -> list[str]:
    """Split an SSE body into ``data:`` payloads, insisting on exact ``data: X\\n\\n`` framing."""
    assert body.endswith("\n\n")
    frames = body[:-2].split("\n\n")
    assert all(f.startswith("data: ") and "\n" not in f for f in frames), frames
    return [f.removeprefix("data: ") for f in frames]


# --------------------------------------------------------------------------- health


def test_health_models_and_runtime_health_toggle(launch: Launch) -> None:
    stub = launch("--name", "my-model")
    with httpx.Client(base_url=stub.base_url) as c:
        r = c.get("/health")
        assert (r.status_code, r.json()) == (200, {"status": "ok"})

        models = c.get("/v1/models").json()
        assert models["object"] == "list"
        assert [(m["id"], m["object"], m["owned_by"]) for m in models["data"]] == [
            ("my-model", "model", "stub")
        ]

        assert c.post("/_control/health", json={"status": 503}).json() == {"status": 503}
        assert c.get("/health").status_code == 503
        assert c.post("/_control/health", json={"status": "bad"}).status_code == 422
        c.post("/_control/health", json={"status": 200})
        assert c.get("/health").status_code == 200
    assert "stub: listening on http://127.0.0.1:" in stub.stdout_text()
    assert "GET /health -> 503" in stub.stdout_text()


def test_health_status_option(launch: Launch) -> None:
    stub = launch("--health-status", "500", "--quiet")
    assert httpx.get(f"{stub.base_url}/health").status_code == 500
    assert "/health" not in stub.stdout_text()  # --quiet: no per-request lines


# --------------------------------------------------------------------------- chat


def test_chat_non_stream_reply_usage_and_request_event(
    client: httpx.Client, shared: tuple[StubProcess, Path]
) -> None:
    request_id = uuid.uuid4().hex
    r = client.post(
        "/v1/chat/completions",
        json={
            "model": "asked-for",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hello there general kenobi " * 4},
            ],
        },
        headers={"X-Request-Id": request_id, "Authorization": "Bearer sk-1", "Cookie": "a=b"},
    )
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "shared-model"
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["message"] == {
        "role": "assistant",
        "content": "stub reply to: " + ("hello there general kenobi " * 4)[:40],
    }
    usage = body["usage"]
    assert usage["prompt_tokens"] == 2 + 16
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    event = wait_for_event(shared[1], lambda e: e.get("request_id") == request_id)
    assert event["event"] == "request"
    assert event["path"] == "/v1/chat/completions"
    assert event["model"] == "asked-for"
    assert event["stream"] is False
    assert event["authorization"] == "Bearer sk-1"
    assert event["cookie"] == "a=b"


def test_chat_with_tools_calls_first_tool(client: httpx.Client) -> None:
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {}}},
        {"type": "function", "function": {"name": "other", "parameters": {}}},
    ]
    body = client.post("/v1/chat/completions", json=chat_body("weather?", tools=tools)).json()
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": "{}"}


def test_chat_validation_errors_look_like_fastapi(client: httpx.Client) -> None:
    r = client.post(
        "/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400
    assert isinstance(r.json()["detail"], str)

    r = client.post("/v1/chat/completions", json={"model": "m"})
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "messages"]
    assert error["type"] == "missing"
    assert error["msg"]

    r = client.post("/v1/chat/completions", json={"messages": "nope"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "messages"]

    assert client.get("/v1/nowhere").json() == {"detail": "Not Found"}
    assert client.get("/v1/chat/completions").status_code == 405


@pytest.mark.parametrize("include_usage", [True, False])
def test_stream_framing_is_exact(client: httpx.Client, include_usage: bool) -> None:
    extra: dict[str, Any] = {"stream": True}
    if include_usage:
        extra["stream_options"] = {"include_usage": True}
    r = client.post("/v1/chat/completions", json=chat_body("count please", **extra))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")

    frames = sse_frames(r.text)
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert len(chunks) == 1 + CHUNKS + 1 + (1 if include_usage else 0)
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)

    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    contents = [c["choices"][0]["delta"]["content"] for c in chunks[1 : 1 + CHUNKS]]
    assert contents == [f"tok{i} " for i in range(CHUNKS)]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[: 1 + CHUNKS])
    finish = chunks[1 + CHUNKS]
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert finish["choices"][0]["delta"] == {}
    if include_usage:
        usage_chunk = chunks[-1]
        assert usage_chunk["choices"] == []
        assert usage_chunk["usage"]["completion_tokens"] == CHUNKS
        assert usage_chunk["usage"]["total_tokens"] == usage_chunk["usage"]["prompt_tokens"] + (
            CHUNKS
        )


def test_chunk_delay_spaces_chunks(launch: Launch, tmp_path: Path) -> None:
    """The client sees the first content chunk before the stub has finished the stream."""
    events = tmp_path / "events.jsonl"
    stub = launch("--chunk-delay", "0.2", "--chunks", "5", "--events", str(events))
    request_id = uuid.uuid4().hex
    seen_before_done = False
    contents: list[str] = []
    with (
        httpx.Client(base_url=stub.base_url, timeout=10) as c,
        c.stream(
            "POST",
            "/v1/chat/completions",
            json=chat_body("hi", stream=True),
            headers={"X-Request-Id": request_id},
        ) as r,
    ):
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            delta = json.loads(line[6:])["choices"][0]["delta"]
            if delta.get("content"):
                contents.append(delta["content"])
                if len(contents) == 1:
                    names = [e["event"] for e in read_events(events)]
                    assert "request" in names
                    assert "stream_done" not in names
                    seen_before_done = True
    assert seen_before_done
    assert contents == [f"tok{i} " for i in range(5)]
    done = wait_for_event(events, lambda e: e["event"] == "stream_done")
    assert done["chunks_sent"] == 5
    assert done["request_id"] == request_id


def test_client_disconnect_mid_stream_is_recorded(launch: Launch, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    stub = launch("--chunk-delay", "0.2", "--chunks", "50", "--events", str(events))
    request_id = uuid.uuid4().hex
    with (
        httpx.Client(base_url=stub.base_url, timeout=10) as c,
        c.stream(
            "POST",
            "/v1/chat/completions",
            json=chat_body("hi", stream=True),
            headers={"X-Request-Id": request_id},
        ) as r,
    ):
        for line in r.iter_lines():
            if "tok0" in line:
                break  # leaving both blocks closes the connection mid-stream
    closed = wait_for_event(events, lambda e: e["event"] == "stream_closed_by_client")
    assert closed["request_id"] == request_id
    assert 1 <= closed["chunks_sent"] < 50
    assert "stream_done" not in [e["event"] for e in read_events(events)]
    assert httpx.get(f"{stub.base_url}/health").status_code == 200  # still serving


# --------------------------------------------------------------------------- lifecycle


def test_exit_on_start_exits_with_code_and_stderr_line() -> None:
    done = subprocess.run(
        stub_argv(free_port(), "--exit-on-start", "7"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 7
    assert FATAL_LINE in done.stderr
    assert "listening" not in done.stdout


def test_ignore_sigterm_survives_sigterm(launch: Launch) -> None:
    stub = launch("--ignore-sigterm")
    stub.proc.send_signal(signal.SIGTERM)
    with pytest.raises(subprocess.TimeoutExpired):
        stub.proc.wait(timeout=0.5)
    assert httpx.get(f"{stub.base_url}/health").status_code == 200
    assert stub.kill() == -signal.SIGKILL


def test_sigterm_stops_politely(launch: Launch, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    stub = launch("--events", str(events))
    stub.proc.send_signal(signal.SIGTERM)
    assert stub.proc.wait(timeout=10) == 0
    assert [e["event"] for e in read_events(events)] == ["started", "stopped"]


def test_startup_delay_and_memory(launch: Launch, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    before = time.time()
    stub = launch("--startup-delay", "0.5", "--memory-mb", "64", "--events", str(events))
    (started,) = read_events(events)
    assert started["event"] == "started"
    assert started["pid"] == stub.pid
    assert started["ts"] - before >= 0.5
    assert psutil.Process(stub.pid).memory_info().rss >= 64 * 1024 * 1024


# --------------------------------------------------------------------------- triggers


def test_error_500_trigger(client: httpx.Client) -> None:
    r = client.post("/v1/chat/completions", json=chat_body("__error_500__"))
    assert r.status_code == 500
    assert r.json() == {"detail": "simulated failure"}
    r = client.post("/v1/chat/completions", json=chat_body("__error_500__", stream=True))
    assert r.status_code == 500


def test_slow_trigger_delays_the_answer(client: httpx.Client) -> None:
    with pytest.raises(httpx.ReadTimeout):
        client.post("/v1/chat/completions", json=chat_body("__slow__"), timeout=0.5)
    assert client.get("/health").status_code == 200


def test_crash_trigger_kills_the_process_mid_request(launch: Launch, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    stub = launch("--events", str(events))
    with pytest.raises(httpx.TransportError):
        httpx.post(f"{stub.base_url}/v1/chat/completions", json=chat_body("__crash__"), timeout=10)
    assert stub.proc.wait(timeout=10) == CRASH_EXIT_CODE
    assert [e["event"] for e in read_events(events)] == ["started", "request", "crash"]
    assert "simulated crash" in stub.stderr_text()


# --------------------------------------------------------------------------- other endpoints


def test_embeddings_are_deterministic(client: httpx.Client) -> None:
    one = client.post("/v1/embeddings", json={"model": "e", "input": "hello"}).json()
    assert one["object"] == "list"
    (item,) = one["data"]
    assert item["index"] == 0
    assert item["embedding"] == embedding_for("hello")
    assert len(item["embedding"]) == 8
    assert one["usage"] == {"prompt_tokens": 1, "total_tokens": 1}

    many = client.post("/v1/embeddings", json={"input": ["hello", "big world"]}).json()
    assert [d["index"] for d in many["data"]] == [0, 1]
    assert many["data"][0]["embedding"] == item["embedding"]
    assert many["data"][1]["embedding"] != item["embedding"]
    assert many["usage"]["prompt_tokens"] == 3

    b64 = client.post("/v1/embeddings", json={"input": "hello", "encoding_format": "base64"})
    packed = base64.b64decode(b64.json()["data"][0]["embedding"])
    assert list(struct.unpack("<8f", packed)) == pytest.approx(item["embedding"], abs=1e-6)

    assert client.post("/v1/embeddings", json={"model": "e"}).status_code == 422


def test_transcription_multipart(client: httpx.Client) -> None:
    r = client.post(
        "/v1/audio/transcriptions",
        files={"file": ("clip.wav", b"\x00" * 1234, "audio/wav")},
        data={"model": "whisper"},
    )
    assert r.status_code == 200
    assert r.json() == {"text": "stub transcription of clip.wav (1234 bytes)"}

    text = client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.mp3", b"abc", "audio/mpeg")},
        data={"response_format": "text"},
    )
    assert text.text == "stub transcription of a.mp3 (3 bytes)"
    assert client.post("/v1/audio/transcriptions", data={"model": "w"}).status_code == 422


def test_completions_and_responses(client: httpx.Client) -> None:
    body = client.post("/v1/completions", json={"prompt": "once upon"}).json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "stub completion of: once upon"
    assert body["usage"]["prompt_tokens"] == 2

    r = client.post("/v1/completions", json={"prompt": "x", "stream": True})
    frames = sse_frames(r.text)
    assert frames[-1] == "[DONE]"
    texts = [json.loads(f)["choices"][0]["text"] for f in frames[:-1]]
    assert texts == [f"tok{i} " for i in range(CHUNKS)] + [""]

    resp = client.post("/v1/responses", json={"model": "m", "input": "hi there"}).json()
    assert resp["object"] == "response"
    (message,) = resp["output"]
    assert message["type"] == "message"
    assert message["role"] == "assistant"
    assert message["content"][0] == {
        "type": "output_text",
        "text": "stub reply to: hi there",
        "annotations": [],
    }
    usage = resp["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]

    stream = client.post("/v1/responses", json={"input": "hi", "stream": True}).text
    assert stream.count("event: response.output_text.delta\n") == CHUNKS
    assert stream.rstrip().split("\n")[-2] == "event: response.completed"


def test_images_generation_and_edit(client: httpx.Client) -> None:
    gen = client.post("/v1/images/generations", json={"prompt": "a cat", "n": 2}).json()
    assert isinstance(gen["created"], int)
    assert len(gen["data"]) == 2
    assert base64.b64decode(gen["data"][0]["b64_json"]).startswith(b"\x89PNG")

    edit = client.post(
        "/v1/images/edits",
        files={"image": ("in.png", b"\x89PNG....", "image/png")},
        data={"prompt": "add a hat"},
    ).json()
    (item,) = edit["data"]
    assert item["b64_json"]
    assert item["revised_prompt"] == "stub edit of in.png (8 bytes): add a hat"


def test_free_port_is_bindable_and_module_import_is_inert() -> None:
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
    # Importing the stub module must not start a server or parse sys.argv.
    out = subprocess.run(
        [sys.executable, "-c", "import tests.support.stub_server as s; print(s.STUB_SCRIPT.name)"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "stub_server.py"
