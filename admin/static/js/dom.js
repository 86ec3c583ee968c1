// Small DOM and formatting helpers. Text always goes in as text nodes: nothing here parses HTML.

/**
 * h("button", {class: "x", onclick: fn, disabled: true}, "label", child, ...)
 * Attributes: `class`, `text`, `dataset` (object), `on<event>` (function), booleans (present
 * when true), everything else via setAttribute. Children: nodes, strings, numbers, arrays;
 * null/undefined/false are skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "text") el.textContent = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "value" && "value" in el) el.value = value;
    else if (name === "checked" && "checked" in el) el.checked = Boolean(value);
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.append(child);
    else el.append(document.createTextNode(String(child)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

let uid = 0;
/** A unique id for label/aria wiring. */
export function newId(prefix = "id") {
  uid += 1;
  return `${prefix}-${uid}`;
}

/** A labelled form control: returns {field, input}. */
export function field(label, control, hint) {
  const id = control.id || newId("f");
  control.id = id;
  const hintEl = hint ? h("small", { class: "hint", id: `${id}-hint` }, hint) : null;
  if (hintEl) control.setAttribute("aria-describedby", hintEl.id);
  const isCheck = control.type === "checkbox";
  const labelEl = h("label", { for: id }, label);
  const wrapper = isCheck
    ? h("div", { class: "field check" }, control, labelEl, hintEl)
    : h("div", { class: "field" }, labelEl, control, hintEl);
  return wrapper;
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];
export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined || Number.isNaN(bytes)) return "–";
  let value = Number(bytes);
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const digits = unit === 0 || value >= 100 ? 0 : value >= 10 ? 1 : 2;
  return `${value.toFixed(digits)} ${UNITS[unit]}`;
}

export function formatRate(bytesPerSecond) {
  if (!bytesPerSecond) return "–";
  return `${formatBytes(bytesPerSecond)}/s`;
}

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  const hours = Math.floor(m / 60);
  return `${hours} h ${m % 60} min`;
}

export function formatNumber(n) {
  if (n === null || n === undefined) return "–";
  return new Intl.NumberFormat().format(n);
}

const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
/** "3 minutes ago" for an ISO date; "–" for none. */
export function formatAgo(iso, now = Date.now()) {
  if (!iso) return "–";
  const seconds = (new Date(iso).getTime() - now) / 1000;
  const abs = Math.abs(seconds);
  if (abs < 5) return "just now";
  if (abs < 60) return relative.format(Math.round(seconds), "second");
  if (abs < 3600) return relative.format(Math.round(seconds / 60), "minute");
  if (abs < 86400) return relative.format(Math.round(seconds / 3600), "hour");
  return relative.format(Math.round(seconds / 86400), "day");
}

/** A <time> element showing `formatAgo`, with the exact date as its title. */
export function timeAgo(iso) {
  if (!iso) return h("span", {}, "–");
  return h("time", { datetime: iso, title: new Date(iso).toLocaleString() }, formatAgo(iso));
}

export function formatDate(iso) {
  if (!iso) return "–";
  return new Date(iso).toLocaleString();
}

/** Announce a short message to screen readers and show it as a toast. */
export function notify(message, kind = "info") {
  const region = document.getElementById("toasts");
  if (!region) return;
  const toast = h("div", { class: `toast ${kind}` }, message);
  region.append(toast);
  setTimeout(() => toast.remove(), kind === "error" ? 8000 : 4000);
}

/** An inline error/status box: role=alert for errors so they are read at once. */
export function messageBox(text, kind = "error") {
  return h("p", { class: `message ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

/**
 * Ask for confirmation with a modal <dialog> (keyboard and focus handled by the browser).
 * Resolves true when confirmed.
 */
export function confirmDialog(message, confirmLabel = "Confirm", danger = true) {
  return new Promise((resolve) => {
    const titleId = newId("confirm");
    const dialog = h(
      "dialog",
      { class: "confirm", "aria-labelledby": titleId },
      h(
        "form",
        { method: "dialog" },
        h("p", { id: titleId }, message),
        h(
          "div",
          { class: "actions" },
          h("button", { value: "cancel", class: "secondary", autofocus: true }, "Cancel"),
          h("button", { value: "confirm", class: danger ? "danger" : "primary" }, confirmLabel),
        ),
      ),
    );
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "confirm");
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

/**
 * Keep a table body's rows in step with `items`, keyed by `key(item)`: existing rows are
 * updated in place (so focus and selection survive a refresh), new ones created, gone ones
 * removed. `create(item)` returns a <tr>; `update(tr, item)` refreshes it.
 */
export function syncRows(tbody, items, key, create, update) {
  const existing = new Map();
  for (const row of tbody.querySelectorAll(":scope > tr[data-key]")) {
    existing.set(row.dataset.key, row);
  }
  let previous = null;
  for (const item of items) {
    const k = String(key(item));
    let row = existing.get(k);
    if (row) {
      existing.delete(k);
    } else {
      row = create(item);
      row.dataset.key = k;
    }
    // A refresh may rebuild a row's controls: keep keyboard focus on the same control.
    const focused = row.contains(document.activeElement) ? document.activeElement : null;
    const label = focused?.getAttribute("aria-label");
    update(row, item);
    if (focused && !row.contains(focused) && label) {
      [...row.querySelectorAll("[aria-label]")].find((el) => el.getAttribute("aria-label") === label)?.focus();
    }
    const expected = previous ? previous.nextElementSibling : tbody.firstElementChild;
    if (expected !== row) {
      if (previous) previous.after(row);
      else tbody.prepend(row);
    }
    previous = row;
  }
  for (const row of existing.values()) row.remove();
  for (const row of tbody.querySelectorAll(":scope > tr:not([data-key])")) row.remove();
}

/** Disable a button while `work()` runs; returns work's result. */
export async function busy(button, work, busyLabel) {
  const label = button.textContent;
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  if (busyLabel) button.textContent = busyLabel;
  try {
    return await work();
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
    if (busyLabel) button.textContent = label;
  }
}

/** A table with a caption and header cells; returns {table, tbody, caption}. */
export function table(caption, headers, extraClass = "") {
  const tbody = h("tbody");
  const tableEl = h(
    "table",
    { class: `data ${extraClass}` },
    h("caption", {}, caption),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        headers.map((name) =>
          // "#Requests" marks a numeric column: its header aligns right, like its cells.
          name.startsWith("#")
            ? h("th", { scope: "col", class: "num" }, name.slice(1))
            : h("th", { scope: "col" }, name),
        ),
      ),
    ),
    tbody,
  );
  return { table: h("div", { class: "table-wrap" }, tableEl), tbody, caption: tableEl.caption };
}

export function badge(text, kind = text) {
  return h("span", { class: `badge ${kind}` }, text);
}
