#!/usr/bin/env bash
# The web GUI's browser tests drive Debian's chromium (never a browser that
# Playwright downloads). Installs it with apt-get when it is missing and this
# runs as root (as CI does); otherwise says how, and the browser tests skip
# (locally) or fail (under CI=true).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium for the browser tests (apt-get)..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq chromium >&2
else
  echo "chromium is missing: the browser tests need it (sudo apt-get install chromium)" >&2
fi
