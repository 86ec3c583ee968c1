"""Unit tests of the page's stream readers: the SSE parser (sse.js) and the <think> splitter
(think.js), run in the Chromium the UI suite already drives (no Node.js).

The page's modules are imported as they ship: Playwright answers the requests of a made-up
origin from `admin/static`, so no server and no gateway are involved. The browser starts once
per module; every case is fed to the real entry points (`readEvents` over a byte stream with
the browser's TextDecoder, `ThinkSplitter.addContent`/`addReasoning`/`finish`) and the outcome
is checked in Python, one test per case, so a failure names its case.
"""

from __future__ import annotations

import asyncio
import itertools
import mimetypes
from typing import Any

import pytest
from playwright.async_api import Route, async_playwright

from admin.ui import STATIC
from tests.ui.conftest import CHROMIUM, CHROMIUM_ARGS

ORIGIN = "http://mlx-manager.test"
HARNESS = "<!doctype html><meta charset='utf-8'><title>stream parsers</title>"

Event = dict[str, str | None]


def msg(data: str, event: str = "message", id: str | None = None) -> Event:
    return {"event": event, "data": data, "id": id}


def split_every(text: str, size: int) -> list[bytes]:
    raw = text.encode()
    return [raw[i : i + size] for i in range(0, len(raw), size)]


def cut(text: str, *at: int) -> list[bytes]:
    """The UTF-8 bytes of `text`, cut at the given byte offsets."""
    raw = text.encode()
    bounds = [0, *at, len(raw)]
    return [raw[a:b] for a, b in itertools.pairwise(bounds)]


CHUNK = '{"choices":[{"delta":{"content":"hé"}}]}'
SSE_CASES: dict[str, tuple[list[bytes], list[Event]]] = {
    "one event in one chunk": ([b"data: hello\n\n"], [msg("hello")]),
    "a line cut in the middle": (
        [b"data: hel", b"lo wor", b"ld\n\n"],
        [msg("hello world")],
    ),
    "an event cut between its lines": (
        [b'event: download\ndata: {"a"', b": 1}\n", b"\n", b"data: two\n\n"],
        [msg('{"a": 1}', "download"), msg("two")],
    ),
    "every byte its own chunk": (
        split_every(f"data: {CHUNK}\n\ndata: [DONE]\n\n", 1),
        [msg(CHUNK), msg("[DONE]")],
    ),
    "a multi-byte character cut between chunks": (
        # "é" is C3 A9 and "€" E2 82 AC: cut inside both.
        cut("data: café €5\n\n", 10, 14),
        [msg("café €5")],
    ),
    "a 4-byte character cut after each byte": (
        cut("data: 🙂!\n\n", 7, 8, 9),
        [msg("🙂!")],
    ),
    "comments are skipped": (
        [b": connected\n\n", b": keepalive\ndata: x\n\n"],
        [msg("x")],
    ),
    "a comment alone is no event": ([b": connected\n\n"], []),
    "[DONE] is passed on as data": (
        [b'data: {"n": 1}\n\n', b"data: [DONE]\n\n"],
        [msg('{"n": 1}'), msg("[DONE]")],
    ),
    "CRLF line ends": (
        [b"event: download\r\ndata: a\r\n\r\ndata: b\r\n\r\n"],
        [msg("a", "download"), msg("b")],
    ),
    "CRLF cut between CR and LF": (
        [b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"],
        [msg("a\nb")],
    ),
    "lone CR line ends": ([b"data: a\r\rdata: b\r\r"], [msg("a"), msg("b")]),
    "multi-line data joined with newlines": (
        [b"data: first\ndata:second\ndata:  third\n\n"],
        [msg("first\nsecond\n third")],
    ),
    "empty data line": ([b"data\n\ndata:\n\n"], [msg(""), msg("")]),
    "event type and id": (
        [b"id: 7\nevent: log\ndata: line\n\ndata: plain\n\n"],
        [msg("line", "log", "7"), msg("plain")],
    ),
    "the type does not leak into the next event": (
        [b"event: log\ndata: a\n\ndata: b\n\n"],
        [msg("a", "log"), msg("b")],
    ),
    "an event without data is dropped": ([b"event: ping\n\ndata: x\n\n"], [msg("x")]),
    "unknown fields are ignored": ([b"retry: 5\nfoo: bar\ndata: x\n\n"], [msg("x")]),
    # WHATWG drops an unfinished last event; EventParser.end() delivers it, so a /v1 answer
    # whose server closed without the blank line still shows its last chunk.
    "an event cut off by the end of the stream is delivered": (
        [b"data: a\n\ndata: b"],
        [msg("a"), msg("b")],
    ),
    "no events at all": ([], []),
}


def piece(kind: str, text: str) -> tuple[str, str]:
    return (kind, text)


def content(*texts: str) -> list[tuple[str, str]]:
    return [piece("content", t) for t in texts]


Outcome = dict[str, str]


def out(content: str, reasoning: str = "", visible: str | None = None) -> Outcome:
    return {
        "content": content,
        "reasoning": reasoning,
        "visible": content if visible is None else visible,
    }


THINK_CASES: dict[str, tuple[list[tuple[str, str]], Outcome]] = {
    "no think": (content("Hello", " world"), out("Hello world")),
    "no think, leading blank kept": (content("\n  Hi"), out("\n  Hi")),
    "a think block in one chunk": (
        content("<think>plan</think>\n\nanswer"),
        out("\n\nanswer", "plan", "answer"),
    ),
    "tags cut across chunks": (
        content("<th", "ink>pl", "an</thi", "nk>ans", "wer"),
        out("answer", "plan"),
    ),
    "tags cut after every character": (
        content(*"<think>a b</think>c d"),
        out("c d", "a b"),
    ),
    "unterminated think": (content("<think>still ", "thinking"), out("", "still thinking")),
    "unterminated think ending in half a closing tag": (
        content("<think>abc</th"),
        out("", "abc</th"),
    ),
    "text after </think> with a second block": (
        content("<think>one</think>mid<think>two</think>end"),
        out("midend", "onetwo"),
    ),
    "closing tag only (the template opened the block)": (
        content("reason", "ing</think>\n\nanswer"),
        out("\n\nanswer", "reasoning", "answer"),
    ),
    "a < that is not a tag": (content("a <", "b and <t", "able>"), out("a <b and <table>")),
    "half an opening tag at the end is text": (content("x <thi"), out("x <thi")),
    "reasoning deltas go to reasoning": (
        [piece("reasoning", "step 1 "), piece("reasoning", "step 2"), *content("done")],
        out("done", "step 1 step 2"),
    ),
    "tags inside think are text": (
        content("<think>a <think> b</think>c"),
        out("c", "a <think> b"),
    ),
}

RUN_SSE = """async (cases) => {
    const { readEvents } = await import(`${location.origin}/js/sse.js`);
    const results = {};
    for (const [name, chunks] of Object.entries(cases)) {
        const body = new ReadableStream({
            start(controller) {
                for (const chunk of chunks) controller.enqueue(new Uint8Array(chunk));
                controller.close();
            },
        });
        const events = [];
        await readEvents(new Response(body), (event) => events.push(event));
        results[name] = events;
    }
    return results;
}"""

RUN_THINK = """async (cases) => {
    const { ThinkSplitter } = await import(`${location.origin}/js/think.js`);
    const results = {};
    for (const [name, pieces] of Object.entries(cases)) {
        const splitter = new ThinkSplitter();
        for (const [kind, text] of pieces) {
            if (kind === "content") splitter.addContent(text);
            else splitter.addReasoning(text);
        }
        splitter.finish();
        results[name] = {
            content: splitter.content,
            reasoning: splitter.reasoning,
            visible: splitter.visibleContent,
        };
    }
    return results;
}"""


async def _serve(route: Route) -> None:
    path = route.request.url.removeprefix(ORIGIN).split("?")[0]
    if path == "/":
        await route.fulfill(body=HARNESS, content_type="text/html")
        return
    target = (STATIC / path.lstrip("/")).resolve()
    if not target.is_relative_to(STATIC) or not target.is_file():
        await route.fulfill(status=404, body="not found")
        return
    kind = "text/javascript" if target.suffix == ".js" else mimetypes.guess_type(target.name)[0]
    await route.fulfill(body=target.read_bytes(), content_type=kind or "text/plain")


async def _run_cases() -> dict[str, dict[str, Any]]:
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: run scripts/install-browser.sh")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.route(f"{ORIGIN}/**", _serve)
            await page.goto(f"{ORIGIN}/")
            sse_input = {name: [list(c) for c in chunks] for name, (chunks, _) in SSE_CASES.items()}
            think_input = {name: pieces for name, (pieces, _) in THINK_CASES.items()}
            results = {
                "sse": await page.evaluate(RUN_SSE, sse_input),
                "think": await page.evaluate(RUN_THINK, think_input),
            }
            assert not errors, errors
            return results
        finally:
            await browser.close()


@pytest.fixture(scope="module")
def results() -> dict[str, dict[str, Any]]:
    """Every case, run once in one browser (a sync fixture with its own event loop, so the
    browser is not started once per case)."""
    return asyncio.run(_run_cases())


@pytest.mark.parametrize("name", list(SSE_CASES))
def test_sse_parser(results: dict[str, dict[str, Any]], name: str) -> None:
    _, expected = SSE_CASES[name]
    assert results["sse"][name] == expected


@pytest.mark.parametrize("name", list(THINK_CASES))
def test_think_splitter(results: dict[str, dict[str, Any]], name: str) -> None:
    _, expected = THINK_CASES[name]
    assert results["think"][name] == expected


def test_every_case_ran(results: dict[str, dict[str, Any]]) -> None:
    assert set(results["sse"]) == set(SSE_CASES)
    assert set(results["think"]) == set(THINK_CASES)
