#!/usr/bin/env bash
# Tools of the editor and browser tests (called by scripts/test.sh; safe to rerun):
#   Neovim 0.7 and Chromium from Debian (apt, as root), the VS Code extension's npm packages
#   (npm ci in editors/vscode, from package-lock.json) and Tabby's agent (npm ci in
#   tests/editors/tabby_agent). Never fails the setup: a test that
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
# npm packages, each only when its lock file changed since the last npm ci: the VS Code
# extension's, and Tabby's editor agent (tabby-agent 1.5.0) for tests/editors/test_tabby_agent.py.
if command -v npm >/dev/null 2>&1; then
  for dir in editors/vscode tests/editors/tabby_agent; do
    if [ ! -f "$dir/node_modules/.package-lock.json" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
      (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
        || echo "note: npm ci in $dir failed; the tests that need its packages will not run"
    fi
  done
fi
exit 0
