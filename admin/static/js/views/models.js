// Models: search the hub, download with live progress (SSE over fetch), cancel, and the
// models already on this machine with what their files say. Three parts, one per card:
// hubSearch, downloadList and localModels; render() wires them together.

import { api, follow, query } from "../api.js";
import {
  badge,
  busy,
  clear,
  confirmDialog,
  field,
  formatBytes,
  formatDuration,
  formatNumber,
  formatRate,
  h,
  messageBox,
  notify,
  syncRows,
  table,
  timeAgo,
} from "../dom.js";

const ACTIVE = new Set(["pending", "downloading"]);
const SORTS = [
  ["downloads", "Most downloaded"],
  ["likes", "Most liked"],
  ["lastModified", "Recently updated"],
];
const DOWNLOADS_SHOWN = 8; // finished downloads kept in the list (active ones always are)

export function modelPath(id) {
  return id.split("/").map(encodeURIComponent).join("/");
}

export function render(root, ctx) {
  const controller = new AbortController();
  const env = { signal: controller.signal, isAdmin: ctx.user.is_admin, go: ctx.go };
  // The parts know each other only through these calls (made after all three exist).
  const local = localModels(env, { changed: () => search.refreshActions() });
  const downloads = downloadList(env, {
    changed: () => search.refreshActions(),
    finished: () => local.load(),
  });
  const search = hubSearch(env, {
    onMachine: (id, otherwise) => local.has(id) ?? otherwise,
    downloading: (id) => downloads.isActive(id),
    download: (id) => downloads.start(id),
  });
  clear(root, h("h1", {}, "Models"), search.section, downloads.section, local.section);
  local.load();
  downloads.follow();
  return () => controller.abort();
}

// ---- search -------------------------------------------------------------------------------

/** The hub search card. `links.onMachine(id, otherwise)`, `links.downloading(id)`,
 * `links.download(id)` come from the other parts. */
function hubSearch({ signal, isAdmin }, links) {
  const q = h("input", { type: "search", name: "query", placeholder: "e.g. Qwen3 4bit" });
  const author = h("input", { type: "text", name: "author", placeholder: "any", autocomplete: "off" });
  const sort = h("select", { name: "sort" }, SORTS.map(([v, label]) => h("option", { value: v }, label)));
  const maxSize = h("input", { type: "number", name: "max_size_gb", min: "0.1", step: "0.1", inputmode: "decimal" });
  const searchButton = h("button", { type: "submit", class: "primary" }, "Search");
  const status = h("div", { class: "status-slot" });
  const results = table("Search results", ["Model", "#Size", "#Downloads", "#Likes", "Updated", ""]);
  results.table.hidden = true;
  const form = h(
    "form",
    { class: "inline-form", role: "search", "aria-label": "Search the hub" },
    field("Search", q),
    field("Author", author, "Organisation or user"),
    field("Sort by", sort),
    field("Max size (GiB)", maxSize),
    h("div", { class: "field submit" }, searchButton),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    busy(searchButton, search, "Searching…");
  });

  async function search() {
    clear(status);
    const params = {
      query: q.value.trim() || null,
      sort: sort.value,
      max_size_gb: maxSize.value ? Number(maxSize.value) : null,
      limit: 30,
    };
    // An empty author means the gateway's default organisation (if one is set).
    if (author.value.trim()) params.author = author.value.trim();
    try {
      showResults(await api(`/api/models/search${query(params)}`, { signal }));
    } catch (error) {
      if (error.name === "AbortError") return;
      results.table.hidden = true;
      clear(status, messageBox(error.message));
    }
  }

  function showResults(found) {
    results.caption.textContent = `${found.length} model${found.length === 1 ? "" : "s"} found`;
    results.table.hidden = false;
    clear(results.tbody);
    if (!found.length) {
      results.tbody.append(h("tr", {}, h("td", { colspan: 6, class: "empty" }, "No MLX model matches.")));
      return;
    }
    for (const model of found) results.tbody.append(resultRow(model));
  }

  function resultRow(model) {
    const action = h("td", { class: "actions" });
    const row = h(
      "tr",
      { dataset: { model: model.id } },
      h("th", { scope: "row" }, h("span", { class: "model-id" }, model.id), tags(model)),
      h("td", { class: "num" }, model.size_bytes == null ? "unknown" : formatBytes(model.size_bytes)),
      h("td", { class: "num" }, formatNumber(model.downloads)),
      h("td", { class: "num" }, formatNumber(model.likes)),
      h("td", {}, timeAgo(model.last_modified)),
      action,
    );
    renderAction(action, model);
    return row;
  }

  function renderAction(cell, model) {
    if (links.onMachine(model.id, model.downloaded)) {
      clear(cell, badge("on this machine", "ok"));
    } else if (links.downloading(model.id)) {
      clear(cell, badge("downloading", "busy"));
    } else if (isAdmin) {
      const button = h("button", { type: "button", class: "small", "aria-label": `Download ${model.id}` }, "Download");
      button.addEventListener("click", () => busy(button, () => links.download(model.id), "Starting…"));
      clear(cell, button);
    } else {
      clear(cell);
    }
  }

  /** Re-render each result's action after a download or the local list changed. */
  function refreshActions() {
    for (const row of results.tbody.querySelectorAll("tr[data-model]")) {
      renderAction(row.querySelector("td.actions"), { id: row.dataset.model });
    }
  }

  const section = h(
    "section",
    { class: "card", "aria-labelledby": "hub-title" },
    h("h2", { id: "hub-title" }, "Find models on the hub"),
    form,
    status,
    results.table,
  );
  return { section, refreshActions };
}

function tags(model) {
  const shown = (model.tags || []).filter((t) => /bit|instruct|vision|whisper|embed/i.test(t)).slice(0, 3);
  const extra = [];
  if (model.gated) extra.push(badge("gated", "warn"));
  return shown.length || extra.length
    ? h("span", { class: "tags" }, shown.map((t) => h("span", { class: "tag" }, t)), extra)
    : null;
}

// ---- downloads ----------------------------------------------------------------------------

/** The downloads card, kept live by the SSE stream. `links.changed()` when a download starts
 * or stops being active; `links.finished()` when one ends (the local list has news). */
function downloadList({ signal, isAdmin }, links) {
  const downloads = new Map(); // id -> view
  const list = h("ul", { class: "downloads", "aria-label": "Downloads" });
  const empty = h("p", { class: "muted" }, "No downloads yet.");
  const liveState = h("span", { class: "muted small-text", "aria-live": "off" });

  function isActive(modelId) {
    const wanted = modelId.toLowerCase();
    return [...downloads.values()].some((d) => ACTIVE.has(d.status) && d.model_id.toLowerCase() === wanted);
  }

  async function start(modelId) {
    try {
      upsert(await api("/api/downloads", { method: "POST", body: { model_id: modelId }, signal }));
      notify(`Downloading ${modelId}`);
    } catch (error) {
      if (error.name !== "AbortError") notify(`Cannot download ${modelId}: ${error.message}`, "error");
    }
  }

  function upsert(view) {
    const before = downloads.get(view.id);
    downloads.set(view.id, view);
    renderList();
    if (!before || ACTIVE.has(before.status) !== ACTIVE.has(view.status)) links.changed();
    if (before && ACTIVE.has(before.status) && !ACTIVE.has(view.status)) {
      if (view.status === "completed") notify(`${view.model_id} downloaded`, "success");
      else if (view.status === "failed") notify(`${view.model_id}: ${view.error || "failed"}`, "error");
      links.finished();
    }
  }

  function renderList() {
    const all = [...downloads.values()].sort((a, b) => b.id - a.id);
    const shown = all.filter((d, i) => ACTIVE.has(d.status) || i < DOWNLOADS_SHOWN);
    empty.hidden = shown.length > 0;
    const byId = new Map([...list.children].map((li) => [li.dataset.id, li]));
    let previous = null;
    for (const view of shown) {
      let li = byId.get(String(view.id));
      if (li) byId.delete(String(view.id));
      else li = createItem(view);
      updateItem(li, view);
      if ((previous ? previous.nextElementSibling : list.firstElementChild) !== li) {
        if (previous) previous.after(li);
        else list.prepend(li);
      }
      previous = li;
    }
    for (const li of byId.values()) li.remove();
  }

  function createItem(view) {
    const progress = h("progress", { max: 1, "aria-label": `Download progress of ${view.model_id}` });
    const cancel = h(
      "button",
      { type: "button", class: "small secondary", "aria-label": `Cancel download of ${view.model_id}` },
      "Cancel",
    );
    cancel.addEventListener("click", () =>
      busy(cancel, async () => {
        try {
          upsert(await api(`/api/downloads/${view.id}`, { method: "DELETE", signal }));
        } catch (error) {
          if (error.name !== "AbortError") notify(error.message, "error");
        }
      }),
    );
    return h(
      "li",
      { class: "download", dataset: { id: view.id } },
      h("div", { class: "download-head" }, h("strong", {}, view.model_id), h("span", { class: "status" })),
      progress,
      h("div", { class: "download-foot" }, h("span", { class: "meta" }), isAdmin ? cancel : null),
    );
  }

  function updateItem(li, view) {
    li.dataset.status = view.status;
    clear(li.querySelector(".status"), badge(view.status));
    const progress = li.querySelector("progress");
    if (view.bytes_total) {
      progress.max = view.bytes_total;
      progress.value = view.bytes_done;
      progress.setAttribute("aria-valuetext", `${Math.floor((view.bytes_done / view.bytes_total) * 100)}%`);
    } else {
      progress.removeAttribute("value"); // indeterminate until the size is known
    }
    li.querySelector(".meta").textContent = progressText(view);
    const cancel = li.querySelector("button");
    if (cancel) cancel.hidden = !ACTIVE.has(view.status);
  }

  async function load() {
    try {
      for (const view of await api("/api/downloads", { signal })) upsert(view);
    } catch (error) {
      if (error.name !== "AbortError") notify(error.message, "error");
    }
  }

  /** Load the list, then follow the event stream until the view closes. */
  async function followEvents() {
    await load();
    if (signal.aborted) return;
    follow("/api/downloads/events", {
      signal,
      onEvent: (event) => {
        if (event.event === "download") upsert(JSON.parse(event.data));
      },
      onState: (state) => {
        // Events only cover what runs now: after a reconnect, catch up on what ended meanwhile.
        if (state === "open" && liveState.dataset.state === "retrying") load();
        liveState.textContent = state === "open" ? "live" : state === "retrying" ? "reconnecting…" : "";
        liveState.dataset.state = state;
      },
    });
  }

  const section = h(
    "section",
    { class: "card", "aria-labelledby": "downloads-title" },
    h("div", { class: "section-head" }, h("h2", { id: "downloads-title" }, "Downloads"), liveState),
    empty,
    list,
  );
  return { section, isActive, start, follow: followEvents };
}

/** "1.2 GiB of 4 GiB (30%) · 20 MiB/s · 3 min left · 2/5 files" */
function progressText(view) {
  const parts = [];
  if (view.bytes_total) {
    const pct = Math.floor((view.bytes_done / view.bytes_total) * 100);
    parts.push(`${formatBytes(view.bytes_done)} of ${formatBytes(view.bytes_total)} (${pct}%)`);
  }
  if (view.status === "downloading") {
    parts.push(formatRate(view.rate_bytes_per_second));
    parts.push(view.eta_seconds == null ? "estimating…" : `${formatDuration(view.eta_seconds)} left`);
  }
  if (view.files_total) parts.push(`${view.files_done}/${view.files_total} files`);
  if (view.error) parts.push(view.error);
  return parts.join(" · ");
}

// ---- local cache --------------------------------------------------------------------------

/** The "on this machine" card. `has(id)` is null until the list has loaded; `links.changed()`
 * after each load. */
function localModels({ signal, isAdmin, go }, links) {
  const local = table("Models on this machine", [
    "Model",
    "#Size",
    "Kind",
    "Architecture",
    "Quantization",
    "#Context",
    "Chat template",
    "",
  ]);
  const status = h("div", { class: "status-slot" });
  let ids = null; // complete models, lower-cased; null until loaded

  async function load() {
    try {
      const found = await api("/api/models/local", { signal });
      ids = new Set(found.filter((m) => m.complete).map((m) => m.id.toLowerCase()));
      links.changed();
      local.caption.textContent = `Models on this machine (${found.length})`;
      if (!found.length) {
        clear(local.tbody, h("tr", {}, h("td", { colspan: 8, class: "empty" }, "No model in the local cache yet.")));
        return;
      }
      syncRows(local.tbody, found, (m) => m.id, createRow, updateRow);
    } catch (error) {
      if (error.name !== "AbortError") clear(status, messageBox(error.message));
    }
  }

  function createRow() {
    return h("tr", {}, ...Array.from({ length: 7 }, () => h("td")), h("td", { class: "actions" }));
  }

  function updateRow(row, model) {
    const c = model.characteristics || {};
    const cells = row.children;
    const name = h("th", { scope: "row" }, h("span", { class: "model-id" }, model.id));
    if (!model.complete) name.append(" ", badge(model.downloading ? "downloading" : "incomplete", "busy"));
    if (c.is_mlx === false) name.append(" ", badge("not MLX", "warn"));
    if (c.needs_remote_code) name.append(" ", badge("remote code", "warn"));
    cells[0].replaceWith(name);
    cells[1].textContent = formatBytes(model.size_bytes);
    cells[1].className = "num";
    cells[2].textContent = c.kind || "–";
    cells[3].textContent = [c.family, c.model_type].filter(Boolean).filter((v, i, a) => a.indexOf(v) === i).join(" / ") || "–";
    cells[4].textContent = c.quantization_bits ? `${c.quantization_bits}-bit` : c.dtype || "–";
    cells[5].textContent = c.context_length ? formatNumber(c.context_length) : "–";
    cells[5].className = "num";
    cells[6].textContent = c.has_chat_template ? "yes" : "no";
    const actions = cells[7];
    clear(actions);
    if (isAdmin && model.complete) {
      actions.append(
        h(
          "button",
          {
            type: "button",
            class: "small",
            "aria-label": `Create a profile for ${model.id}`,
            onclick: () => go(`#/profiles?from=${encodeURIComponent(model.id)}`),
          },
          "Create profile",
        ),
      );
    }
    if (isAdmin && !model.downloading) actions.append(deleteButton(model));
  }

  function deleteButton(model) {
    const del = h("button", { type: "button", class: "small danger", "aria-label": `Delete ${model.id}` }, "Delete");
    del.addEventListener("click", async () => {
      const ok = await confirmDialog(`Delete ${model.id} (${formatBytes(model.size_bytes)}) from this machine?`, "Delete");
      if (!ok) return;
      await busy(del, async () => {
        try {
          const result = await api(`/api/models/local/${modelPath(model.id)}`, { method: "DELETE", signal });
          notify(`Deleted ${model.id}; freed ${formatBytes(result.freed_bytes)}`, "success");
          await load();
        } catch (error) {
          if (error.name !== "AbortError") notify(error.message, "error");
        }
      });
    });
    return del;
  }

  const section = h(
    "section",
    { class: "card", "aria-labelledby": "local-title" },
    h("h2", { id: "local-title" }, "On this machine"),
    status,
    local.table,
  );
  return { section, load, has: (id) => (ids ? ids.has(id.toLowerCase()) : null) };
}
