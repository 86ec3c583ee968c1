// Profiles: one model server configuration each. List with the memory each needs against the
// cap; create (blank or from a local model, with its suggested options filled in), edit,
// delete, pin. Parts: profileList (the table and the memory summary), localPicker ("from a
// local model") and the form dialog in profile-form.js.

import { api } from "../api.js";
import {
  badge,
  busy,
  clear,
  confirmDialog,
  field,
  formatBytes,
  h,
  messageBox,
  notify,
  syncRows,
  table,
} from "../dom.js";
import { vocabulary } from "../vocabulary.js";
import { profileDialog } from "./profile-form.js";

const POLL_MS = 5000;

export function render(root, ctx) {
  const controller = new AbortController();
  const { signal } = controller;
  const isAdmin = ctx.user.is_admin;
  const profiles = profileList({ signal, isAdmin }, { edit: (profile) => openForm(profile, profile) });
  const picker = localPicker(signal, { create: (model) => openForm(null, prefillFrom(model)) });
  const newButton = h("button", { type: "button", class: "primary" }, "New profile");
  newButton.addEventListener("click", () => openForm(null, {}));

  async function openForm(existing, values) {
    let modelTypes;
    try {
      ({ modelTypes } = await vocabulary());
    } catch (error) {
      if (error.name !== "AbortError") notify(`Cannot open the form: ${error.message}`, "error");
      return;
    }
    if (signal.aborted) return;
    const dialog = profileDialog(existing, values, { localModels: picker.models(), modelTypes }, async (body) => {
      const saved = existing
        ? await api(`/api/profiles/${existing.id}`, { method: "PATCH", body, signal })
        : await api("/api/profiles", { method: "POST", body, signal });
      notify(`${existing ? "Saved" : "Created"} profile ${saved.name}`, "success");
      await profiles.load();
    });
    document.body.append(dialog);
    dialog.showModal();
  }

  clear(
    root,
    h("h1", {}, "Profiles"),
    h(
      "p",
      { class: "muted lead" },
      "A profile is how one model is served: clients send its name (or an alias) as ",
      h("code", {}, "model"),
      ".",
    ),
    profiles.memoryBox,
    profiles.status,
    isAdmin
      ? h(
          "div",
          { class: "toolbar" },
          newButton,
          h("span", { class: "toolbar-sep", "aria-hidden": "true" }),
          field("From a local model", picker.select),
          picker.button,
        )
      : null,
    h("section", { class: "card" }, profiles.table),
  );

  profiles.load();
  vocabulary().catch(() => {}); // asked now so the form opens at once; openForm reports a failure
  picker.load().then(() => {
    // #/profiles?from=<model id>: the Models page's "Create profile" button.
    const from = ctx.params.get("from");
    if (!from || !isAdmin || signal.aborted) return;
    if (!picker.choose(from)) notify(`${from} is not a complete model on this machine`, "error");
  });
  const timer = setInterval(() => {
    if (!document.hidden && !document.querySelector("dialog[open]")) profiles.load();
  }, POLL_MS);
  return () => {
    clearInterval(timer);
    controller.abort();
    for (const dialog of document.querySelectorAll("dialog.profile-form")) dialog.remove();
  };
}

/** The profiles table (with each one's memory need against the cap) and the memory summary. */
function profileList({ signal, isAdmin }, { edit }) {
  const status = h("div", { class: "status-slot" });
  const memoryBox = h("div", { class: "memory-summary", "aria-live": "off" });
  const list = table("Profiles", ["Name", "Model", "Type", "Memory need / cap", "State", "Pinned", ""]);
  let memory = null;
  let servers = new Map(); // profile id -> server (its need_bytes)

  async function load() {
    try {
      const [found, serverList, mem] = await Promise.all([
        api("/api/profiles", { signal }),
        api("/api/servers", { signal }),
        api("/api/system/memory", { signal }),
      ]);
      memory = mem;
      servers = new Map(serverList.map((s) => [s.profile_id, s]));
      showMemory(memoryBox, memory);
      list.caption.textContent = `Profiles (${found.length})`;
      if (!found.length) {
        clear(
          list.tbody,
          h("tr", {}, h("td", { colspan: 7, class: "empty" }, "No profile yet. Create one from a model on this machine.")),
        );
        return found;
      }
      syncRows(list.tbody, found, (p) => p.id, createRow, updateRow);
      return found;
    } catch (error) {
      if (error.name !== "AbortError") clear(status, messageBox(error.message));
      return [];
    }
  }

  function createRow() {
    return h("tr", {}, h("th", { scope: "row" }), ...Array.from({ length: 6 }, () => h("td")));
  }

  function updateRow(row, profile) {
    const server = servers.get(profile.id);
    const signature = JSON.stringify([profile, server?.need_bytes, memory?.cap_bytes]);
    if (row.dataset.signature === signature) return; // unchanged: leave focus and controls be
    row.dataset.signature = signature;
    const [name, model, type, mem, state, pinned, actions] = row.children;
    clear(
      name,
      h("span", { class: "model-id" }, profile.name),
      profile.aliases.length ? h("div", { class: "muted small-text" }, `aliases: ${profile.aliases.join(", ")}`) : null,
    );
    clear(
      model,
      profile.model_path ? h("span", { class: "mono" }, profile.model_path) : null,
      profile.command ? h("div", { class: "muted small-text mono" }, `command: ${profile.command.slice(0, 2).map(shortArg).join(" ")}…`) : null,
    );
    type.textContent = profile.model_type;
    type.className = "mono";
    clear(mem, ...needOf(profile, server, memory?.cap_bytes || 0));
    clear(state, badge(profile.state || "stopped"));
    clear(pinned, pinBox(profile));
    actions.className = "actions";
    clear(actions);
    if (isAdmin) {
      const editButton = h("button", { type: "button", class: "small", "aria-label": `Edit ${profile.name}` }, "Edit");
      editButton.addEventListener("click", () => edit(profile));
      actions.append(editButton, deleteButton(profile));
    }
  }

  function pinBox(profile) {
    const pin = h("input", {
      type: "checkbox",
      checked: profile.pinned,
      disabled: !isAdmin,
      "aria-label": `Pin ${profile.name} (never evicted)`,
    });
    pin.addEventListener("change", async () => {
      pin.disabled = true;
      try {
        await api(`/api/profiles/${profile.id}`, { method: "PATCH", body: { pinned: pin.checked }, signal });
        notify(`${profile.name} ${pin.checked ? "pinned" : "unpinned"}`, "success");
      } catch (error) {
        pin.checked = !pin.checked;
        if (error.name !== "AbortError") notify(error.message, "error");
      } finally {
        pin.disabled = false;
      }
      load();
    });
    return pin;
  }

  function deleteButton(profile) {
    const del = h("button", { type: "button", class: "small danger", "aria-label": `Delete ${profile.name}` }, "Delete");
    del.addEventListener("click", async () => {
      const running = profile.state && profile.state !== "stopped" && profile.state !== "failed";
      const ok = await confirmDialog(
        `Delete the profile ${profile.name}?${running ? " Its server will be stopped." : ""}`,
        "Delete",
      );
      if (!ok) return;
      await busy(del, async () => {
        try {
          await api(`/api/profiles/${profile.id}`, { method: "DELETE", signal });
          notify(`Deleted ${profile.name}`, "success");
          await load();
        } catch (error) {
          if (error.name !== "AbortError") notify(error.message, "error");
        }
      });
    });
    return del;
  }

  return { status, memoryBox, table: list.table, load };
}

/** "Memory cap for all servers: 12 GiB [meter] 3 GiB held by running servers · ..." */
function showMemory(box, memory) {
  if (!memory) return;
  const used = memory.reserved_bytes ?? memory.servers_bytes;
  clear(
    box,
    h("span", {}, "Memory cap for all servers: ", h("strong", {}, formatBytes(memory.cap_bytes))),
    h("meter", {
      min: 0,
      max: memory.cap_bytes,
      value: Math.min(used, memory.cap_bytes),
      high: memory.cap_bytes * 0.9,
      "aria-label": "Memory held by running servers against the cap",
    }),
    h(
      "span",
      { class: "muted" },
      `${formatBytes(used)} held by running servers · ${formatBytes(memory.available_bytes)} free of ${formatBytes(memory.total_bytes)} RAM`,
    ),
  );
}

/** A profile's memory cell: its need (set, or estimated by the server) against the cap. */
function needOf(profile, server, cap) {
  const need = profile.memory_gb ? profile.memory_gb * 1024 ** 3 : server?.need_bytes || 0;
  return [
    cap
      ? h("meter", {
          min: 0,
          max: cap,
          value: Math.min(need, cap),
          high: cap * 0.75,
          optimum: 0,
          "aria-label": `Memory need of ${profile.name} against the cap`,
        })
      : null,
    h(
      "span",
      { class: need > cap && cap ? "warn-text" : "muted" },
      ` ${need ? formatBytes(need) : "unknown"} of ${formatBytes(cap)}${profile.memory_gb ? " (set)" : need ? " (est.)" : ""}`,
    ),
  ];
}

function shortArg(arg) {
  const parts = arg.split("/");
  return parts[parts.length - 1];
}

/** The complete local models in a <select>, and "Create from model" (`create(model)`). */
function localPicker(signal, { create }) {
  let models = [];
  const select = h("select", { name: "from_local" });
  const button = h("button", { type: "button" }, "Create from model");
  button.addEventListener("click", () => {
    const model = models.find((m) => m.id === select.value);
    if (model) create(model);
  });

  async function load() {
    try {
      models = (await api("/api/models/local", { signal })).filter((m) => m.complete);
    } catch (error) {
      if (error.name === "AbortError") return;
      models = [];
    }
    clear(
      select,
      models.length
        ? models.map((m) => h("option", { value: m.id }, m.id))
        : h("option", { value: "" }, "no model downloaded yet"),
    );
    select.disabled = button.disabled = !models.length;
  }

  /** Select a model by id and open the form for it; false when it is not here. */
  function choose(id) {
    const model = models.find((m) => m.id === id);
    if (!model) return false;
    select.value = model.id;
    create(model);
    return true;
  }

  return { select, button, load, choose, models: () => models };
}

/** Profile values for a local model: its id as model_path, and the options it suggests. */
export function prefillFrom(model) {
  const suggested = model.suggested_profile || {};
  const c = model.characteristics || {};
  const base = model.id.split("/").pop().toLowerCase().replace(/[^a-z0-9._-]+/g, "-");
  return {
    name: base,
    model_path: model.id,
    model_type: suggested.model_type || "lm",
    tool_call_parser: suggested.tool_call_parser || null,
    reasoning_parser: suggested.reasoning_parser || null,
    enable_auto_tool_choice: Boolean(suggested.enable_auto_tool_choice),
    trust_remote_code: Boolean(suggested.trust_remote_code),
    context_length: c.context_length || null,
  };
}
