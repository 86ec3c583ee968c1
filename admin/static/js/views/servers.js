// Servers: live state of every profile's model server (polled), start/stop/restart, and the
// server's log followed live over SSE (fetch streaming, so the token stays in a header).

import { api, follow } from "../api.js";
import {
  badge,
  busy,
  clear,
  formatBytes,
  h,
  messageBox,
  notify,
  syncRows,
  table,
  timeAgo,
} from "../dom.js";

const POLL_MS = 2000;
const MAX_LOG_LINES = 2000;
const RUNNING = new Set(["starting", "ready"]);

export function render(root, ctx) {
  const controller = new AbortController();
  const { signal } = controller;
  const isAdmin = ctx.user.is_admin;
  const status = h("div", { class: "status-slot" });
  const summary = h("p", { class: "summary" });
  const list = table("Model servers", [
    "Server",
    "State",
    "#Memory",
    "#CPU",
    "#In flight",
    "Last used",
    "Started",
    "PID / port",
    "",
  ]);
  let logFollow = null; // {id, controller}
  let memory = null;
  let ticks = 0;

  const logTitle = h("h2", { id: "log-title" }, "Log");
  const logState = h("span", { class: "muted small-text" });
  const logView = h("pre", { class: "log", role: "log", "aria-labelledby": "log-title", tabindex: 0 });
  const autoScroll = h("input", { type: "checkbox", id: "log-autoscroll", checked: true });
  const closeLog = h("button", { type: "button", class: "small secondary" }, "Close log");
  const logSection = h(
    "section",
    { class: "card log-card", "aria-labelledby": "log-title", hidden: true },
    h(
      "div",
      { class: "section-head" },
      logTitle,
      logState,
      h("div", { class: "field check inline" }, autoScroll, h("label", { for: "log-autoscroll" }, "Follow")),
      closeLog,
    ),
    logView,
  );
  closeLog.addEventListener("click", stopLog);

  async function poll() {
    try {
      const wantMemory = ticks % 3 === 0;
      ticks += 1;
      const [servers, mem] = await Promise.all([
        api("/api/servers", { signal }),
        wantMemory ? api("/api/system/memory", { signal }) : Promise.resolve(memory),
      ]);
      memory = mem;
      clear(status);
      renderServers(servers);
    } catch (error) {
      if (error.name !== "AbortError") clear(status, messageBox(error.message));
    }
  }

  function renderServers(servers) {
    const running = servers.filter((s) => RUNNING.has(s.state));
    const held = running.reduce((sum, s) => sum + Math.max(s.memory_bytes || 0, s.need_bytes || 0), 0);
    clear(
      summary,
      `${running.length} of ${servers.length} running · `,
      h("strong", {}, formatBytes(held)),
      memory ? ` held of a ${formatBytes(memory.cap_bytes)} cap` : " held",
    );
    list.caption.textContent = `Model servers (${servers.length})`;
    if (!servers.length) {
      clear(
        list.tbody,
        h("tr", {}, h("td", { colspan: 9, class: "empty" }, "No profile yet: create one under Profiles.")),
      );
      return;
    }
    syncRows(list.tbody, servers, (s) => s.profile_id, createRow, updateRow);
  }

  function createRow(server) {
    const row = h("tr", {}, h("th", { scope: "row" }), ...Array.from({ length: 8 }, () => h("td")));
    const actions = row.lastElementChild;
    actions.className = "actions";
    const mk = (label, action) => {
      const button = h(
        "button",
        { type: "button", class: `small ${action === "stop" ? "danger" : ""}`, dataset: { action }, "aria-label": `${label} ${server.name}` },
        label,
      );
      button.addEventListener("click", () => act(button, row, action));
      return button;
    };
    if (isAdmin) actions.append(mk("Start", "start"), mk("Stop", "stop"), mk("Restart", "restart"));
    const logs = h(
      "button",
      { type: "button", class: "small secondary", dataset: { action: "logs" }, "aria-label": `Show the log of ${server.name}` },
      "Log",
    );
    logs.addEventListener("click", () => startLog(Number(row.dataset.key), row.dataset.name));
    actions.append(logs);
    return row;
  }

  function updateRow(row, s) {
    row.dataset.name = s.name;
    row.dataset.state = s.state;
    const [name, state, mem, cpu, inflight, lastUsed, started, pid] = row.children;
    clear(
      name,
      h("span", { class: "model-id" }, s.name),
      s.pinned ? [" ", badge("pinned", "info")] : null,
      s.last_error && !RUNNING.has(s.state) ? h("div", { class: "error-text small-text" }, s.last_error) : null,
    );
    clear(state, badge(s.state));
    mem.className = cpu.className = inflight.className = "num";
    mem.textContent = s.memory_bytes ? formatBytes(s.memory_bytes) : s.need_bytes ? `~${formatBytes(s.need_bytes)}` : "–";
    cpu.textContent = s.cpu_percent == null ? "–" : `${s.cpu_percent.toFixed(1)}%`;
    inflight.textContent = String(s.inflight);
    clear(lastUsed, timeAgo(s.last_used_at));
    clear(started, RUNNING.has(s.state) ? timeAgo(s.started_at) : "–");
    pid.textContent = s.pid ? `${s.pid} / ${s.port}` : "–";
    for (const button of row.querySelectorAll("button[data-action]")) {
      if (button.getAttribute("aria-busy")) continue;
      const action = button.dataset.action;
      if (action === "start") button.disabled = RUNNING.has(s.state) || s.state === "stopping";
      if (action === "stop") button.disabled = s.state === "stopped" || s.state === "stopping";
      if (action === "restart") button.disabled = s.state === "stopping";
    }
  }

  async function act(button, row, action) {
    const name = row.dataset.name;
    const labels = { start: "Starting…", stop: "Stopping…", restart: "Restarting…" };
    row.dataset.state = { start: "starting", stop: "stopping", restart: "starting" }[action];
    clear(row.children[1], badge(row.dataset.state));
    await busy(
      button,
      async () => {
        try {
          const snapshot = await api(`/api/servers/${row.dataset.key}/${action}`, { method: "POST", signal });
          notify(`${name}: ${snapshot.state}`, "success");
        } catch (error) {
          if (error.name !== "AbortError") notify(`${name}: ${error.message}`, "error");
        }
      },
      labels[action],
    );
    if (!signal.aborted) poll();
  }

  function stopLog() {
    if (logFollow) logFollow.controller.abort();
    logFollow = null;
    logSection.hidden = true;
  }

  function startLog(id, name) {
    if (logFollow) logFollow.controller.abort();
    const follower = new AbortController();
    signal.addEventListener("abort", () => follower.abort(), { once: true });
    logFollow = { id, controller: follower };
    logTitle.textContent = `Log of ${name}`;
    logView.replaceChildren();
    logSection.hidden = false;
    logSection.scrollIntoView({ block: "nearest" });
    logView.focus({ preventScroll: true });
    let first = true;
    follow(`/api/servers/${id}/logs?tail=200`, {
      signal: follower.signal,
      onEvent: (event) => {
        const { line } = JSON.parse(event.data);
        logView.append(h("span", { class: "line" }, line), "\n");
        while (logView.childNodes.length > MAX_LOG_LINES * 2) {
          logView.firstChild.remove();
          logView.firstChild.remove();
        }
        if (autoScroll.checked) logView.scrollTop = logView.scrollHeight;
      },
      onState: (state) => {
        if (state === "open" && !first) logView.append(h("span", { class: "line muted" }, "— reconnected —"), "\n");
        if (state === "open") first = false;
        logState.textContent = state === "open" ? "following" : state === "retrying" ? "reconnecting…" : "";
        logSection.dataset.state = state;
      },
    });
  }

  clear(
    root,
    h("h1", {}, "Servers"),
    summary,
    status,
    h("section", { class: "card" }, list.table),
    logSection,
  );
  poll();
  const timer = setInterval(() => {
    if (!document.hidden) poll();
  }, POLL_MS);
  return () => {
    clearInterval(timer);
    controller.abort();
  };
}
