"""A new workspace ignores itself: git status in the project never lists `.codehop/`."""

import shutil
import subprocess

import pytest

from index import Collection
from index.workspace import GITIGNORE, ensure_workspace

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(root, *args) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def test_a_workspace_made_by_indexing_is_invisible_to_git(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    _git(project, "init", "-q")
    (project / "notes.md").write_text("# Notes\n\nAtomic writes rename a temp file into place.\n")
    with Collection.open(project / ".codehop", "docs") as collection:
        collection.add_paths([project / "notes.md"], progress=False, defer_dense=True)
    assert (project / ".codehop" / "store.sqlite").exists()
    assert (project / ".codehop" / ".gitignore").read_text() == GITIGNORE
    assert _git(project, "status", "--porcelain", "--untracked-files=all").split() == ["??", "notes.md"]


def test_the_code_index_creates_it_the_same_way(tmp_path):
    from code_tools.repo import RepoIndex

    project = tmp_path / "project"
    project.mkdir()
    (project / "main.py").write_text("def main():\n    return 1\n")
    RepoIndex.open(project, project / ".codehop")
    assert (project / ".codehop" / ".gitignore").read_text() == GITIGNORE


def test_an_existing_workspace_keeps_its_owners_choice(tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "store.sqlite").write_bytes(b"")  # made before, its .gitignore removed by its owner
    ensure_workspace(workspace)
    assert not (workspace / ".gitignore").exists()
    empty = tmp_path / "empty"
    empty.mkdir()  # made by the user for --workspace: still new to codehop
    ensure_workspace(empty)
    assert (empty / ".gitignore").read_text() == GITIGNORE
