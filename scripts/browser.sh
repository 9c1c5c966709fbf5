#!/usr/bin/env bash
# A real browser for the UI tests (tests/browser): Debian's Chromium, driven by Playwright's Python
# package (installed in .venv by scripts/install.sh). Playwright's own browser download cannot
# reach its servers from these machines, and is not needed: the tests launch /usr/bin/chromium.
#
# Installs the package when it is missing (as root, no stdin); idempotent. Prints the version.
set -euo pipefail

say() { echo "browser: $*"; }
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$CHROMIUM" ]; then
  [ "$(id -u)" = 0 ] || { echo "browser: error: $CHROMIUM is missing; as root: apt-get install chromium" >&2; exit 1; }
  say "installing Debian's chromium"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
fi
say "$("$CHROMIUM" --version 2>/dev/null | head -1) at $CHROMIUM"
