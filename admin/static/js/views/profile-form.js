// The profile form: a modal dialog to create or edit a profile. profileDialog() builds it from
// three parts: profileFields (one control per profile field), formLayout (the fieldsets) and
// collect (the controls back to a request body).

import { busy, clear, field, h, messageBox, newId } from "../dom.js";

/**
 * The dialog for `existing` (null: a new profile), filled with `values`; `modelTypes` are the
 * kinds the gateway serves (GET /api/system/info). `save(body)` sends it; an error it throws
 * is shown in the form, on its field when the error names one.
 */
export function profileDialog(existing, values, { localModels, modelTypes }, save) {
  const v = { aliases: [], extra_args: [], env: {}, health_path: "/health", ...values };
  const titleId = newId("profile-title");
  const listId = newId("local-models");
  const f = profileFields(v, listId, modelTypes);
  const status = h("div", { class: "status-slot" });
  const submit = h("button", { type: "submit", class: "primary" }, existing ? "Save" : "Create profile");
  const cancel = h("button", { type: "button", class: "secondary" }, "Cancel");
  const form = h(
    "form",
    { novalidate: true },
    h("h2", { id: titleId }, existing ? `Edit ${existing.name}` : "New profile"),
    ...formLayout(f, v, h("datalist", { id: listId }, localModels.map((m) => h("option", { value: m.id })))),
    status,
    h("div", { class: "actions" }, cancel, submit),
  );
  const dialog = h("dialog", { class: "profile-form", "aria-labelledby": titleId }, form);
  cancel.addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => dialog.remove());

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
        await save(collect(f));
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

/** One control per profile field, named as the API names it, holding the values `v`. */
function profileFields(v, listId, modelTypes) {
  const input = (name, attrs = {}) => h("input", { name, ...attrs });
  const num = (name, attrs = {}) => input(name, { type: "number", inputmode: "decimal", ...attrs });
  const text = (name) => input(name, { type: "text", autocomplete: "off", value: v[name] ?? "" });
  const check = (name) => input(name, { type: "checkbox", checked: Boolean(v[name]) });
  const f = {
    name: input("name", { type: "text", required: true, autocomplete: "off", value: v.name ?? "", pattern: "[A-Za-z0-9][\\w.:/@+\\-]*" }),
    model_path: input("model_path", { type: "text", list: listId, autocomplete: "off", value: v.model_path ?? "" }),
    model_type: h("select", { name: "model_type" }, modelTypes.map((t) => h("option", { value: t }, t))),
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
  return f;
}

/** The fieldsets: model, parsers, lifecycle, and the advanced part (open when used). */
function formLayout(f, v, datalist) {
  return [
    h(
      "fieldset",
      {},
      h("legend", {}, "Model"),
      field("Name", f.name, "What clients send as model; letters, digits, . _ : / @ + -"),
      field("Model path", f.model_path, "A Hugging Face repo id in the local cache, or a folder"),
      datalist,
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
  ];
}

/** The request body from the controls; a malformed environment line throws (param "env"). */
function collect(f) {
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

function lines(text) {
  return text
    .split("\n")
    .map((line) => line.trim())
    .filter(Boolean);
}
