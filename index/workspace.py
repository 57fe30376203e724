"""A workspace directory (`.codehop/` by default): created once, invisible to version control.

A workspace holds what codehop can rebuild from the sources: the sqlite store of chunks, the
BM25 and dense index generations, the vector cache, the code index and small state files
(reservoir, RAPID calibration). Converted models are not in it: they live in the machine's
model cache (runtime.model_cache). None of it belongs in a commit, so a new workspace gets a
`.gitignore` holding `*` (git then ignores the folder and that file itself, as Python's venv
does): a project's Source Control view never lists it, whatever the project's own ignores say.
"""

from __future__ import annotations

from pathlib import Path

GITIGNORE = "# Written by codehop: everything here is rebuilt by `codehop index`.\n*\n"


def ensure_workspace(directory: str | Path) -> Path:
    """`directory`, created if missing; a new (or empty) one gets its `.gitignore` (`*`).

    An existing workspace is left as it is: a `.gitignore` its owner removed stays removed.
    """
    directory = Path(directory).expanduser()
    fresh = not directory.exists() or not any(directory.iterdir())
    directory.mkdir(parents=True, exist_ok=True)
    if fresh:
        try:
            with open(directory / ".gitignore", "x", encoding="utf-8") as handle:
                handle.write(GITIGNORE)
        except FileExistsError:  # another process created the workspace at the same moment
            pass
    return directory
