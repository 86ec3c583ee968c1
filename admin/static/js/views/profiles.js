// Profiles: one model server configuration each. List with the memory each needs against the
// cap; create (blank or from a local model, with its suggested options filled in), edit,
// delete, pin.

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
  newId,
  notify,
  syncRows,
  table,
} from "../dom.js";

const MODEL_TYPES = ["lm", "multimodal", "embeddings", "whisper", "image-generation", "image-edit"];

export function render(root, ctx) {
  const controller = new AbortController();
  const { signal } = controller;
  const isAdmin = ctx.user.is_admin;
  let localModels = [];
  let memory = null;
  let needs = new Map();

  const status = h("div", { class: "status-slot" });
  const memoryBox = h("div", { class: "memory-summary", "aria-live": "off" });
  const list = table("Profiles", ["Name", "Model", "Type", "Memory need / cap", "State", "Pinned", ""]);
  const fromLocal = h("select", { name: "from_local" });
  const newButton = h("button", { type: "button", class: "primary" }, "New profile");
  newButton.addEventListener("click", () => openForm(null, {}));
  const fromButton = h("button", { type: "button" }, "Create from model");
  fromButton.addEventListener("click", () => {
    const model = localModels.find((m) => m.id === fromLocal.value);
    if (model) openForm(null, prefillFrom(model));
  });

  async function load() {
    try {
      const [profiles, servers, mem] = await Promise.all([
        api("/api/profiles", { signal }),
        api("/api/servers", { signal }),
        api("/api/system/memory", { signal }),
      ]);
      memory = mem;
      needs = new Map(servers.map((s) => [s.profile_id, s]));
      renderMemory();
      list.caption.textContent = `Profiles (${profiles.length})`;
      if (!profiles.length) {
        clear(
          list.tbody,
          h("tr", {}, h("td", { colspan: 7, class: "empty" }, "No profile yet. Create one from a model on this machine.")),
        );
        return profiles;
      }
      syncRows(list.tbody, profiles, (p) => p.id, createRow, updateRow);
      return profiles;
    } catch (error) {
      if (error.name !== "AbortError") clear(status, messageBox(error.message));
      return [];
    }
  }

  function renderMemory() {
    if (!memory) return;
    const used = memory.reserved_bytes ?? memory.servers_bytes;
    clear(
      memoryBox,
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

  function createRow() {
    return h("tr", {}, h("th", { scope: "row" }), ...Array.from({ length: 6 }, () => h("td")));
  }

  function updateRow(row, profile) {
    const server = needs.get(profile.id);
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
    const need = profile.memory_gb ? profile.memory_gb * 1024 ** 3 : server?.need_bytes || 0;
    const cap = memory?.cap_bytes || 0;
    clear(
      mem,
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
    );
    clear(state, badge(profile.state || "stopped"));
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
    clear(pinned, pin);
    actions.className = "actions";
    clear(actions);
    if (isAdmin) {
      const edit = h("button", { type: "button", class: "small", "aria-label": `Edit ${profile.name}` }, "Edit");
      edit.addEventListener("click", () => openForm(profile, profile));
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
      actions.append(edit, del);
    }
  }

  async function loadLocal() {
    try {
      localModels = (await api("/api/models/local", { signal })).filter((m) => m.complete);
    } catch (error) {
      if (error.name === "AbortError") return;
      localModels = [];
    }
    clear(
      fromLocal,
      localModels.length
        ? localModels.map((m) => h("option", { value: m.id }, m.id))
        : h("option", { value: "" }, "no model downloaded yet"),
    );
    fromLocal.disabled = fromButton.disabled = !localModels.length;
  }

  // ---- the form (a modal dialog) --------------------------------------------------------
  function openForm(existing, values) {
    const dialog = profileDialog(existing, values, localModels, async (body) => {
      const saved = existing
        ? await api(`/api/profiles/${existing.id}`, { method: "PATCH", body, signal })
        : await api("/api/profiles", { method: "POST", body, signal });
      notify(`${existing ? "Saved" : "Created"} profile ${saved.name}`, "success");
      await load();
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
    memoryBox,
    status,
    isAdmin
      ? h(
          "div",
          { class: "toolbar" },
          newButton,
          h("span", { class: "toolbar-sep", "aria-hidden": "true" }),
          field("From a local model", fromLocal),
          fromButton,
        )
      : null,
    h("section", { class: "card" }, list.table),
  );

  load();
  loadLocal().then(() => {
    const from = ctx.params.get("from");
    if (!from || !isAdmin || signal.aborted) return;
    const model = localModels.find((m) => m.id === from);
    if (model) {
      fromLocal.value = model.id;
      openForm(null, prefillFrom(model));
    } else {
      notify(`${from} is not a complete model on this machine`, "error");
    }
  });
  const timer = setInterval(() => {
    if (!document.hidden && !document.querySelector("dialog[open]")) load();
  }, 5000);
  return () => {
    clearInterval(timer);
    controller.abort();
    for (const dialog of document.querySelectorAll("dialog.profile-form")) dialog.remove();
  };
}

function shortArg(arg) {
  const parts = arg.split("/");
  return parts[parts.length - 1];
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

function lines(text) {
  return text
    .split("\n")
    .map((line) => line.trim())
    .filter(Boolean);
}

function profileDialog(existing, values, localModels, save) {
  const v = { aliases: [], extra_args: [], env: {}, health_path: "/health", ...values };
  const titleId = newId("profile-title");
  const listId = newId("local-models");
  const input = (name, attrs = {}) => h("input", { name, ...attrs });
  const num = (name, attrs = {}) => input(name, { type: "number", inputmode: "decimal", ...attrs });
  const text = (name) => input(name, { type: "text", autocomplete: "off", value: v[name] ?? "" });
  const check = (name) => input(name, { type: "checkbox", checked: Boolean(v[name]) });

  const f = {
    name: input("name", { type: "text", required: true, autocomplete: "off", value: v.name ?? "", pattern: "[A-Za-z0-9][\\w.:/@+\\-]*" }),
    model_path: input("model_path", { type: "text", list: listId, autocomplete: "off", value: v.model_path ?? "" }),
    model_type: h("select", { name: "model_type" }, MODEL_TYPES.map((t) => h("option", { value: t }, t))),
    aliases: input("aliases", { type: "text", autocomplete: "off", value: (v.aliases || []).join(", ") }),
    context_length: num("context_length", { min: 1, step: 1, value: v.context_length ?? "" }),
    idle_ttl: num("idle_ttl", { min: 0, step: "any", value: v.idle_ttl ?? "" }),
    memory_gb: num("memory_gb", { min: 0.01, step: "any", value: v.memory_gb ?? "" }),
    port: num("port", { min: 1024, max: 65535, step: 1, value: v.port ?? "" }),
    pinned: check("pinned"),
    auto_start: check("auto_start"),
    tool_call_parser: text("tool_call_parser"),
    reasoning_parser: text("reasoning_parser"),
    enable_auto_tool_choice: check("enable_auto_tool_choice"),
    trust_remote_code: check("trust_remote_code"),
    chat_template_file: text("chat_template_file"),
    command: h("textarea", { name: "command", rows: 4, spellcheck: "false" }),
    health_path: text("health_path"),
    extra_args: h("textarea", { name: "extra_args", rows: 2, spellcheck: "false" }),
    env: h("textarea", { name: "env", rows: 2, spellcheck: "false" }),
  };
  f.model_type.value = v.model_type || "lm";
  f.command.value = (v.command || []).join("\n");
  f.extra_args.value = (v.extra_args || []).join("\n");
  f.env.value = Object.entries(v.env || {})
    .map(([k, val]) => `${k}=${val}`)
    .join("\n");

  const status = h("div", { class: "status-slot" });
  const submit = h("button", { type: "submit", class: "primary" }, existing ? "Save" : "Create profile");
  const cancel = h("button", { type: "button", class: "secondary" }, "Cancel");
  const form = h(
    "form",
    { novalidate: true },
    h("h2", { id: titleId }, existing ? `Edit ${existing.name}` : "New profile"),
    h(
      "fieldset",
      {},
      h("legend", {}, "Model"),
      field("Name", f.name, "What clients send as model; letters, digits, . _ : / @ + -"),
      field("Model path", f.model_path, "A Hugging Face repo id in the local cache, or a folder"),
      h("datalist", { id: listId }, localModels.map((m) => h("option", { value: m.id }))),
      field("Model type", f.model_type),
      field("Aliases", f.aliases, "Other names, separated by commas"),
      field("Context length", f.context_length),
    ),
    h(
      "fieldset",
      {},
      h("legend", {}, "Parsers"),
      field("Tool call parser", f.tool_call_parser),
      field("Reasoning parser", f.reasoning_parser),
      field("Enable automatic tool choice", f.enable_auto_tool_choice),
      field("Trust remote code", f.trust_remote_code, "Runs Python code shipped with the model"),
      field("Chat template file", f.chat_template_file),
    ),
    h(
      "fieldset",
      {},
      h("legend", {}, "Lifecycle"),
      field("Pinned", f.pinned, "Never stopped to make room for another model"),
      field("Start with the gateway", f.auto_start),
      field("Idle TTL (seconds)", f.idle_ttl, "Empty: the gateway's default; 0: never"),
      field("Memory (GiB)", f.memory_gb, "Empty: estimated from the weights"),
      field("Port", f.port, "Empty: allocated"),
    ),
    h(
      "details",
      { open: Boolean(v.command?.length || v.extra_args?.length || Object.keys(v.env || {}).length) },
      h("summary", {}, "Advanced: command, arguments, environment"),
      field(
        "Command (one argument per line)",
        f.command,
        "Replaces mlx-openai-server with any OpenAI-compatible server; {port}, {host}, {model_path} and {name} are filled in",
      ),
      field("Health path", f.health_path),
      field("Extra arguments (one per line)", f.extra_args),
      field("Environment (NAME=value per line)", f.env),
    ),
    status,
    h("div", { class: "actions" }, cancel, submit),
  );
  const dialog = h("dialog", { class: "profile-form", "aria-labelledby": titleId }, form);
  cancel.addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => dialog.remove());

  function collect() {
    const numberOrNull = (el, integer = false) => {
      if (el.value.trim() === "") return null;
      const n = Number(el.value);
      return integer ? Math.trunc(n) : n;
    };
    const env = {};
    for (const line of lines(f.env.value)) {
      const at = line.indexOf("=");
      if (at <= 0) throw Object.assign(new Error(`environment line "${line}" needs NAME=value`), { param: "env" });
      env[line.slice(0, at)] = line.slice(at + 1);
    }
    const command = lines(f.command.value);
    return {
      name: f.name.value.trim(),
      model_path: f.model_path.value.trim() || null,
      model_type: f.model_type.value,
      aliases: f.aliases.value.split(",").map((a) => a.trim()).filter(Boolean),
      context_length: numberOrNull(f.context_length, true),
      idle_ttl: numberOrNull(f.idle_ttl),
      memory_gb: numberOrNull(f.memory_gb),
      port: numberOrNull(f.port, true),
      pinned: f.pinned.checked,
      auto_start: f.auto_start.checked,
      tool_call_parser: f.tool_call_parser.value.trim() || null,
      reasoning_parser: f.reasoning_parser.value.trim() || null,
      enable_auto_tool_choice: f.enable_auto_tool_choice.checked,
      trust_remote_code: f.trust_remote_code.checked,
      chat_template_file: f.chat_template_file.value.trim() || null,
      command: command.length ? command : null,
      health_path: f.health_path.value.trim() || "/health",
      extra_args: lines(f.extra_args.value),
      env,
    };
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clear(status);
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
    if (!f.name.value.trim()) {
      showError({ message: "A profile needs a name.", param: "name" });
      return;
    }
    await busy(submit, async () => {
      try {
        await save(collect());
        dialog.close();
      } catch (error) {
        if (error.name !== "AbortError") showError(error);
      }
    });
  });

  function showError(error) {
    clear(status, messageBox(error.message));
    const target = error.param && f[error.param];
    if (target) {
      target.setAttribute("aria-invalid", "true");
      target.closest("details")?.setAttribute("open", "");
      target.focus();
    }
  }
  return dialog;
}
