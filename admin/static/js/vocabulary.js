// The gateway's shared vocabulary - the kinds of model a profile can serve, the server states
// and which of them count as running - read from GET /api/system/info (gateway/types.py
// spells them once), so the page keeps no copy that could drift.

import { api } from "./api.js";

let pending = null;

/**
 * Resolves to {modelTypes: string[], serverStates: string[], running: Set<string>}. Asked once
 * per page load and shared by the views; a failed answer is not kept, the next call asks again.
 */
export function vocabulary() {
  pending ??= api("/api/system/info").then(
    (info) => ({
      modelTypes: info.model_types,
      serverStates: info.server_states,
      running: new Set(info.running_states),
    }),
    (error) => {
      pending = null;
      throw error;
    },
  );
  return pending;
}
