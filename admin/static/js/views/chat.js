// Chat playground: pick a model from /v1/models, stream the answer token by token (fetch
// streaming of /v1/chat/completions), reasoning shown apart, Stop aborts the request.

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

  const model = h("select", { name: "model", required: true });
  const refresh = h("button", { type: "button", class: "small secondary" }, "Refresh");
  const newChat = h("button", { type: "button", class: "small secondary" }, "New chat");
  const system = h("textarea", { name: "system", rows: 2, placeholder: "You are a helpful assistant." });
  const temperature = h("input", { type: "number", name: "temperature", min: 0, max: 2, step: 0.1, inputmode: "decimal" });
  const maxTokens = h("input", { type: "number", name: "max_tokens", min: 1, step: 1, inputmode: "numeric" });
  const transcript = h("div", { class: "transcript", "aria-label": "Conversation" });
  const empty = h("p", { class: "muted empty-chat" }, "Pick a model and say something. The first message starts its server if it is not running.");
  transcript.append(empty);
  const message = h("textarea", { name: "message", rows: 3, required: true, placeholder: "Message (Enter to send, Shift+Enter for a new line)" });
  const send = h("button", { type: "submit", class: "primary" }, "Send");
  const stop = h("button", { type: "button", class: "danger", disabled: true }, "Stop");
  const status = h("p", { class: "chat-status muted", role: "status", "aria-live": "polite" });
  const modelStatus = h("div", { class: "status-slot" });

  const composer = h(
    "form",
    { class: "composer", "aria-label": "Send a message" },
    field("Message", message),
    h("div", { class: "composer-actions" }, status, stop, send),
  );

  async function loadModels() {
    try {
      const { data } = await api("/v1/models", { signal });
      const previous = model.value || ctx.params.get("model");
      clear(
        model,
        data.length
          ? data.map((m) => h("option", { value: m.id }, m.id === m.profile ? `${m.id} (${m.state})` : `${m.id} → ${m.profile} (${m.state})`))
          : h("option", { value: "" }, "no model: create a profile first"),
      );
      if (previous && data.some((m) => m.id === previous)) model.value = previous;
      model.disabled = !data.length;
      clear(modelStatus);
    } catch (error) {
      if (error.name !== "AbortError") clear(modelStatus, messageBox(error.message));
    }
  }
  refresh.addEventListener("click", loadModels);
  newChat.addEventListener("click", () => {
    running?.abort();
    history = [];
    clear(transcript, empty);
    status.textContent = "";
    message.focus();
  });

  message.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      composer.requestSubmit();
    }
  });
  stop.addEventListener("click", () => running?.abort());
  composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = message.value.trim();
    if (!text || running || !model.value) return;
    message.value = "";
    ask(text);
  });

  function bubble(role, text) {
    empty.remove();
    const body = h("div", { class: "content" }, text);
    const article = h(
      "article",
      { class: `message ${role}`, "aria-label": role === "user" ? "You" : "Assistant" },
      h("header", {}, role === "user" ? "You" : model.value),
      body,
    );
    transcript.append(article);
    article.scrollIntoView({ block: "end" });
    return article;
  }

  async function ask(text) {
    history.push({ role: "user", content: text });
    bubble("user", text);
    const article = bubble("assistant", "");
    const content = article.querySelector(".content");
    const reasoningBody = h("div", { class: "reasoning-text" });
    const reasoning = h("details", { class: "reasoning", open: true, hidden: true }, h("summary", {}, "Reasoning"), reasoningBody);
    content.before(reasoning);
    article.setAttribute("aria-busy", "true");
    article.dataset.state = "waiting";

    const request = new AbortController();
    const abortRequest = () => request.abort();
    signal.addEventListener("abort", abortRequest, { once: true });
    running = request;
    send.disabled = true;
    stop.disabled = false;
    status.textContent = "Waiting for the model…";

    const splitter = new ThinkSplitter();
    const started = performance.now();
    let firstToken = null;
    let usage = null;
    let chunks = 0;
    const messages = system.value.trim() ? [{ role: "system", content: system.value.trim() }, ...history] : [...history];
    const body = { model: model.value, messages, stream: true, stream_options: { include_usage: true } };
    if (temperature.value !== "") body.temperature = Number(temperature.value);
    if (maxTokens.value !== "") body.max_tokens = Math.trunc(Number(maxTokens.value));

    const paint = () => {
      content.textContent = splitter.visibleContent;
      if (splitter.reasoning) {
        reasoning.hidden = false;
        reasoningBody.textContent = splitter.reasoning;
      }
      article.scrollIntoView({ block: "end" });
    };

    let outcome = "done";
    try {
      const response = await stream("/v1/chat/completions", body, request.signal);
      if (!(response.headers.get("content-type") || "").includes("text/event-stream")) {
        // A server that ignored `stream`: one JSON answer.
        const data = await response.json();
        const msg = data.choices?.[0]?.message || {};
        splitter.addReasoning(msg.reasoning_content || msg.reasoning || "");
        splitter.addContent(msg.content || "");
        usage = data.usage || null;
      } else {
        article.dataset.state = "streaming";
        status.textContent = "Answering…";
        await readEvents(
          response,
          (event) => {
            if (event.data === "[DONE]") return;
            let data;
            try {
              data = JSON.parse(event.data);
            } catch {
              return;
            }
            if (data.error) throw Object.assign(new Error(data.error.message || "the model failed"), { name: "StreamError" });
            if (data.usage) usage = data.usage;
            const delta = data.choices?.[0]?.delta;
            if (!delta) return;
            const before = splitter.content.length + splitter.reasoning.length;
            splitter.addReasoning(delta.reasoning_content || delta.reasoning || "");
            splitter.addContent(delta.content || "");
            if (splitter.content.length + splitter.reasoning.length > before) {
              chunks += 1;
              if (firstToken === null) firstToken = performance.now();
              paint();
            }
          },
          request.signal,
        );
      }
      splitter.finish();
      paint();
    } catch (error) {
      splitter.finish();
      paint();
      if (error.name === "AbortError") {
        outcome = "stopped";
      } else {
        outcome = "error";
        article.append(messageBox(error.message));
      }
    } finally {
      request.abort(); // closes the stream if a bad event ended the read early
      signal.removeEventListener("abort", abortRequest);
      running = null;
      send.disabled = false;
      stop.disabled = true;
      article.removeAttribute("aria-busy");
      article.dataset.state = outcome;
    }
    if (signal.aborted) return;
    if (outcome === "stopped") {
      article.append(h("p", { class: "muted small-text stopped" }, "Stopped."));
    }
    if (splitter.content || outcome !== "error") {
      history.push({ role: "assistant", content: splitter.visibleContent });
    } else {
      history.pop(); // a failed turn is not part of the conversation
    }
    const seconds = (performance.now() - started) / 1000;
    const parts = [outcome === "stopped" ? "Stopped" : outcome === "error" ? "Failed" : "Done", `${seconds.toFixed(1)} s`];
    if (firstToken !== null) parts.push(`first token ${((firstToken - started) / 1000).toFixed(2)} s`);
    if (usage?.completion_tokens) {
      parts.push(`${usage.completion_tokens} tokens`);
      if (firstToken !== null && seconds > 0) parts.push(`${(usage.completion_tokens / Math.max(seconds - (firstToken - started) / 1000, 0.001)).toFixed(1)} tok/s`);
    } else if (chunks) {
      parts.push(`${chunks} chunks`);
    }
    status.textContent = parts.join(" · ");
    article.append(h("footer", { class: "muted small-text" }, parts.slice(1).join(" · ")));
    if (outcome === "error") notify("The model answered with an error", "error");
    message.focus();
    loadModels(); // the first request may have started the server: show its new state
  }

  clear(
    root,
    h("h1", {}, "Chat"),
    h(
      "section",
      { class: "card chat-settings", "aria-label": "Chat settings" },
      h("div", { class: "inline-form" }, field("Model", model), h("div", { class: "field submit" }, refresh), h("div", { class: "field submit" }, newChat)),
      modelStatus,
      h(
        "details",
        {},
        h("summary", {}, "Options"),
        h("div", { class: "inline-form" }, field("Temperature", temperature), field("Max tokens", maxTokens)),
        field("System prompt", system),
      ),
    ),
    h("section", { class: "card chat" }, transcript, composer),
  );
  loadModels();
  return () => {
    controller.abort();
  };
}
