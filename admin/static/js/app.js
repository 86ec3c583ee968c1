// The page's entry: sign-in state, the top bar and a hash router (#/models, #/chat, ...).

import { api, hasToken, onUnauthorized, setToken } from "./api.js";
import { clear, h } from "./dom.js";
import * as admin from "./views/admin.js";
import * as chat from "./views/chat.js";
import * as models from "./views/models.js";
import * as profiles from "./views/profiles.js";
import * as servers from "./views/servers.js";
import { renderSignIn } from "./views/signin.js";

const VIEWS = { models, profiles, servers, chat, admin };
const DEFAULT_ROUTE = "servers";

const main = document.getElementById("main");
const topbar = document.getElementById("topbar");
let user = null;
let cleanup = null;

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, search = ""] = raw.split("?");
  const name = path.split("/")[0];
  return { name: VIEWS[name] ? name : DEFAULT_ROUTE, params: new URLSearchParams(search) };
}

function stopView() {
  if (cleanup) {
    try {
      cleanup();
    } catch (error) {
      console.error(error);
    }
  }
  cleanup = null;
}

function route() {
  if (!user) return;
  const { name, params } = parseHash();
  stopView();
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.route === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const container = h("div", { class: "view", id: `view-${name}` });
  clear(main, container);
  const ctx = { user, params, go: (hash) => (location.hash = hash) };
  cleanup = VIEWS[name].render(container, ctx) || null;
  const heading = container.querySelector("h1");
  document.title = `${heading ? heading.textContent : name} · mlx-manager`;
  if (heading) {
    heading.tabIndex = -1;
    heading.focus({ preventScroll: true });
  }
}

function showSignIn(message) {
  stopView();
  user = null;
  topbar.hidden = true;
  document.title = "Sign in · mlx-manager";
  clear(main);
  renderSignIn(main, { message, onSignedIn: start });
}

async function start() {
  try {
    user = await api("/api/auth/me");
  } catch (error) {
    if (error.status !== 401) showSignIn(error.message); // a 401 already showed sign-in
    return;
  }
  document.getElementById("who").textContent = `${user.email}${user.is_admin ? " (admin)" : ""}`;
  document.getElementById("nav-admin").textContent = user.is_admin ? "Admin" : "Keys & usage";
  topbar.hidden = false;
  route();
}

// The skip link must not go through the hash router ("#main" is not a screen).
document.querySelector(".skip-link").addEventListener("click", (event) => {
  event.preventDefault();
  const target = main.querySelector("h1") || main;
  if (!target.hasAttribute("tabindex")) target.tabIndex = -1;
  target.focus();
});

onUnauthorized(() => showSignIn("Your session has ended; sign in again."));
window.addEventListener("hashchange", route);
document.getElementById("sign-out").addEventListener("click", () => {
  setToken(null);
  history.replaceState(null, "", location.pathname); // the next account starts at home
  showSignIn("You are signed out.");
});

if (hasToken()) start();
else showSignIn();
