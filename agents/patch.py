"""Apply a unified diff to files under a root, all or nothing.

The agent finishes with a patch; we check that it applies cleanly before reporting success.
unidiff parses the diff; each hunk's context and removed lines must match the file exactly
(at the stated line, or within a small offset as `patch` allows), otherwise nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runtime.errors import InvalidInputError

MAX_OFFSET = 20  # lines a hunk may have drifted from its stated position


@dataclass(frozen=True)
class PatchResult:
    files: tuple[str, ...]
    hunks: int


def _strip_prefix(name: str) -> str:
    name = name.split("\t")[0].strip()
    if name.startswith(("a/", "b/")):
        name = name[2:]
    return name


def _inside(root: Path, relative: str) -> Path:
    target = (root / relative).resolve()
    if not target.is_relative_to(root.resolve()):
        raise InvalidInputError(f"patch touches {relative!r}, which is outside the repository")
    return target


def _apply_hunk(lines: list[str], hunk, path: str) -> list[str]:
    before = [line.value for line in hunk if line.is_context or line.is_removed]
    after = [line.value for line in hunk if line.is_context or line.is_added]
    stated = max(hunk.source_start - 1, 0)
    for offset in sorted(range(-MAX_OFFSET, MAX_OFFSET + 1), key=abs):
        start = stated + offset
        if 0 <= start <= len(lines) - len(before) and lines[start : start + len(before)] == before:
            return lines[:start] + after + lines[start + len(before) :]
    raise InvalidInputError(
        f"patch does not apply to {path}: hunk @@ -{hunk.source_start},{hunk.source_length} @@ "
        "does not match the file's current lines"
    )


def apply_patch(root: Path, diff: str, dry_run: bool = False) -> PatchResult:
    """Apply `diff` under `root`; with dry_run only check. Raises InvalidInputError on mismatch."""
    from unidiff import PatchSet
    from unidiff.errors import UnidiffParseError

    if not diff.strip():
        raise InvalidInputError("empty patch")
    text = diff if diff.endswith("\n") else diff + "\n"
    try:
        patch = PatchSet(text)
    except UnidiffParseError as error:
        raise InvalidInputError(f"malformed unified diff: {error}") from error
    if not len(patch):
        raise InvalidInputError("no file changes found in the patch (expected ---/+++ headers)")
    new_contents: dict[Path, str | None] = {}
    hunks = 0
    for patched in patch:
        if patched.is_added_file:
            relative = _strip_prefix(patched.target_file)
        else:
            relative = _strip_prefix(patched.source_file)
        target = _inside(root, relative)
        if patched.is_removed_file:
            new_contents[target] = None
            continue
        original = "" if patched.is_added_file else _read(target, relative)
        lines = original.splitlines(keepends=True)
        for hunk in patched:
            lines = _apply_hunk(lines, hunk, relative)
            hunks += 1
        new_contents[target] = "".join(lines)
    if not dry_run:
        for target, content in new_contents.items():
            if content is None:
                target.unlink(missing_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content)
    files = tuple(str(t.relative_to(root.resolve())) for t in new_contents)
    return PatchResult(files=files, hunks=hunks)


def _read(target: Path, relative: str) -> str:
    try:
        return target.read_text()
    except FileNotFoundError as error:
        raise InvalidInputError(f"patch modifies {relative}, which does not exist") from error
