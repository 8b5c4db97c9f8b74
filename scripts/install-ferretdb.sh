#!/usr/bin/env bash
# Install FerretDB (the MongoDB-compatible server the tests run against) from
# the Go module proxy, and print the binary's path on stdout (nothing else).
#
#   scripts/install-ferretdb.sh            # build once, then reuse the cache
#   FERRETDB_BIN=$(scripts/install-ferretdb.sh)
#
# The binary is cached at ${XDG_CACHE_HOME:-$HOME/.cache}/shards/ferretdb-v1.24.2/ferretdb.
#
# Why not `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.2`:
#   - `go install pkg@version` asks the proxy for the module's version list and
#     deprecation notice, which some proxies/mirrors refuse (403); a plain
#     `go mod download module@version` fetches the exact version only.
#   - FerretDB's build/version package panics at start-up unless the main module
#     carries build/version/version.txt, a generated file that is not part of the
#     published module. So we build from a writable copy of the module source
#     with that file added.
# Needs Go >= 1.24 (FerretDB's go.mod). Takes about a minute on first run.
set -euo pipefail

VERSION=v1.24.2
MODULE=github.com/FerretDB/FerretDB
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/shards/ferretdb-${VERSION}"
BIN="$CACHE/ferretdb"

log() { echo "install-ferretdb: $*" >&2; }

if [[ -x "$BIN" ]]; then
    echo "$BIN"
    exit 0
fi

command -v go >/dev/null || { log "Go is required (https://go.dev/dl/)"; exit 1; }

WORK=$(mktemp -d)
trap 'chmod -R u+w "$WORK" 2>/dev/null || true; rm -rf "$WORK"' EXIT

log "downloading $MODULE@$VERSION"
# In an empty directory with no go.mod, so no project's module gets in the way.
DIR=$(cd "$WORK" && GOFLAGS=-mod=mod go mod download -json "$MODULE@$VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
if [[ -z "$DIR" || ! -d "$DIR" ]]; then
    log "go mod download did not report a source directory"
    exit 1
fi

# The module cache is read-only: build from a copy that carries version.txt.
SRC="$WORK/src"
cp -R "$DIR" "$SRC"
chmod -R u+w "$SRC"
echo "$VERSION" >"$SRC/build/version/version.txt"

log "building (about a minute)"
mkdir -p "$CACHE"
# Built next to its final place and renamed, so a concurrent run never sees half a binary.
TMP_BIN="$CACHE/ferretdb.tmp.$$"
trap 'rm -f "$TMP_BIN"; chmod -R u+w "$WORK" 2>/dev/null || true; rm -rf "$WORK"' EXIT
(cd "$SRC" && GOFLAGS="-mod=mod -buildvcs=false" go build -trimpath -o "$TMP_BIN" ./cmd/ferretdb) >&2
"$TMP_BIN" --version >/dev/null # fails loudly if the binary cannot start
mv -f "$TMP_BIN" "$BIN"
echo "$BIN"
