#!/usr/bin/env bash
# Refreshes the vendored front-end modules (Preact, its hooks, htm) from the npm
# registry, with their licences and a VERSIONS file. Run it when a version
# changes, review the diff, commit. The page needs no build step: these are the
# packages' own ES module builds, served as package data.
#
#   clients/web/scripts/vendor.sh                 # the pinned versions below
#   PREACT=11.2.0 HTM=3.1.1 clients/web/scripts/vendor.sh
set -euo pipefail
PREACT="${PREACT:-11.2.0}"
HTM="${HTM:-3.1.1}"
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/../shards_web/static/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cd "$work"
npm pack --silent "preact@$PREACT" "htm@$HTM" >/dev/null
mkdir preact htm
tar xzf "preact-$PREACT.tgz" -C preact
tar xzf "htm-$HTM.tgz" -C htm

mkdir -p "$out"
# The browser resolves no bare specifiers without an import map (an inline
# script, which the page's CSP forbids), so hooks import preact by path; the
# source map comments go (the maps are not shipped).
strip_map() { sed -e '/^\/\/# sourceMappingURL=/d' "$1"; }
strip_map preact/package/dist/preact.mjs >"$out/preact.mjs"
strip_map preact/package/hooks/dist/hooks.mjs | sed -e 's#from"preact"#from"./preact.mjs"#g' >"$out/hooks.mjs"
strip_map htm/package/dist/htm.mjs >"$out/htm.mjs"
grep -q 'from"./preact.mjs"' "$out/hooks.mjs" || { echo "vendor.sh: hooks.mjs no longer imports preact as expected" >&2; exit 1; }
cp preact/package/LICENSE "$out/LICENSE-preact"
cp htm/package/LICENSE "$out/LICENSE-htm"
cat >"$out/VERSIONS" <<VERSIONS
preact $PREACT (npm: dist/preact.mjs, hooks/dist/hooks.mjs) MIT, LICENSE-preact
htm $HTM (npm: dist/htm.mjs) Apache-2.0, LICENSE-htm
refreshed by clients/web/scripts/vendor.sh; hooks.mjs imports ./preact.mjs instead of "preact"
VERSIONS
echo "vendored preact $PREACT and htm $HTM into $out"
