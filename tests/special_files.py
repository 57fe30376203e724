"""Special files for the tests that walk trees: a FIFO, a unix socket and a device node."""

from __future__ import annotations

import os
import socket
import stat
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def special_files(directory: Path, suffix: str = ".txt"):
    """Create fifo<suffix>, sock<suffix> and (where this user may) null<suffix>, a character
    device like /dev/null, in `directory`; yields the reasons the walker must give for each.
    The socket is bound while the block runs (its file stays after it is closed)."""
    directory = Path(directory)
    os.mkfifo(directory / f"fifo{suffix}")
    expected = {f"fifo{suffix}": "not a regular file (FIFO)", f"sock{suffix}": "not a regular file (socket)"}
    server = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    os.chdir(directory)  # bind by a relative name: a deep tmp_path can pass AF_UNIX's 108 bytes
    try:
        server.bind(f"sock{suffix}")
    finally:
        os.chdir(cwd)
    try:  # root (CI) may create one; a user or a container without CAP_MKNOD may not
        os.mknod(directory / f"null{suffix}", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        expected[f"null{suffix}"] = "not a regular file (character device)"
    except PermissionError:
        pass
    try:
        yield expected
    finally:
        server.close()
