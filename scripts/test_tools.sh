#!/usr/bin/env bash
# Tools of the editor and browser tests (called by scripts/test.sh; safe to rerun):
#   Neovim 0.7 and Chromium from Debian (apt, as root), the VS Code extension's npm packages
#   (npm ci in editors/vscode, from package-lock.json). Never fails the setup: a test that
#   needs a missing tool skips on a developer's machine and fails under CI=true.
set -uo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v nvim >/dev/null 2>&1 || missing+=(neovim)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
command -v node >/dev/null 2>&1 || missing+=(nodejs npm)  # the machine's Node.js 20 is preferred
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 \
           && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1; }; } \
      || echo "note: could not install ${missing[*]}; the editor/browser tests that need them will not run"
  else
    echo "note: ${missing[*]} not installed (as root with apt, scripts/test.sh installs them)"
  fi
fi
# The extension's packages: only when the lock file changed since the last npm ci.
ext=editors/vscode
if command -v npm >/dev/null 2>&1; then
  if [ ! -f "$ext/node_modules/.package-lock.json" ] || [ "$ext/package-lock.json" -nt "$ext/node_modules/.package-lock.json" ]; then
    (cd "$ext" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
      || echo "note: npm ci in $ext failed; the VS Code extension test will not run"
  fi
fi
exit 0
