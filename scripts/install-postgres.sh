#!/usr/bin/env bash
# What the PostgreSQL tests need: the PostgreSQL server binaries (initdb, postgres), which the
# tests run as a private throwaway cluster (tests/support/postgres.py). The gateway itself needs
# none of this: it talks to PostgreSQL through asyncpg, a pip dependency. Idempotent: does
# nothing when the binaries are there (Debian's /usr/lib/postgresql/NN/bin, pg_config's bindir,
# initdb on PATH, or MLX_MANAGER_TEST_PG_BINDIR). On Debian/Ubuntu as root (CI) it installs
# Debian's postgresql package, which also creates the unprivileged `postgres` user the tests
# run the server as under root; elsewhere it says what to install.
set -euo pipefail

has_binaries() {
    local dir
    for dir in "${MLX_MANAGER_TEST_PG_BINDIR:-}" /usr/lib/postgresql/*/bin; do
        if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ]; then
            return 0
        fi
    done
    if command -v pg_config >/dev/null 2>&1; then
        dir="$(pg_config --bindir)"
        [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ] && return 0
    fi
    command -v initdb >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1
}

if has_binaries; then
    if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
        echo "install-postgres: running as root, the tests need a 'postgres' user to run" \
            "the server as (Debian's postgresql package creates it)" >&2
        exit 1
    fi
    exit 0
fi

if [ "$(uname -s)" = "Darwin" ]; then
    echo "install-postgres: PostgreSQL server binaries not found; install them" \
        "(brew install postgresql@16, or Postgres.app) or set MLX_MANAGER_TEST_PG_BINDIR" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-postgres: PostgreSQL server binaries (initdb, postgres) not found and no" \
        "apt-get; install PostgreSQL or set MLX_MANAGER_TEST_PG_BINDIR to its bin folder" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-postgres: PostgreSQL server binaries not found; as root run" \
        "'apt-get install postgresql' (or set MLX_MANAGER_TEST_PG_BINDIR)" >&2
    exit 1
fi
echo "install-postgres: installing Debian's postgresql (server binaries for the tests)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# The package's own cluster (port 5432) is not used by the tests: a policy-rc.d that refuses
# service starts keeps the install from starting it, and is removed again afterwards.
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$POLICY"
    chmod +x "$POLICY"
    trap 'rm -f "$POLICY"' EXIT
fi
apt-get install -y -qq --no-install-recommends postgresql >/dev/null
has_binaries || { echo "install-postgres: initdb still missing after the install" >&2; exit 1; }
