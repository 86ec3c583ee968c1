"""Database reads and writes: routes call these functions, never SQL (routes -> store -> tables).

One module per table family, each function taking the caller's session (the route or job owns
the transaction's scope; the function commits when it writes). Keeping every query here means a
schema change, a second database (PostgreSQL) or a new column touches one file, and the rules
that guard the data (the last admin, unique names, hashed keys) hold for the API and the CLI
alike.
"""

from __future__ import annotations

from gateway.store import downloads, instances, keys, nodes, profiles, usage, users

__all__ = ["downloads", "instances", "keys", "nodes", "profiles", "usage", "users"]
