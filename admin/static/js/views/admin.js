// Admin: users (approve, disable, promote), API keys (create - shown once - and revoke), and
// usage by user and by model. Non-admins see their own keys and usage.

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
  const { signal } = controller;
  const me = ctx.user;
  const isAdmin = me.is_admin;
  let emails = new Map([[me.id, me.email]]);

  // ---- users ----------------------------------------------------------------------------
  const users = table("Users", ["Email", "Status", "Role", "Created", "Last sign-in", ""]);
  const usersStatus = h("div", { class: "status-slot" });

  async function loadUsers() {
    if (!isAdmin) return;
    try {
      const found = await api("/api/users", { signal });
      emails = new Map(found.map((u) => [u.id, u.email]));
      const pending = found.filter((u) => u.status === "pending").length;
      users.caption.textContent = `Users (${found.length}${pending ? `, ${pending} waiting for approval` : ""})`;
      syncRows(users.tbody, found, (u) => u.id, createUserRow, updateUserRow);
    } catch (error) {
      if (error.name !== "AbortError") clear(usersStatus, messageBox(error.message));
    }
  }

  function createUserRow() {
    return h("tr", {}, h("th", { scope: "row" }), ...Array.from({ length: 5 }, () => h("td")));
  }

  function updateUserRow(row, user) {
    const [email, status, role, created, last, actions] = row.children;
    row.dataset.email = user.email;
    clear(email, user.email, user.id === me.id ? h("span", { class: "muted" }, " (you)") : null);
    clear(status, badge(user.status));
    role.textContent = user.is_admin ? "admin" : "user";
    clear(created, timeAgo(user.created_at));
    clear(last, timeAgo(user.last_login_at));
    actions.className = "actions";
    clear(actions);
    if (user.id === me.id) return; // changing yourself here could lock you out
    const act = (label, patch, kind = "") => {
      const button = h("button", { type: "button", class: `small ${kind}`, "aria-label": `${label} ${user.email}` }, label);
      button.addEventListener("click", () =>
        busy(button, async () => {
          try {
            await api(`/api/users/${user.id}`, { method: "PATCH", body: patch, signal });
            notify(`${user.email}: ${label.toLowerCase()}d`, "success");
            await loadUsers();
          } catch (error) {
            if (error.name !== "AbortError") notify(error.message, "error");
          }
        }),
      );
      return button;
    };
    if (user.status === "pending") actions.append(act("Approve", { status: "approved" }, "primary"));
    if (user.status === "disabled") actions.append(act("Enable", { status: "approved" }));
    if (user.status !== "disabled") actions.append(act("Disable", { status: "disabled" }, "danger"));
    actions.append(user.is_admin ? act("Demote", { is_admin: false }) : act("Promote", { is_admin: true }));
    const del = h("button", { type: "button", class: "small danger", "aria-label": `Delete ${user.email}` }, "Delete");
    del.addEventListener("click", async () => {
      if (!(await confirmDialog(`Delete the account ${user.email} and its API keys?`, "Delete"))) return;
      await busy(del, async () => {
        try {
          await api(`/api/users/${user.id}`, { method: "DELETE", signal });
          notify(`Deleted ${user.email}`, "success");
          await loadUsers();
          await loadKeys();
        } catch (error) {
          if (error.name !== "AbortError") notify(error.message, "error");
        }
      });
    });
    actions.append(del);
  }

  // ---- API keys -------------------------------------------------------------------------
  const keys = table("API keys", ["Name", "Key", ...(isAdmin ? ["Owner"] : []), "Models", "Created", "Last used", "Expires", ""]);
  const keyName = h("input", { type: "text", name: "key_name", required: true, maxlength: 200, autocomplete: "off" });
  const keyModels = h("input", { type: "text", name: "key_models", autocomplete: "off", placeholder: "all" });
  const keyDays = h("input", { type: "number", name: "key_days", min: 1, max: 3650, step: 1, placeholder: "never" });
  const keySubmit = h("button", { type: "submit", class: "primary" }, "Create key");
  const keyStatus = h("div", { class: "status-slot" });
  const keyReveal = h("div", { class: "key-reveal-slot" });
  const keyForm = h(
    "form",
    { class: "inline-form", "aria-label": "Create an API key" },
    field("Name", keyName),
    field("Models", keyModels, "Comma-separated; empty for all"),
    field("Expires in (days)", keyDays),
    h("div", { class: "field submit" }, keySubmit),
  );
  keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!keyName.value.trim()) {
      clear(keyStatus, messageBox("Give the key a name (where it is used)."));
      keyName.focus();
      return;
    }
    busy(keySubmit, async () => {
      clear(keyStatus);
      const body = { name: keyName.value.trim() };
      const models = keyModels.value.split(",").map((m) => m.trim()).filter(Boolean);
      if (models.length) body.models = models;
      if (keyDays.value) body.expires_in_days = Math.trunc(Number(keyDays.value));
      try {
        const created = await api("/api/keys", { method: "POST", body, signal });
        keyName.value = keyModels.value = keyDays.value = "";
        reveal(created);
        await loadKeys();
      } catch (error) {
        if (error.name !== "AbortError") clear(keyStatus, messageBox(error.message));
      }
    }, "Creating…");
  });

  function reveal(created) {
    // The only time the key is on screen: in the DOM only, never stored anywhere.
    const value = h("input", { type: "text", readonly: true, value: created.key, class: "mono", "aria-label": `New API key ${created.name}`, spellcheck: "false" });
    const copy = h("button", { type: "button", class: "small" }, "Copy");
    const done = h("button", { type: "button", class: "small secondary" }, "Done");
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
      h("div", { class: "key-row" }, value, copy, done),
    );
    done.addEventListener("click", () => {
      value.value = "";
      box.remove();
      keyName.focus();
    });
    clear(keyReveal, box);
    value.focus();
    value.select();
  }

  async function loadKeys() {
    try {
      const found = await api("/api/keys", { signal });
      keys.caption.textContent = `API keys (${found.length})`;
      if (!found.length) {
        clear(keys.tbody, h("tr", {}, h("td", { colspan: isAdmin ? 8 : 7, class: "empty" }, "No API key yet.")));
        return;
      }
      syncRows(keys.tbody, found, (k) => k.id, createKeyRow, updateKeyRow);
    } catch (error) {
      if (error.name !== "AbortError") clear(keyStatus, messageBox(error.message));
    }
  }

  function createKeyRow() {
    return h("tr", {}, h("th", { scope: "row" }), ...Array.from({ length: isAdmin ? 7 : 6 }, () => h("td")));
  }

  function updateKeyRow(row, key) {
    const cells = [...row.children];
    const actions = cells.pop();
    const values = [
      key.name,
      h("span", { class: "mono" }, `${key.prefix}…`),
      ...(isAdmin ? [emails.get(key.user_id) || `user ${key.user_id}`] : []),
      key.models ? key.models.join(", ") : "all",
      timeAgo(key.created_at),
      timeAgo(key.last_used_at),
      key.expires_at ? formatDate(key.expires_at) : "never",
    ];
    cells.forEach((cell, i) => clear(cell, values[i]));
    actions.className = "actions";
    const revoke = h("button", { type: "button", class: "small danger", "aria-label": `Revoke ${key.name}` }, "Revoke");
    revoke.addEventListener("click", async () => {
      if (!(await confirmDialog(`Revoke the key "${key.name}"? Programs using it will get 401.`, "Revoke"))) return;
      await busy(revoke, async () => {
        try {
          await api(`/api/keys/${key.id}`, { method: "DELETE", signal });
          notify(`Revoked ${key.name}`, "success");
          await loadKeys();
        } catch (error) {
          if (error.name !== "AbortError") notify(error.message, "error");
        }
      });
    });
    clear(actions, revoke);
  }

  // ---- usage ----------------------------------------------------------------------------
  const period = h("select", { name: "period" }, PERIODS.map(([v, label]) => h("option", { value: v }, label)));
  period.value = "7";
  const usageStatus = h("div", { class: "status-slot" });
  const usageHeaders = ["#Requests", "#Prompt tokens", "#Completion tokens", "#Total tokens", "#Avg latency", "#Errors"];
  const byUser = table("By user", ["User", ...usageHeaders]);
  const byModel = table("By model", ["Model", ...usageHeaders]);
  period.addEventListener("change", loadUsage);

  let usageRequest = null;
  async function loadUsage() {
    usageRequest?.abort(); // a slower earlier answer must not overwrite this one
    const request = new AbortController();
    usageRequest = request;
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
      clear(usageStatus);
    } catch (error) {
      if (error.name !== "AbortError") clear(usageStatus, messageBox(error.message));
    }
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

  clear(
    root,
    h("h1", {}, isAdmin ? "Admin" : "Keys & usage"),
    isAdmin
      ? h("section", { class: "card", "aria-labelledby": "users-title" }, h("h2", { id: "users-title" }, "Users"), usersStatus, users.table)
      : null,
    h(
      "section",
      { class: "card", "aria-labelledby": "keys-title" },
      h("h2", { id: "keys-title" }, "API keys"),
      h("p", { class: "muted" }, "A key acts as its owner for SDKs and scripts: ", h("code", {}, "Authorization: Bearer sk-…"), " on /v1."),
      keyForm,
      keyStatus,
      keyReveal,
      keys.table,
    ),
    h(
      "section",
      { class: "card", "aria-labelledby": "usage-title" },
      h("div", { class: "section-head" }, h("h2", { id: "usage-title" }, "Usage"), field("Period", period)),
      usageStatus,
      h("div", { class: "usage-grid" }, isAdmin ? byUser.table : null, byModel.table),
    ),
  );
  loadUsers().then(loadKeys);
  loadUsage();
  return () => controller.abort();
}
