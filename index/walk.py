"""The one tree walker: which files under a directory are sources worth indexing.

Collections (`Collection.add_paths`, the REST file jobs) and repository indexes
(`code_tools.repo.iter_repo_files`) both walk with it, so they leave out the same things:

- hidden files and directories (".git", ".codehop", ".env", ...);
- directories of tooling state, dependencies, vendored code and build output (SKIP_DIRS,
  plus any "*.egg-info");
- whatever the .gitignore files along the way exclude. Each .gitignore applies below its own
  directory, with git's matching rules (pathspec's GitIgnoreSpec); a nested one adds to its
  parents' patterns ("!" re-includes only what its own file excluded).

Example: with "build/" in the root .gitignore and "gen.py" in pkg/.gitignore, the tree
{a.py, build/x.py, pkg/gen.py, pkg/b.py, other/gen.py, node_modules/m.js} walks to
["a.py", "other/gen.py", "pkg/b.py"].
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

SKIP_DIRS = frozenset({
    # version control and our own workspace
    ".git", ".hg", ".svn", ".codehop",
    # tool state and caches
    "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".tox", ".idea", ".vscode",
    # installed dependencies and vendored copies
    "node_modules", ".venv", "venv", "site-packages", "vendor", "vendored", "_vendor",
    "third_party", "thirdparty",
    # build output
    "dist", "build", "target",
})


def skipped_dir(name: str) -> bool:
    """True for a directory name the walker never enters, whatever .gitignore says."""
    return name in SKIP_DIRS or name.startswith(".") or name.endswith(".egg-info")


def _gitignore(directory: Path):
    path = directory / ".gitignore"
    if not path.is_file():
        return None
    import pathspec

    try:
        return pathspec.GitIgnoreSpec.from_lines(path.read_text(errors="replace").splitlines())
    except (OSError, ValueError):
        return None  # an unreadable or malformed .gitignore hides nothing


def walk_tree(root: Path) -> Iterator[tuple[Path, str]]:
    """(path, POSIX path relative to `root`) of every file the walker keeps, sorted per directory.

    Args:
        root: a directory.
    Returns:
        An iterator; directories are pruned before they are entered, so an ignored
        node_modules costs one name check, not a walk.
    """
    root = Path(root)
    specs: list[tuple[str, object]] = []  # (directory prefix relative to root, its spec)
    for directory, subdirs, files in os.walk(root):
        here = Path(directory)
        prefix = here.relative_to(root).as_posix()
        prefix = "" if prefix == "." else prefix + "/"
        specs = [(base, spec) for base, spec in specs if prefix.startswith(base)]
        spec = _gitignore(here)
        if spec is not None:
            specs.append((prefix, spec))

        def ignored(relative: str, is_dir: bool) -> bool:
            suffix = "/" if is_dir else ""
            return any(spec.match_file(relative[len(base):] + suffix) for base, spec in specs)

        subdirs[:] = sorted(d for d in subdirs
                            if not skipped_dir(d) and not ignored(prefix + d, True))
        for name in sorted(files):
            if not name.startswith(".") and not ignored(prefix + name, False):
                yield here / name, prefix + name


def walk(paths: list[Path]) -> Iterator[Path]:
    """Every file under `paths`: a file as given (even an ignored one), a directory through
    `walk_tree`."""
    for root in paths:
        root = Path(root)
        if root.is_file():
            yield root
            continue
        for path, _ in walk_tree(root):
            yield path
