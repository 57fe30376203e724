"""Atomic file writes: a reader sees the old file or the new one, never half of one.

`atomic_write(final, write)` lets `write` fill a temp file beside `final`, fsyncs it and renames
it into place (a rename within one directory is atomic on POSIX). A failed write leaves `final`
untouched and removes the temp file. Example::

    atomic_write(directory / "meta.json", lambda path: Path(path).write_text(json.dumps(meta)))
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable

import numpy as np


def atomic_write(final: Path, write: Callable[[str], None]) -> None:
    """Write `final` through `write(temp_path)`, fsync, then rename into place."""
    final = Path(final)
    temp = final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        write(str(temp))
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Uncompressed .npz (np.load reads it back without pickle)."""
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def write_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
