"""Every package imports with only the core dependencies (optional stacks stay lazy).

The check runs in a fresh interpreter in which each optional module is made unimportable
(`sys.modules[name] = None`: `import name` raises ModuleNotFoundError and
`importlib.util.find_spec(name)` answers None, as when it is not installed), because the dev
environment has most of them installed and an eager import would pass there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["runtime", "index", "rag", "code_tools", "agents", "eval_suites", "codehop"]
# The import names of pyproject's extras (gpu: vllm, faiss-gpu is the core `faiss` module;
# structured: xgrammar and its triton; ray; llamacpp: llama_cpp) and of the dev-only tools
# (openai, xllamacpp, pytest-lsp, schemathesis, hypothesis, rank-bm25, playwright, pyte, neovim).
OPTIONAL = ["vllm", "xgrammar", "triton", "ray", "llama_cpp", "openai", "xllamacpp", "pytest_lsp",
            "schemathesis", "hypothesis", "rank_bm25", "playwright", "pyte", "pytest", "neovim"]

PROBE = r'''
import importlib, json, pkgutil, sys, traceback
blocked, packages = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for name in blocked:
    sys.modules[name] = None  # as if not installed
failures = {}

def attempt(name):
    try:
        return importlib.import_module(name)
    except BaseException:  # noqa: BLE001 - a SystemExit at import is a failure too
        failures[name] = traceback.format_exc(limit=-3)

for package in packages:
    module = attempt(package)
    if module is None:
        continue
    for info in pkgutil.walk_packages(module.__path__, prefix=package + ".",
                                      onerror=lambda name: failures.setdefault(name, "walk failed")):
        if not info.name.endswith("__main__"):  # importing a __main__ runs its program
            attempt(info.name)
print(json.dumps(failures))
'''


def core_import_failures(blocked: list[str], packages: list[str] = PACKAGES) -> dict[str, str]:
    """{module: traceback} for each module of `packages` that fails to import in a fresh
    interpreter where the modules `blocked` cannot be imported."""
    run = subprocess.run([sys.executable, "-c", PROBE, json.dumps(blocked), json.dumps(packages)],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_every_module_imports_without_the_optional_stacks():
    failures = core_import_failures(OPTIONAL)
    assert not failures, "\n".join(f"{name}:\n{trace}" for name, trace in failures.items())
