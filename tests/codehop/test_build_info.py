"""codehop.build_info: the version and commit a server reports (Tabby's HealthState.version),
from real git repositories and real distribution metadata."""

from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path

from codehop.build_info import UNKNOWN, _git, _install_time, _recorded_commit, build_info


def _git_run(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_this_checkout_reports_its_head_and_install_time():
    info = build_info()
    root = Path(__file__).resolve().parents[2]
    assert info.version == metadata.version("codehop")
    assert info.git_sha == _git_run(root, "rev-parse", "HEAD")
    assert info.build_timestamp.endswith("Z") and info.build_date == info.build_timestamp[:10]


def test_git_describe_marks_a_dirty_tree_and_uses_tags(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git_run(repo, "init", "-q")
    (repo / "a.txt").write_text("one\n")
    _git_run(repo, "add", "a.txt")
    _git_run(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "one")
    sha = _git_run(repo, "rev-parse", "HEAD")
    assert _git(repo) == (sha, sha[:7])
    (repo / "a.txt").write_text("two\n")
    assert _git(repo) == (sha, f"{sha[:7]}-dirty")
    _git_run(repo, "tag", "v0.3.0")
    assert _git(repo) == (sha, "v0.3.0-dirty")


def test_a_folder_that_is_no_repository_is_unknown(tmp_path):
    assert _git(tmp_path) == (UNKNOWN, UNKNOWN)


def _dist(tmp_path: Path, direct_url: dict | None) -> metadata.Distribution:
    info = tmp_path / "site" / "codehop-9.9.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: codehop\nVersion: 9.9\n")
    (info / "RECORD").write_text("codehop-9.9.dist-info/METADATA,,\ncodehop-9.9.dist-info/RECORD,,\n")
    if direct_url is not None:
        (info / "direct_url.json").write_text(json.dumps(direct_url))
    return metadata.PathDistribution(info)


def test_a_git_url_install_reports_the_commit_pip_recorded(tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    dist = _dist(tmp_path, {"url": "https://example.com/codehop.git",
                            "vcs_info": {"vcs": "git", "commit_id": commit}})
    assert _recorded_commit(dist) == commit
    assert _install_time([dist]) is not None  # METADATA's time, from the RECORD's listing


def test_an_install_from_a_folder_has_no_commit(tmp_path):
    assert _recorded_commit(_dist(tmp_path, {"url": "file:///src/codehop", "dir_info": {}})) == UNKNOWN
    assert _recorded_commit(_dist(tmp_path / "b", None)) == UNKNOWN
