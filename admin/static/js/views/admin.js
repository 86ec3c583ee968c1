// Admin: users (approve, disable, promote, limits), API keys (create - shown once - limits and
// revoke), and usage by user and by model with the limits' current windows. Non-admins see
// their own keys and usage.
// Parts: userList, keyList (with keyForm and revealKey), limitInputs/limitsDialog, usageReport.

import { api, query } from "../api.js";
import {
  badge,
  busy,
  clear,
  confirmDialog,
  field,
  formatDate,
  formatNumber,
  h,
  messageBox,
  notify,
  syncRows,
  table,
  timeAgo,
} from "../dom.js";

const PERIODS = [
  ["1", "Last 24 hours"],
  ["7", "Last 7 days"],
  ["30", "Last 30 days"],
  ["", "All time"],
];

export function render(root, ctx) {
  const controller = new AbortController();
  const env = { signal: controller.signal, me: ctx.user, isAdmin: ctx.user.is_admin };
  // Keys show their owner's email, which the user list knows; deleting a user drops its keys.
  const users = env.isAdmin ? userList(env, { deleted: () => keys.load() }) : null;
  const keys = keyList(env, { emailOf: (id) => users?.emailOf(id) ?? null });
  const usage = usageReport(env);
  clear(root, h("h1", {}, env.isAdmin ? "Admin" : "Keys & usage"), users?.section, keys.section, usage.section);
  (users ? users.load() : Promise.resolve()).then(keys.load);
  usage.load();
  return () => controller.abort();
}

// ---- users --------------------------------------------------------------------------------

/** The user table (admins only): approve, enable/disable, promote/demote, delete. */
function userList({ signal, me }, { deleted }) {
  const users = table("Users", ["Email", "Status", "Role", "Limits", "Created", "Last sign-in", ""]);
  const status = h("div", { class: "status-slot" });
  let emails = new Map([[me.id, me.email]]);

  async function load() {
    try {
      const found = await api("/api/users", { signal });
      emails = new Map(found.map((u) => [u.id, u.email]));
      const pending = found.filter((u) => u.status === "pending").length;
      users.caption.textContent = `Users (${found.length}${pending ? `, ${pending} waiting for approval` : ""})`;
      syncRows(users.tbody, found, (u) => u.id, createRow, updateRow);
    } catch (error) {
      if (error.name !== "AbortError") clear(status, messageBox(error.message));
    }
  }

  function createRow() {
    return h("tr", {}, h("th", { scope: "row" }), ...Array.from({ length: 6 }, () => h("td")));
  }

  function updateRow(row, user) {
    const [email, state, role, limits, created, last, actions] = row.children;
    row.dataset.email = user.email;
    clear(email, user.email, user.id === me.id ? h("span", { class: "muted" }, " (you)") : null);
    clear(state, badge(user.status));
    role.textContent = user.is_admin ? "admin" : "user";
    limits.textContent = limitsText(user);
    clear(created, timeAgo(user.created_at));
    clear(last, timeAgo(user.last_login_at));
    actions.className = "actions";
    clear(actions);
    if (user.id === me.id) return; // changing yourself here could lock you out
    const act = (label, patch, kind = "") => patchButton(user, label, patch, kind);
    if (user.status === "pending") actions.append(act("Approve", { status: "approved" }, "primary"));
    if (user.status === "disabled") actions.append(act("Enable", { status: "approved" }));
    if (user.status !== "disabled") actions.append(act("Disable", { status: "disabled" }, "danger"));
    actions.append(user.is_admin ? act("Demote", { is_admin: false }) : act("Promote", { is_admin: true }));
    actions.append(limitsButton(user.email, user, `/api/users/${user.id}`, signal, load));
    actions.append(deleteButton(user));
  }

  function patchButton(user, label, patch, kind) {
    const button = h("button", { type: "button", class: `small ${kind}`, "aria-label": `${label} ${user.email}` }, label);
    button.addEventListener("click", () =>
      busy(button, async () => {
        try {
          await api(`/api/users/${user.id}`, { method: "PATCH", body: patch, signal });
          notify(`${user.email}: ${label.toLowerCase()}d`, "success");
          await load();
        } catch (error) {
          if (error.name !== "AbortError") notify(error.message, "error");
        }
      }),
    );
    return button;
  }

  function deleteButton(user) {
    const del = h("button", { type: "button", class: "small danger", "aria-label": `Delete ${user.email}` }, "Delete");
    del.addEventListener("click", async () => {
      if (!(await confirmDialog(`Delete the account ${user.email} and its API keys?`, "Delete"))) return;
      await busy(del, async () => {
        try {
          await api(`/api/users/${user.id}`, { method: "DELETE", signal });
          notify(`Deleted ${user.email}`, "success");
          await load();
          await deleted();
        } catch (error) {
          if (error.name !== "AbortError") notify(error.message, "error");
        }
      });
    });
    return del;
  }

  const section = h(
    "section",
    { class: "card", "aria-labelledby": "users-title" },
    h("h2", { id: "users-title" }, "Users"),
    status,
    users.table,
  );
  return { section, load, emailOf: (id) => emails.get(id) ?? null };
}

// ---- API keys -----------------------------------------------------------------------------

/** The key table with its create form; admins see every user's keys and their owners. */
function keyList({ signal, isAdmin }, { emailOf }) {
  const keys = table("API keys", ["Name", "Key", ...(isAdmin ? ["Owner"] : []), "Models", "Scopes", "Limits", "Created", "Last used", "Expires", ""]);
  const status = h("div", { class: "status-slot" });
  const reveal = h("div", { class: "key-reveal-slot" });
  const form = keyForm({ signal, status, reveal, created: () => load() });

  async function load() {
    try {
      const found = await api("/api/keys", { signal });
      keys.caption.textContent = `API keys (${found.length})`;
      if (!found.length) {
        clear(keys.tbody, h("tr", {}, h("td", { colspan: isAdmin ? 10 : 9, class: "empty" }, "No API key yet.")));
        return;
      }
      syncRows(keys.tbody, found, (k) => k.id, createRow, updateRow);
    } catch (error) {
      if (error.name !== "AbortError") clear(status, messageBox(error.message));
    }
  }

  function createRow() {
    return h("tr", {}, h("th", { scope: "row" }), ...Array.from({ length: isAdmin ? 8 : 7 }, () => h("td")));
  }

  function updateRow(row, key) {
    const cells = [...row.children];
    const actions = cells.pop();
    const values = [
      key.name,
      h("span", { class: "mono" }, `${key.prefix}…`),
      ...(isAdmin ? [emailOf(key.user_id) || `user ${key.user_id}`] : []),
      key.models ? key.models.join(", ") : "all",
      key.scopes.map((scope) => SCOPE_NAMES[scope] || scope).join(", "),
      limitsText(key),
      timeAgo(key.created_at),
      timeAgo(key.last_used_at),
      key.expires_at ? formatDate(key.expires_at) : "never",
    ];
    cells.forEach((cell, i) => clear(cell, values[i]));
    actions.className = "actions";
    clear(actions, limitsButton(key.name, key, `/api/keys/${key.id}`, signal, load), revokeButton(key));
  }

  function revokeButton(key) {
    const revoke = h("button", { type: "button", class: "small danger", "aria-label": `Revoke ${key.name}` }, "Revoke");
    revoke.addEventListener("click", async () => {
      if (!(await confirmDialog(`Revoke the key "${key.name}"? Programs using it will get 401.`, "Revoke"))) return;
      await busy(revoke, async () => {
        try {
          await api(`/api/keys/${key.id}`, { method: "DELETE", signal });
          notify(`Revoked ${key.name}`, "success");
          await load();
        } catch (error) {
          if (error.name !== "AbortError") notify(error.message, "error");
        }
      });
    });
    return revoke;
  }

  const section = h(
    "section",
    { class: "card", "aria-labelledby": "keys-title" },
    h("h2", { id: "keys-title" }, "API keys"),
    h("p", { class: "muted" }, "A key acts as its owner for SDKs and scripts: ", h("code", {}, "Authorization: Bearer sk-…"), " on /v1."),
    form,
    status,
    reveal,
    keys.table,
  );
  return { section, load };
}

// What each scope lets a key call (gateway.types.KEY_SCOPES).
const SCOPE_NAMES = { inference: "/v1", admin: "/api" };

/** The "create a key" form; the new key is shown once in `reveal`, then `created()`. */
function keyForm({ signal, status, reveal, created }) {
  const name = h("input", { type: "text", name: "key_name", required: true, maxlength: 200, autocomplete: "off" });
  const models = h("input", { type: "text", name: "key_models", autocomplete: "off", placeholder: "all" });
  const days = h("input", { type: "number", name: "key_days", min: 1, max: 3650, step: 1, placeholder: "never" });
  const manage = h("input", { type: "checkbox", name: "key_admin_scope" });
  const limits = limitInputs("key");
  const submit = h("button", { type: "submit", class: "primary" }, "Create key");
  const form = h(
    "form",
    { class: "inline-form", "aria-label": "Create an API key" },
    field("Name", name),
    field("Models", models, "Comma-separated; empty for all"),
    field("Expires in (days)", days),
    field("Also /api", manage, "Off: the key calls /v1 only. On: also the management API, as its owner"),
    ...limits.fields,
    h("div", { class: "field submit" }, submit),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!name.value.trim()) {
      clear(status, messageBox("Give the key a name (where it is used)."));
      name.focus();
      return;
    }
    busy(submit, async () => {
      clear(status);
      const body = { name: name.value.trim(), scopes: manage.checked ? ["inference", "admin"] : ["inference"] };
      const only = models.value.split(",").map((m) => m.trim()).filter(Boolean);
      if (only.length) body.models = only;
      if (days.value) body.expires_in_days = Math.trunc(Number(days.value));
      for (const [limit, value] of Object.entries(limits.values())) if (value !== null) body[limit] = value;
      try {
        const key = await api("/api/keys", { method: "POST", body, signal });
        name.value = models.value = days.value = "";
        manage.checked = false;
        limits.reset();
        revealKey(reveal, key, () => name.focus());
        await created();
      } catch (error) {
        if (error.name !== "AbortError") clear(status, messageBox(error.message));
      }
    }, "Creating…");
  });
  return form;
}

/** The only time a key is on screen (in `slot`): in the DOM only, never stored anywhere. */
function revealKey(slot, created, done) {
  const value = h("input", { type: "text", readonly: true, value: created.key, class: "mono", "aria-label": `New API key ${created.name}`, spellcheck: "false" });
  const copy = h("button", { type: "button", class: "small" }, "Copy");
  const doneButton = h("button", { type: "button", class: "small secondary" }, "Done");
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(value.value);
      notify("Key copied", "success");
    } catch {
      value.select();
      notify("Press Ctrl+C (or ⌘C) to copy the selected key");
    }
  });
  const box = h(
    "div",
    { class: "key-reveal", role: "region", "aria-label": "New API key" },
    h("p", {}, h("strong", {}, `Key "${created.name}" created.`), " Copy it now: it will not be shown again."),
    h("div", { class: "key-row" }, value, copy, doneButton),
  );
  doneButton.addEventListener("click", () => {
    value.value = "";
    box.remove();
    done();
  });
  clear(slot, box);
  value.focus();
  value.select();
}

// ---- limits -------------------------------------------------------------------------------

const LIMIT_NUMBERS = [
  ["rpm", "Requests/min", 1_000_000],
  ["tpm", "Tokens/min", 1e12],
  ["token_budget", "Token budget", 1e15],
];

/** A key's or user's limits in brief: "5 rpm · 10,000 tpm · 1,000,000 tokens/month" or "none". */
function limitsText(row) {
  const parts = [];
  if (row.rpm != null) parts.push(`${formatNumber(row.rpm)} rpm`);
  if (row.tpm != null) parts.push(`${formatNumber(row.tpm)} tpm`);
  if (row.token_budget != null) parts.push(`${formatNumber(row.token_budget)} tokens/${row.budget_period}`);
  return parts.length ? parts.join(" · ") : "none";
}

/** The limit inputs (empty = no limit): `fields` to show, `values()` for the API (null = none). */
function limitInputs(prefix, current = {}) {
  const inputs = {};
  const fields = LIMIT_NUMBERS.map(([name, label, max]) => {
    inputs[name] = h("input", { type: "number", name: `${prefix}_${name}`, min: 1, max, step: 1, placeholder: "none", value: current[name] ?? "" });
    return field(label, inputs[name]);
  });
  const period = h("select", { name: `${prefix}_budget_period` }, h("option", { value: "month" }, "per month (UTC)"), h("option", { value: "day" }, "per day (UTC)"));
  period.value = current.budget_period || "month";
  fields.push(field("Budget window", period));
  function values() {
    const out = {};
    for (const [name] of LIMIT_NUMBERS) out[name] = inputs[name].value ? Math.trunc(Number(inputs[name].value)) : null;
    out.budget_period = out.token_budget === null ? null : period.value;
    return out;
  }
  function reset() {
    for (const [name] of LIMIT_NUMBERS) inputs[name].value = "";
    period.value = "month";
  }
  return { fields, values, reset };
}

/** A "Limits" button opening the limits dialog for `row` (a key or a user), saved by PATCH. */
function limitsButton(label, row, path, signal, saved) {
  const button = h("button", { type: "button", class: "small", "aria-label": `Limits of ${label}` }, "Limits");
  button.addEventListener("click", async () => {
    const values = await limitsDialog(`Limits of ${label}`, row);
    if (!values) return;
    await busy(button, async () => {
      try {
        await api(path, { method: "PATCH", body: values, signal });
        notify(`${label}: limits saved`, "success");
        await saved();
      } catch (error) {
        if (error.name !== "AbortError") notify(error.message, "error");
      }
    });
  });
  return button;
}

/** A modal form for rpm, tpm and the token budget; resolves the values, or null if cancelled. */
function limitsDialog(title, current) {
  return new Promise((resolve) => {
    const inputs = limitInputs("limits", current);
    const titleId = `limits-title-${Math.random().toString(36).slice(2)}`;
    const form = h(
      "form",
      { method: "dialog" },
      h("h2", { id: titleId }, title),
      h("p", { class: "muted" }, "Empty means no limit. A key is also held to its owner's limits; over a limit, /v1 answers 429."),
      h("div", { class: "inline-form" }, inputs.fields),
      h(
        "div",
        { class: "actions" },
        h("button", { value: "cancel", class: "secondary", formnovalidate: true }, "Cancel"),
        h("button", { value: "save", class: "primary" }, "Save limits"),
      ),
    );
    const dialog = h("dialog", { class: "confirm", "aria-labelledby": titleId }, form);
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "save" ? inputs.values() : null);
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

// ---- usage --------------------------------------------------------------------------------

/** Requests and tokens by user (admins) and by model over a chosen period. */
function usageReport({ signal, isAdmin }) {
  const period = h("select", { name: "period" }, PERIODS.map(([v, label]) => h("option", { value: v }, label)));
  period.value = "7";
  const status = h("div", { class: "status-slot" });
  const headers = ["#Requests", "#Prompt tokens", "#Completion tokens", "#Total tokens", "#Avg latency", "#Errors"];
  const byUser = table("By user", ["User", ...headers]);
  const byModel = table("By model", ["Model", ...headers]);
  const limitsNow = table("Limits now", ["Who", "Requests this minute", "Tokens this minute", "Token budget used"]);
  period.addEventListener("change", load);

  let current = null;
  async function load() {
    current?.abort(); // a slower earlier answer must not overwrite this one
    const request = new AbortController();
    current = request;
    const options = { signal: AbortSignal.any([signal, request.signal]) };
    const days = Number(period.value);
    const since = days ? new Date(Date.now() - days * 86400_000).toISOString() : null;
    try {
      // One after the other: each report first flushes the gateway's usage buffer, and a
      // report running beside that flush would not see the rows being written.
      const users = await api(`/api/usage${query({ group_by: "user", since })}`, options);
      const models = await api(`/api/usage${query({ group_by: "model", since })}`, options);
      fillUsage(byUser, users.groups, (g) => g.user ?? "(deleted user)");
      fillUsage(byModel, models.groups, (g) => g.model ?? "(no model)");
      fillLimits(limitsNow, models.limits || []);
      clear(status);
    } catch (error) {
      if (error.name !== "AbortError") clear(status, messageBox(error.message));
    }
  }

  const section = h(
    "section",
    { class: "card", "aria-labelledby": "usage-title" },
    h("div", { class: "section-head" }, h("h2", { id: "usage-title" }, "Usage"), field("Period", period)),
    status,
    h("div", { class: "usage-grid" }, isAdmin ? byUser.table : null, byModel.table),
    limitsNow.table,
  );
  return { section, load };
}

function fillUsage(target, groups, label) {
  clear(target.tbody);
  if (!groups.length) {
    target.tbody.append(h("tr", {}, h("td", { colspan: 7, class: "empty" }, "No requests in this period.")));
    return;
  }
  for (const g of groups) {
    target.tbody.append(
      h(
        "tr",
        {},
        h("th", { scope: "row" }, String(label(g))),
        ...[g.requests, g.prompt_tokens, g.completion_tokens, g.total_tokens].map((n) => h("td", { class: "num" }, formatNumber(n))),
        h("td", { class: "num" }, `${Math.round(g.avg_latency_ms)} ms`),
        h("td", { class: "num" }, formatNumber(g.errors)),
      ),
    );
  }
}

/** Each limited key and user with what its current windows hold ("3 / 5"), or "-" if unset. */
function fillLimits(target, entries) {
  clear(target.tbody);
  if (!entries.length) {
    target.tbody.append(h("tr", {}, h("td", { colspan: 4, class: "empty" }, "No key or user has limits.")));
    return;
  }
  const used = (w) => (w ? `${formatNumber(w.used)} / ${formatNumber(w.limit)}` : "-");
  for (const e of entries) {
    const who = e.subject === "key" ? `key ${e.name} (${e.email})` : e.email;
    const budget = e.token_budget ? `${used(e.token_budget)} this ${e.token_budget.period}` : "-";
    target.tbody.append(
      h("tr", {}, h("th", { scope: "row" }, who), h("td", { class: "num" }, used(e.rpm)), h("td", { class: "num" }, used(e.tpm)), h("td", { class: "num" }, budget)),
    );
  }
}
