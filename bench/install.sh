#!/usr/bin/env bash
# What the benchmarks need beyond the Python packages (`make bench` runs this):
# redis-server from Debian's packages (the Celery side's broker and result
# backend), PostgreSQL and FerretDB (the MongoDB side), each installed only when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "bench/install: $*" >&2; }

if ! command -v redis-server >/dev/null; then
    if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
        log "installing redis-server (apt-get)"
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >&2
        # Debian's package may start a system-wide server; the benchmarks start their own.
        (systemctl disable --now redis-server 2>/dev/null || service redis-server stop 2>/dev/null) || true
    else
        log "redis-server is missing and cannot be installed here (needs root and apt-get): Celery is skipped"
    fi
fi

if [[ -z "${MONGODB_URI:-}" ]]; then
    scripts/install-postgresql.sh
    if command -v go >/dev/null || [[ -n "${FERRETDB_BIN:-}" ]]; then
        scripts/install-ferretdb.sh >/dev/null || log "FerretDB could not be installed: the MongoDB side is skipped"
    else
        log "no Go toolchain to build FerretDB: the MongoDB side is skipped unless it is cached"
    fi
fi
