"""Which codehop this is: version, when it was built or installed, and its git commit.

Tabby's clients read these from `/v1/health` (HealthState.version); codehop reports only what
it can know, and "unknown" for the rest:

- a source checkout (the package imports from a git work tree, as with `pip install -e .`):
  the work tree's HEAD and `git describe --tags --always --dirty`, read once when first asked
  (the code that runs is that tree, so HEAD at start-up is what is serving; "-dirty" says
  that files differ from it);
- an install from a git URL (`pip install git+https://...`): the commit pip recorded in the
  distribution's `direct_url.json` (PEP 610); there is no `git describe` to give;
- build_date / build_timestamp: when this copy was built and installed, i.e. the time pip
  wrote the distribution's METADATA (an install from source builds at that moment; for an
  editable install it is when `pip install -e` ran, not when the files were last edited).
"""

from __future__ import annotations

import functools
import json
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

UNKNOWN = "unknown"
_DISTRIBUTION = "codehop"
_SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the directory that holds codehop/


@dataclass(frozen=True)
class BuildInfo:
    """What is known about this copy of codehop (UNKNOWN where it cannot be known)."""

    version: str
    build_date: str  # YYYY-MM-DD, UTC
    build_timestamp: str  # ISO 8601, UTC
    git_sha: str
    git_describe: str


@functools.cache
def build_info() -> BuildInfo:
    """This process's BuildInfo, worked out once (git is asked at most twice, with a timeout)."""
    dists = list(metadata.distributions(name=_DISTRIBUTION))
    version = dists[0].version if dists else UNKNOWN  # none: a tree that was never installed
    installed = _install_time(dists)
    sha, describe = _git(_SOURCE_ROOT)
    if sha == UNKNOWN:
        sha = next((c for c in map(_recorded_commit, dists) if c != UNKNOWN), UNKNOWN)
    return BuildInfo(version=version,
                     build_date=installed.strftime("%Y-%m-%d") if installed else UNKNOWN,
                     build_timestamp=installed.isoformat().replace("+00:00", "Z") if installed else UNKNOWN,
                     git_sha=sha, git_describe=describe)


def _install_time(dists) -> datetime | None:
    """When pip wrote an installed distribution's METADATA (the `*.dist-info` pip writes; an
    `*.egg-info` left in a source tree by setuptools is not an install and is passed over)."""
    for dist in dists:
        for file in dist.files or ():
            if file.name == "METADATA" and file.parent.name.endswith(".dist-info"):
                try:
                    mtime = Path(str(dist.locate_file(file))).stat().st_mtime
                except OSError:
                    continue
                return datetime.fromtimestamp(mtime, tz=timezone.utc)
    return None


def _git(root: Path) -> tuple[str, str]:
    """(HEAD's sha, `git describe`) of the work tree at `root`; UNKNOWN when it is none."""
    if not (root / ".git").exists():
        return UNKNOWN, UNKNOWN
    sha = _run_git(root, "rev-parse", "HEAD")
    if sha is None:
        return UNKNOWN, UNKNOWN
    return sha, _run_git(root, "describe", "--tags", "--always", "--dirty") or UNKNOWN


def _run_git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):  # no git installed, or it hung
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def _recorded_commit(dist) -> str:
    """The commit of a VCS install from the distribution's direct_url.json (PEP 610)."""
    try:
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
    except (OSError, ValueError):
        return UNKNOWN
    return str(direct.get("vcs_info", {}).get("commit_id") or UNKNOWN)
