// Servers: live state of every profile's model server (polled), start/stop/restart, and the
// server's log followed live over SSE (fetch streaming, so the token stays in a header).
// Parts: serverList (the polled table and its actions), nodeList (admins: the machines running
// `mlx-manager node`) and logPanel (one followed log).

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
import { vocabulary } from "../vocabulary.js";

const POLL_MS = 2000;
const MEMORY_EVERY = 3; // polls between memory reads (the cap rarely changes)
const MAX_LOG_LINES = 2000;

export function render(root, ctx) {
  const controller = new AbortController();
  const { signal } = controller;
  const log = logPanel(signal);
  const servers = serverList({ signal, isAdmin: ctx.user.is_admin }, { showLog: log.open });
  const nodes = ctx.user.is_admin ? nodeList(signal) : null;
  clear(
    root,
    h("h1", {}, "Servers"),
    servers.summary,
    servers.status,
    h("section", { class: "card" }, servers.table),
    nodes?.section,
    log.section,
  );
  const poll = () => {
    servers.poll();
    nodes?.poll();
  };
  poll();
  const timer = setInterval(() => {
    if (!document.hidden) poll();
  }, POLL_MS);
  return () => {
    clearInterval(timer);
    controller.abort();
  };
}

/** The table of servers, refreshed by poll(), with Start/Stop/Restart and Log per row. */
function serverList({ signal, isAdmin }, { showLog }) {
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
    "Node",
    "",
  ]);
  let memory = null;
  let running = new Set(); // the states that count as running (GET /api/system/info)
  let ticks = 0;

  async function poll() {
    try {
      const wantMemory = ticks % MEMORY_EVERY === 0;
      ticks += 1;
      const [servers, mem, words] = await Promise.all([
        api("/api/servers", { signal }),
        wantMemory ? api("/api/system/memory", { signal }) : Promise.resolve(memory),
        vocabulary(),
      ]);
      memory = mem;
      running = words.running;
      clear(status);
      show(servers);
    } catch (error) {
      if (error.name !== "AbortError") clear(status, messageBox(error.message));
    }
  }

  function show(servers) {
    clear(summary, ...summaryOf(servers, memory, running));
    list.caption.textContent = `Model servers (${servers.length})`;
    if (!servers.length) {
      clear(
        list.tbody,
        h("tr", {}, h("td", { colspan: 10, class: "empty" }, "No profile yet: create one under Profiles.")),
      );
      return;
    }
    // A profile on several nodes has one entry per node running it.
    syncRows(list.tbody, servers, (s) => `${s.profile_id}@${s.node ?? ""}`, createRow, updateRow);
  }

  function createRow(server) {
    const row = h("tr", {}, h("th", { scope: "row" }), ...Array.from({ length: 9 }, () => h("td")));
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
    // Nodes start and stop their servers on demand: nothing to press for those.
    if (isAdmin && server.node === "local") {
      actions.append(mk("Start", "start"), mk("Stop", "stop"), mk("Restart", "restart"));
    }
    const logs = h(
      "button",
      { type: "button", class: "small secondary", dataset: { action: "logs" }, "aria-label": `Show the log of ${server.name}` },
      "Log",
    );
    logs.addEventListener("click", () => showLog(Number(row.dataset.profile), row.dataset.name));
    if (server.node === "local") actions.append(logs);
    return row;
  }

  function updateRow(row, s) {
    row.dataset.name = s.name;
    row.dataset.state = s.state;
    row.dataset.profile = String(s.profile_id);
    const [name, state, mem, cpu, inflight, lastUsed, started, pid, node] = row.children;
    clear(
      name,
      h("span", { class: "model-id" }, s.name),
      s.pinned ? [" ", badge("pinned", "info")] : null,
      s.last_error && !running.has(s.state) ? h("div", { class: "error-text small-text" }, s.last_error) : null,
    );
    clear(state, badge(s.state));
    node.textContent = s.node === "local" ? "this machine" : s.node || "–";
    mem.className = cpu.className = inflight.className = "num";
    mem.textContent = s.memory_bytes ? formatBytes(s.memory_bytes) : s.need_bytes ? `~${formatBytes(s.need_bytes)}` : "–";
    cpu.textContent = s.cpu_percent == null ? "–" : `${s.cpu_percent.toFixed(1)}%`;
    inflight.textContent = String(s.inflight);
    clear(lastUsed, timeAgo(s.last_used_at));
    clear(started, running.has(s.state) ? timeAgo(s.started_at) : "–");
    pid.textContent = s.pid ? `${s.pid} / ${s.port}` : "–";
    for (const button of row.querySelectorAll("button[data-action]")) {
      if (button.getAttribute("aria-busy")) continue;
      const action = button.dataset.action;
      if (action === "start") button.disabled = running.has(s.state) || s.state === "stopping";
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
          const snapshot = await api(`/api/servers/${row.dataset.profile}/${action}`, { method: "POST", signal });
          notify(`${name}: ${snapshot.state}`, "success");
        } catch (error) {
          if (error.name !== "AbortError") notify(`${name}: ${error.message}`, "error");
        }
      },
      labels[action],
    );
    if (!signal.aborted) poll();
  }

  return { status, summary, table: list.table, poll };
}

/** Admins: the nodes (machines running `mlx-manager node`), up or down, with their memory. */
function nodeList(signal) {
  const list = table("Nodes", ["Node", "Status", "#Free", "#Cap", "#In flight", "Servers", "Last heartbeat"]);
  const section = h("section", { class: "card", hidden: true }, list.table);

  async function poll() {
    try {
      show(await api("/api/nodes", { signal }));
    } catch (error) {
      if (error.name !== "AbortError") section.hidden = true;
    }
  }

  function show(nodes) {
    section.hidden = nodes.every((n) => n.local); // only this machine: nothing to show
    list.caption.textContent = `Nodes (${nodes.length})`;
    syncRows(list.tbody, nodes, (n) => n.name, () => h("tr", {}, h("th", { scope: "row" }), ...Array.from({ length: 6 }, () => h("td"))), update);
  }

  function update(row, n) {
    const [name, status, free, cap, inflight, servers, seen] = row.children;
    name.textContent = n.local ? "this machine (local)" : n.name;
    clear(status, badge(n.status, n.status === "up" ? "ready" : "failed"));
    free.className = cap.className = inflight.className = "num";
    free.textContent = n.memory ? formatBytes(n.memory.free_bytes) : "–";
    cap.textContent = n.memory ? formatBytes(n.memory.cap_bytes) : "–";
    inflight.textContent = String(n.in_flight);
    servers.textContent = n.servers.filter((s) => s.state !== "stopped").map((s) => `${s.profile} (${s.state})`).join(", ") || "none running";
    clear(seen, timeAgo(n.last_seen));
  }

  return { section, poll };
}

/** "2 of 5 running · 3.1 GiB held of a 12 GiB cap" */
function summaryOf(servers, memory, runningStates) {
  const running = servers.filter((s) => runningStates.has(s.state));
  const held = running.reduce((sum, s) => sum + Math.max(s.memory_bytes || 0, s.need_bytes || 0), 0);
  return [
    `${running.length} of ${servers.length} running · `,
    h("strong", {}, formatBytes(held)),
    memory ? ` held of a ${formatBytes(memory.cap_bytes)} cap` : " held",
  ];
}

/** The log card: `open(id, name)` follows one server's log (the last MAX_LOG_LINES lines). */
function logPanel(signal) {
  let following = null; // AbortController of the log being followed
  const title = h("h2", { id: "log-title" }, "Log");
  const state = h("span", { class: "muted small-text" });
  const view = h("pre", { class: "log", role: "log", "aria-labelledby": "log-title", tabindex: 0 });
  const autoScroll = h("input", { type: "checkbox", id: "log-autoscroll", checked: true });
  const closeButton = h("button", { type: "button", class: "small secondary" }, "Close log");
  const section = h(
    "section",
    { class: "card log-card", "aria-labelledby": "log-title", hidden: true },
    h(
      "div",
      { class: "section-head" },
      title,
      state,
      h("div", { class: "field check inline" }, autoScroll, h("label", { for: "log-autoscroll" }, "Follow")),
      closeButton,
    ),
    view,
  );
  closeButton.addEventListener("click", close);

  function close() {
    following?.abort();
    following = null;
    section.hidden = true;
  }

  function append(line, extraClass = "") {
    view.append(h("span", { class: `line${extraClass}` }, line), "\n");
  }

  function open(id, name) {
    following?.abort();
    const follower = new AbortController();
    signal.addEventListener("abort", () => follower.abort(), { once: true });
    following = follower;
    title.textContent = `Log of ${name}`;
    view.replaceChildren();
    section.hidden = false;
    section.scrollIntoView({ block: "nearest" });
    view.focus({ preventScroll: true });
    let first = true;
    follow(`/api/servers/${id}/logs?tail=200`, {
      signal: follower.signal,
      onEvent: (event) => {
        append(JSON.parse(event.data).line);
        while (view.childNodes.length > MAX_LOG_LINES * 2) {
          view.firstChild.remove();
          view.firstChild.remove();
        }
        if (autoScroll.checked) view.scrollTop = view.scrollHeight;
      },
      onState: (now) => {
        if (now === "open" && !first) append("— reconnected —", " muted");
        if (now === "open") first = false;
        state.textContent = now === "open" ? "following" : now === "retrying" ? "reconnecting…" : "";
        section.dataset.state = now;
      },
    });
  }

  return { section, open };
}
