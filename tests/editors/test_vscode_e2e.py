"""The VS Code extension in a real VS Code (code-server 4.100.3 through headless Chromium), by
scripts/vscode_e2e.sh: activation, status-bar progress, hover, inline completion, Ask panel.

Optional: it needs code-server installed by that script first (from npm, with apt packages;
see its header); once installed it runs with no network. The tiny random model answers, so
the texts are checked for being there, not for what they say.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.editors.conftest import REPO_ROOT, need

pytestmark = [pytest.mark.optional, pytest.mark.slow]
CODE_SERVER = Path(os.environ.get("CODEHOP_TOOLS", Path.home() / ".cache" / "codehop-tools")) / \
    "code-server-4.100.3" / "node_modules" / ".bin" / "code-server"


def test_the_extension_in_code_server(tmp_path, tiny_model_dir):
    if not CODE_SERVER.exists():
        pytest.skip(f"code-server 4.100.3 is not installed at {CODE_SERVER}: run bash scripts/vscode_e2e.sh once")
    need("chromium", "Debian's headless Chromium")
    need("npm", "Node.js builds the extension")
    out = tmp_path / "out"
    run = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "vscode_e2e.sh"), "--model", str(tiny_model_dir),
                          "--out", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
                         stdin=subprocess.DEVNULL)
    assert (out / "result.json").exists(), run.stdout[-3000:] + run.stderr[-3000:]
    seen = json.loads((out / "result.json").read_text())
    assert "error" not in seen, f"{seen}\n{(out / 'code-server.log').read_text()[-3000:]}"
    assert any("indexing" in t or "loading" in t for t in seen["status_texts"]), seen["status_texts"]
    assert seen["status_texts"][-1] == "codehop"  # the check icon and the name: ready
    assert "def slugify" in seen["hover"]
    assert seen["ghost_text"].strip()
    assert any("README.md" in s for s in seen["ask_sources"])
