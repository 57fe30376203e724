"""Shared by the editor tests: a small repository, the tiny random Llama on disk, and the rule
for missing tools (skipped on a developer's machine, a failure under CI=true, where
scripts/test.sh has installed them)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
UTILS = '''def slugify(title):
    """Lower-case `title` and join its words with dashes."""
    return "-".join(title.lower().split())
'''
MAIN = "from utils import slugify\n\nname = slugify("
README = "# Project\n\nUse slugify to turn page titles into URL paths for the blog.\n"
QUESTION = "How do I turn page titles into URL paths?"
# The server's environment: offline, one thread, this checkout importable.
SERVER_ENV = {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
              "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def need(tool: str, why: str) -> str:
    """The path of `tool`; skips without it, except under CI=true where it must be installed."""
    path = shutil.which(tool) if not os.path.isabs(tool) else (tool if os.path.exists(tool) else None)
    if path is None:
        message = f"{tool} not found ({why}); scripts/test.sh installs it as root with apt"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def lsp_command(model: Path, state: Path) -> list[str]:
    """`codehop lsp` with the tiny model, BM25-only context and short generations."""
    return [sys.executable, "-m", "codehop", "lsp", "--model", str(model), "--workspace", str(state),
            "--no-rerank", "--max-new-tokens", "8", "--debounce", "0.05"]


@pytest.fixture
def project(tmp_path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / ".git").mkdir()  # a root marker for the editors
    (root / "utils.py").write_text(UTILS)
    (root / "main.py").write_text(MAIN)
    (root / "README.md").write_text(README)
    return root
