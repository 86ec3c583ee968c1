// The only way the page talks to the gateway: fetch() to /api and /v1 with a bearer token.
// The token lives in memory and sessionStorage (gone when the tab closes), never in
// localStorage, a cookie or a URL. Any 401 ends the session and shows the sign-in screen.

import { readEvents } from "./sse.js";

const TOKEN_KEY = "mlx-manager.session";
let token = null;
try {
  token = sessionStorage.getItem(TOKEN_KEY);
} catch {
  token = null; // storage disabled: the session lasts as long as the page
}
let unauthorized = () => {};

export function hasToken() {
  return Boolean(token);
}

export function setToken(value) {
  token = value || null;
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage disabled: memory only
  }
}

/** Called (once per expiry) when the gateway answers 401 to a signed-in request. */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

export class ApiError extends Error {
  constructor(status, message, code = null, param = null, retryAfter = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.param = param;
    this.retryAfter = retryAfter;
  }
}

function checkPath(path) {
  if (!/^\/(api|v1)\//.test(path)) throw new Error(`not an API path: ${path}`);
}

function headersFor(body, accept) {
  const headers = { Accept: accept };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  return headers;
}

async function send(path, { method = "GET", body, signal, accept = "application/json" } = {}) {
  checkPath(path);
  const used = token;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: headersFor(body, accept),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
      credentials: "omit",
      redirect: "error",
      referrerPolicy: "no-referrer",
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "the gateway cannot be reached; is it running?", "network_error");
  }
  if (response.status === 401 && used && token === used) {
    setToken(null);
    unauthorized();
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

/** Build an ApiError from either error shape: /api's {detail, code} or /v1's {error: {...}}. */
export async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  let param = null;
  try {
    const data = await response.json();
    const err = data && typeof data.error === "object" && data.error ? data.error : data;
    if (typeof err.detail === "string") message = err.detail;
    else if (Array.isArray(err.detail)) message = err.detail.map((d) => d.msg || d).join("; ");
    else if (typeof err.message === "string") message = err.message;
    code = err.code ?? null;
    param = err.param ?? null;
  } catch {
    // not JSON: keep the status line
  }
  const retry = response.headers.get("Retry-After");
  return new ApiError(response.status, message, code, param, retry ? Number(retry) : null);
}

/** JSON request; resolves to the parsed body (null for 204). */
export async function api(path, options = {}) {
  const response = await send(path, options);
  if (response.status === 204) return null;
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

/** Query string from an object, leaving out null/undefined (never used for secrets). */
export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined) search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/**
 * Open an SSE endpoint with the bearer token and call onEvent for each event until `signal`
 * aborts. Reconnects after a dropped connection (1 s, doubling up to 15 s) unless the answer
 * was an error other than a network failure or 5xx. `onState("open"|"retrying"|"closed")`.
 */
export async function follow(path, { signal, onEvent, onState = () => {}, body, method } = {}) {
  let delay = 1000;
  while (!signal?.aborted) {
    try {
      const response = await send(path, { signal, accept: "text/event-stream", body, method });
      onState("open");
      delay = 1000;
      await readEvents(response, onEvent, signal);
    } catch (error) {
      if (error.name === "AbortError" || signal?.aborted) break;
      if (error instanceof ApiError && error.status && error.status < 500) {
        onState("closed", error);
        return;
      }
    }
    if (signal?.aborted) break;
    onState("retrying");
    await sleep(delay, signal);
    delay = Math.min(delay * 2, 15000);
  }
  onState("closed");
}

/** POST a JSON body and return the raw streaming Response (for /v1 streams). */
export function stream(path, body, signal) {
  return send(path, { method: "POST", body, signal, accept: "text/event-stream" });
}

export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}
