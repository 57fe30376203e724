"""The one tree walker: which files under a directory are sources worth indexing.

Collections (`Collection.add_paths`, the REST file jobs) and repository indexes
(`code_tools.repo.iter_repo_files`) both walk with it, so they leave out the same things:

- hidden files and directories (".git", ".codehop", ".env", ...);
- directories of tooling state, dependencies, vendored code and build output (SKIP_DIRS,
  plus any "*.egg-info");
- whatever the .gitignore files along the way exclude. Each .gitignore applies below its own
  directory, with git's matching rules (pathspec's GitIgnoreSpec); a nested one adds to its
  parents' patterns ("!" re-includes only what its own file excluded);
- the patterns of `WalkConfig.exclude`, and generated artefacts by name (index.generated:
  lock files, minified assets, result data in benchmark folders) unless `WalkConfig.include`
  names them;
- anything that is not a regular file (FIFO, socket, device: opening one can block forever),
  and any symbolic link whose target lies outside the walked roots, is dangling, or points
  into a hidden or skipped directory. Links are resolved and checked before anything is
  opened; the walker yields the resolved path, so a file is only ever read where it really
  lies. Links to directories are not followed (a target inside the root is walked where it
  lies). Each of these is reported through `on_skip(path, reason)`, as are generated files.

Example: with "build/" in the root .gitignore and "gen.py" in pkg/.gitignore, the tree
{a.py, build/x.py, pkg/gen.py, pkg/b.py, other/gen.py, node_modules/m.js, uv.lock,
key -> ~/.ssh/id_rsa} walks to ["a.py", "other/gen.py", "pkg/b.py"], reporting uv.lock
(generated artefact) and key (link outside the indexed directories).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from index.files import regular_file_reason
from index.generated import GENERATED_PATTERNS

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

# Reasons given to `on_skip`; the CLI groups its summary by them.
LINK_OUTSIDE = "link to a path outside the indexed directories"
LINK_DIR_OUTSIDE = "link to a directory outside the indexed directories"
LINK_HIDDEN = "link into a hidden, dependency or build directory"
LINK_DANGLING = "dangling link"
LINK_LOOP = "link loop"
GENERATED = "generated artefact"
LINK_REASONS = (LINK_OUTSIDE, LINK_DIR_OUTSIDE, LINK_HIDDEN, LINK_DANGLING, LINK_LOOP)

OnSkip = Callable[[Path, str], None]


@dataclass(frozen=True)
class WalkConfig:
    """What a directory walk leaves out beyond hidden entries, SKIP_DIRS and .gitignore files.

    Args:
        exclude: more patterns to leave out, in .gitignore syntax, matched against paths
            relative to each walked directory (e.g. "docs/benchmarks/", "*.csv"; "!" re-admits
            what an earlier pattern of this list excluded).
        include: patterns of files to keep although a generated-artefact rule would leave
            them out (e.g. "uv.lock", "data/results/*.json"). They never re-admit hidden,
            ignored or excluded entries, links out of the roots or special files.
        skip_generated: apply index.generated's rules (by name here, by content when a
            collection reads the file).
    """

    exclude: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    skip_generated: bool = True

    def __post_init__(self) -> None:
        # A config read back from JSON holds lists; the dataclass promises tuples.
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "include", tuple(self.include))

    def included(self, relative: str) -> bool:
        """True when `include` keeps this path (relative to the walked directory)."""
        return bool(self.include) and _spec(self.include).match_file(relative)


def skipped_dir(name: str) -> bool:
    """True for a directory name the walker never enters, whatever .gitignore says."""
    return name in SKIP_DIRS or name.startswith(".") or name.endswith(".egg-info")


@functools.lru_cache(maxsize=32)
def _spec(lines: tuple[str, ...]):
    import pathspec

    return pathspec.GitIgnoreSpec.from_lines(list(lines))


def _gitignore(directory: Path):
    path = directory / ".gitignore"
    if not path.is_file():
        return None
    try:
        return _spec(tuple(path.read_text(errors="replace").splitlines()))
    except (OSError, ValueError):
        return None  # an unreadable or malformed .gitignore hides nothing


def _inside(target: Path, roots: list[Path]) -> Path | None:
    """The root that holds `target` (a resolved path), or None."""
    return next((r for r in roots if target == r or target.is_relative_to(r)), None)


def _link_target(link: Path, roots: list[Path]) -> tuple[Path | None, str]:
    """(resolved target, "") of a link that stays inside `roots`, else (None, reason)."""
    try:
        target = link.resolve(strict=True)
    except FileNotFoundError:
        return None, LINK_DANGLING
    except (RuntimeError, OSError):  # RuntimeError up to Python 3.12, OSError(ELOOP) after
        return None, LINK_LOOP
    root = _inside(target, roots)
    if root is None:
        return None, LINK_DIR_OUTSIDE if target.is_dir() else LINK_OUTSIDE
    parts = target.relative_to(root).parts
    if any(skipped_dir(part) for part in parts[:-1]) or (parts and parts[-1].startswith(".")):
        return None, LINK_HIDDEN
    return target, ""


def _admit(path: Path, roots: list[Path]) -> tuple[Path | None, str]:
    """(resolved path, "") of a regular file the walk may yield, else (None, reason)."""
    if path.is_symlink():
        target, reason = _link_target(path, roots)
        if target is None:
            return None, reason
        path = target
    reason = regular_file_reason(path)
    return (path, "") if not reason else (None, reason)


def walk_tree(root: Path, config: WalkConfig = WalkConfig(), on_skip: OnSkip | None = None,
              within: list[Path] | None = None) -> Iterator[tuple[Path, str]]:
    """(resolved path, POSIX path relative to `root`) of every file the walker keeps, sorted
    per directory.

    Args:
        root: a directory.
        config: extra excludes and re-includes (WalkConfig).
        on_skip: called with (path, reason) for each file left out for a reason a user may
            not expect (special file, link out of the roots, generated artefact).
        within: directories (or files) a link may point into; default: `root` itself.
    Returns:
        An iterator; directories are pruned before they are entered, so an ignored
        node_modules costs one name check, not a walk.
    """
    root = Path(root)
    roots = [Path(r).resolve() for r in (within or [root])]
    skip = on_skip or (lambda path, reason: None)
    exclude = _spec(config.exclude) if config.exclude else None
    generated = _spec(GENERATED_PATTERNS) if config.skip_generated else None
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
            return (any(spec.match_file(relative[len(base):] + suffix) for base, spec in specs)
                    or (exclude is not None and exclude.match_file(relative + suffix)))

        kept = []
        for name in sorted(subdirs):
            if skipped_dir(name) or ignored(prefix + name, True):
                continue
            if (here / name).is_symlink():  # os.walk does not follow it; say so if it leads out
                target, reason = _link_target(here / name, roots)
                if target is None:
                    skip(here / name, reason)
                continue
            kept.append(name)
        subdirs[:] = kept
        for name in sorted(files):
            relative = prefix + name
            if name.startswith(".") or ignored(relative, False):
                continue
            if generated is not None and generated.match_file(relative) and not config.included(relative):
                skip(here / name, GENERATED)
                continue
            path, reason = _admit(here / name, roots)
            if path is None:
                skip(here / name, reason)
                continue
            yield path, relative


def walk(paths: list[Path], config: WalkConfig = WalkConfig(), on_skip: OnSkip | None = None,
         within: list[Path] | None = None) -> Iterator[Path]:
    """The resolved path of every file under `paths`: a file as given (even an ignored one,
    or a link: naming it is a choice), a directory through `walk_tree`, whose links may point
    into any of `within` (default: any of `paths`)."""
    within = list(within) if within is not None else [Path(p) for p in paths]
    for root in paths:
        root = Path(root)
        if root.is_dir():
            for path, _ in walk_tree(root, config, on_skip, within):
                yield path
            continue
        reason = regular_file_reason(root)
        if reason:
            if on_skip is not None:
                on_skip(root, reason)
            continue
        yield root.resolve()
