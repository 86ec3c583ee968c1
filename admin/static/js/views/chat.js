// Chat playground: pick a model from /v1/models, stream the answer token by token (fetch
// streaming of /v1/chat/completions), reasoning shown apart, Stop aborts the request.
// Parts: modelPicker, chatOptions, the transcript's bubbles, composerForm; ask() runs one turn
// with readAnswer() (the stream) and turnSummary() (the status line).

import { api, stream } from "../api.js";
import { readEvents } from "../sse.js";
import { ThinkSplitter } from "../think.js";
import { clear, field, h, messageBox, notify } from "../dom.js";

export function render(root, ctx) {
  const controller = new AbortController();
  const { signal } = controller;
  /** @type {{role: string, content: string}[]} */
  let history = [];
  let running = null; // AbortController of the request in flight

  const picker = modelPicker(ctx.params.get("model"), signal);
  const options = chatOptions();
  const newChat = h("button", { type: "button", class: "small secondary" }, "New chat");
  const transcript = h("div", { class: "transcript", "aria-label": "Conversation" });
  const empty = h("p", { class: "muted empty-chat" }, "Pick a model and say something. The first message starts its server if it is not running.");
  transcript.append(empty);
  const composer = composerForm({
    send: (text) => {
      if (running || !picker.select.value) return false;
      ask(text);
      return true;
    },
    stop: () => running?.abort(),
  });

  newChat.addEventListener("click", () => {
    running?.abort();
    history = [];
    clear(transcript, empty);
    composer.status.textContent = "";
    composer.message.focus();
  });

  function bubble(role, text) {
    empty.remove();
    const article = h(
      "article",
      { class: `message ${role}`, "aria-label": role === "user" ? "You" : "Assistant" },
      h("header", {}, role === "user" ? "You" : picker.select.value),
      h("div", { class: "content" }, text),
    );
    transcript.append(article);
    article.scrollIntoView({ block: "end" });
    return article;
  }

  /** One turn: send the conversation, stream the answer into a new bubble, then sum it up. */
  async function ask(text) {
    history.push({ role: "user", content: text });
    bubble("user", text);
    const answer = answerView(bubble("assistant", ""));
    const request = new AbortController();
    const abortRequest = () => request.abort();
    signal.addEventListener("abort", abortRequest, { once: true });
    running = request;
    composer.busy(true);
    composer.status.textContent = "Waiting for the model…";

    const splitter = new ThinkSplitter();
    const turn = { outcome: "done", started: performance.now(), firstToken: null, usage: null, chunks: 0 };
    const body = options.body(picker.select.value, history);
    try {
      const response = await stream("/v1/chat/completions", body, request.signal);
      turn.usage = await readAnswer(response, splitter, {
        signal: request.signal,
        onStream: () => {
          answer.article.dataset.state = "streaming";
          composer.status.textContent = "Answering…";
        },
        onText: () => {
          turn.chunks += 1;
          if (turn.firstToken === null) turn.firstToken = performance.now();
          answer.paint(splitter);
        },
      });
      splitter.finish();
      answer.paint(splitter);
    } catch (error) {
      splitter.finish();
      answer.paint(splitter);
      if (error.name === "AbortError") {
        turn.outcome = "stopped";
      } else {
        turn.outcome = "error";
        answer.article.append(messageBox(error.message));
      }
    } finally {
      request.abort(); // closes the stream if a bad event ended the read early
      signal.removeEventListener("abort", abortRequest);
      running = null;
      composer.busy(false);
      answer.article.removeAttribute("aria-busy");
      answer.article.dataset.state = turn.outcome;
    }
    if (signal.aborted) return;
    if (turn.outcome === "stopped") {
      answer.article.append(h("p", { class: "muted small-text stopped" }, "Stopped."));
    }
    if (splitter.content || turn.outcome !== "error") {
      history.push({ role: "assistant", content: splitter.visibleContent });
    } else {
      history.pop(); // a failed turn is not part of the conversation
    }
    const parts = turnSummary(turn, performance.now());
    composer.status.textContent = parts.join(" · ");
    answer.article.append(h("footer", { class: "muted small-text" }, parts.slice(1).join(" · ")));
    if (turn.outcome === "error") notify("The model answered with an error", "error");
    composer.message.focus();
    picker.load(); // the first request may have started the server: show its new state
  }

  clear(
    root,
    h("h1", {}, "Chat"),
    h(
      "section",
      { class: "card chat-settings", "aria-label": "Chat settings" },
      h(
        "div",
        { class: "inline-form" },
        field("Model", picker.select),
        h("div", { class: "field submit" }, picker.refresh),
        h("div", { class: "field submit" }, newChat),
      ),
      picker.status,
      options.element,
    ),
    h("section", { class: "card chat" }, transcript, composer.form),
  );
  picker.load();
  return () => {
    controller.abort();
  };
}

/** The model <select> filled from /v1/models (with each server's state), and its Refresh. */
function modelPicker(wanted, signal) {
  const select = h("select", { name: "model", required: true });
  const refresh = h("button", { type: "button", class: "small secondary" }, "Refresh");
  const status = h("div", { class: "status-slot" });

  async function load() {
    try {
      const { data } = await api("/v1/models", { signal });
      const previous = select.value || wanted;
      clear(
        select,
        data.length
          ? data.map((m) => h("option", { value: m.id }, m.id === m.profile ? `${m.id} (${m.state})` : `${m.id} → ${m.profile} (${m.state})`))
          : h("option", { value: "" }, "no model: create a profile first"),
      );
      if (previous && data.some((m) => m.id === previous)) select.value = previous;
      select.disabled = !data.length;
      clear(status);
    } catch (error) {
      if (error.name !== "AbortError") clear(status, messageBox(error.message));
    }
  }
  refresh.addEventListener("click", load);
  return { select, refresh, status, load };
}

/** System prompt, temperature and max tokens; `body(model, history)` builds the request. */
function chatOptions() {
  const system = h("textarea", { name: "system", rows: 2, placeholder: "You are a helpful assistant." });
  const temperature = h("input", { type: "number", name: "temperature", min: 0, max: 2, step: 0.1, inputmode: "decimal" });
  const maxTokens = h("input", { type: "number", name: "max_tokens", min: 1, step: 1, inputmode: "numeric" });
  const element = h(
    "details",
    {},
    h("summary", {}, "Options"),
    h("div", { class: "inline-form" }, field("Temperature", temperature), field("Max tokens", maxTokens)),
    field("System prompt", system),
  );

  function body(model, history) {
    const prompt = system.value.trim();
    const messages = prompt ? [{ role: "system", content: prompt }, ...history] : [...history];
    const request = { model, messages, stream: true, stream_options: { include_usage: true } };
    if (temperature.value !== "") request.temperature = Number(temperature.value);
    if (maxTokens.value !== "") request.max_tokens = Math.trunc(Number(maxTokens.value));
    return request;
  }
  return { element, body };
}

/** The message box with Send and Stop. `send(text)` answers false when it cannot send now. */
function composerForm({ send, stop }) {
  const message = h("textarea", { name: "message", rows: 3, required: true, placeholder: "Message (Enter to send, Shift+Enter for a new line)" });
  const sendButton = h("button", { type: "submit", class: "primary" }, "Send");
  const stopButton = h("button", { type: "button", class: "danger", disabled: true }, "Stop");
  const status = h("p", { class: "chat-status muted", role: "status", "aria-live": "polite" });
  const form = h(
    "form",
    { class: "composer", "aria-label": "Send a message" },
    field("Message", message),
    h("div", { class: "composer-actions" }, status, stopButton, sendButton),
  );
  message.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  stopButton.addEventListener("click", stop);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = message.value.trim();
    if (text && send(text)) message.value = "";
  });

  /** While a turn runs: Send off, Stop on. */
  function busy(on) {
    sendButton.disabled = on;
    stopButton.disabled = !on;
  }
  return { form, message, status, busy };
}

/** The assistant's bubble: reasoning (hidden until there is some) above the answer. */
function answerView(article) {
  const content = article.querySelector(".content");
  const reasoningBody = h("div", { class: "reasoning-text" });
  const reasoning = h("details", { class: "reasoning", open: true, hidden: true }, h("summary", {}, "Reasoning"), reasoningBody);
  content.before(reasoning);
  article.setAttribute("aria-busy", "true");
  article.dataset.state = "waiting";

  function paint(splitter) {
    content.textContent = splitter.visibleContent;
    if (splitter.reasoning) {
      reasoning.hidden = false;
      reasoningBody.textContent = splitter.reasoning;
    }
    article.scrollIntoView({ block: "end" });
  }
  return { article, paint };
}

/**
 * Feed a chat completion answer into `splitter`: an SSE stream chunk by chunk (`onStream()`
 * when it starts, `onText()` after each chunk that added text), or one JSON answer from a
 * server that ignored `stream`. Resolves to the usage the server reported, or null.
 */
async function readAnswer(response, splitter, { signal, onStream, onText }) {
  if (!(response.headers.get("content-type") || "").includes("text/event-stream")) {
    const data = await response.json();
    const msg = data.choices?.[0]?.message || {};
    splitter.addReasoning(msg.reasoning_content || msg.reasoning || "");
    splitter.addContent(msg.content || "");
    return data.usage || null;
  }
  onStream();
  let usage = null;
  await readEvents(
    response,
    (event) => {
      const data = chunkOf(event);
      if (!data) return;
      if (data.usage) usage = data.usage;
      const delta = data.choices?.[0]?.delta;
      if (!delta) return;
      const before = splitter.content.length + splitter.reasoning.length;
      splitter.addReasoning(delta.reasoning_content || delta.reasoning || "");
      splitter.addContent(delta.content || "");
      if (splitter.content.length + splitter.reasoning.length > before) onText();
    },
    signal,
  );
  return usage;
}

/** A stream event's JSON chunk; null for `[DONE]` and what is not JSON. An error chunk throws. */
function chunkOf(event) {
  if (event.data === "[DONE]") return null;
  let data;
  try {
    data = JSON.parse(event.data);
  } catch {
    return null;
  }
  if (data.error) throw Object.assign(new Error(data.error.message || "the model failed"), { name: "StreamError" });
  return data;
}

/** ["Done", "2.1 s", "first token 0.40 s", "30 tokens", "17.6 tok/s"] for the status line. */
function turnSummary({ outcome, started, firstToken, usage, chunks }, now) {
  const seconds = (now - started) / 1000;
  const parts = [outcome === "stopped" ? "Stopped" : outcome === "error" ? "Failed" : "Done", `${seconds.toFixed(1)} s`];
  if (firstToken !== null) parts.push(`first token ${((firstToken - started) / 1000).toFixed(2)} s`);
  if (usage?.completion_tokens) {
    parts.push(`${usage.completion_tokens} tokens`);
    if (firstToken !== null && seconds > 0) parts.push(`${(usage.completion_tokens / Math.max(seconds - (firstToken - started) / 1000, 0.001)).toFixed(1)} tok/s`);
  } else if (chunks) {
    parts.push(`${chunks} chunks`);
  }
  return parts;
}
