// Sign in and create an account. The first account becomes the admin and is signed in at
// once; later ones wait for an admin's approval, which the page says plainly.

import { api, setToken } from "../api.js";
import { clear, field, h, messageBox } from "../dom.js";

export function renderSignIn(root, { message, onSignedIn }) {
  let mode = "signin";
  const status = h("div", { class: "status-slot" });
  const email = h("input", {
    type: "email",
    name: "email",
    autocomplete: "username",
    required: true,
    maxlength: 320,
  });
  const password = h("input", {
    type: "password",
    name: "password",
    autocomplete: "current-password",
    required: true,
    maxlength: 4096,
  });
  const submit = h("button", { type: "submit", class: "primary" }, "Sign in");
  const title = h("h1", { id: "auth-title" }, "Sign in");
  const intro = h("p", { class: "muted" }, "Sign in to manage your local models.");
  const toggle = h("button", { type: "button", class: "link" }, "Create an account");
  const form = h(
    "form",
    { class: "auth-form", "aria-labelledby": "auth-title", novalidate: true },
    field("Email", email),
    field("Password", password),
    status,
    submit,
  );

  function show(nextMode, note) {
    mode = nextMode;
    const signin = mode === "signin";
    title.textContent = signin ? "Sign in" : "Create an account";
    intro.textContent = signin
      ? "Sign in to manage your local models."
      : "The first account becomes the admin. Later accounts wait for an admin's approval.";
    submit.textContent = signin ? "Sign in" : "Create account";
    password.autocomplete = signin ? "current-password" : "new-password";
    toggle.textContent = signin ? "Create an account" : "I already have an account";
    clear(status, note || null);
  }

  toggle.addEventListener("click", () => {
    show(mode === "signin" ? "register" : "signin");
    email.focus();
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault(); // never a native submit: fields would end up in a URL
    if (!email.value.trim() || !password.value) {
      clear(status, messageBox("Enter your email and password."));
      (email.value.trim() ? password : email).focus();
      return;
    }
    submit.disabled = true;
    form.setAttribute("aria-busy", "true");
    clear(status);
    const credentials = { email: email.value.trim(), password: password.value };
    try {
      if (mode === "register") {
        const created = await api("/api/auth/register", { method: "POST", body: credentials });
        if (created.status !== "approved") {
          password.value = "";
          show(
            "signin",
            messageBox(
              created.message ||
                "Account created. An admin must approve it before you can sign in.",
              "success",
            ),
          );
          return;
        }
      }
      const session = await api("/api/auth/login", { method: "POST", body: credentials });
      password.value = "";
      setToken(session.access_token);
      await onSignedIn();
    } catch (error) {
      clear(status, messageBox(describe(error)));
      password.select();
      password.focus();
    } finally {
      submit.disabled = false;
      form.removeAttribute("aria-busy");
    }
  });

  clear(
    root,
    h(
      "section",
      { class: "auth card" },
      h("div", { class: "auth-brand" }, h("img", { src: "/ui/icon.svg", alt: "", width: 40, height: 40 }), "mlx-manager"),
      title,
      intro,
      form,
      h("p", { class: "switch" }, toggle),
    ),
  );
  if (message) status.append(messageBox(message, "info"));
  email.focus();
}

function describe(error) {
  if (error.code === "pending_approval") {
    return "Your account is waiting for an admin's approval. Try again once it is approved.";
  }
  if (error.status === 429 && error.retryAfter) {
    return `Too many failed attempts; try again in ${error.retryAfter} seconds.`;
  }
  return error.message;
}
