#!/usr/bin/env bash
# Install PostgreSQL from Debian's packages when it is missing: FerretDB's
# PostgreSQL backend, which the tests, the benchmarks and `make run-ha` use.
# Each of them starts a private server of its own (tests/support/postgres.py);
# the system-wide server that Debian's package may start is stopped again.
#
#   scripts/install-postgresql.sh      # no-op when initdb is already there
#
# Needs root and apt-get to install (CI runs as root). Without them it says so
# and exits 0: the tests then skip what needs PostgreSQL, or fail under CI=true.
set -euo pipefail

log() { echo "install-postgresql: $*" >&2; }

if [[ -n "${POSTGRESQL_BIN:-}" ]] || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null; then
    exit 0
fi
if ! command -v apt-get >/dev/null || [[ $(id -u) != 0 ]]; then
    log "PostgreSQL is missing and cannot be installed here (needs root and apt-get): apt-get install postgresql"
    exit 0
fi
log "installing postgresql (apt-get)"
apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
# Debian's package may start a cluster on port 5432; ours start their own.
(systemctl disable --now postgresql 2>/dev/null || service postgresql stop 2>/dev/null) >&2 || true
