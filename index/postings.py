"""SPANN's on-disk postings: one file, every posting page-aligned, one contiguous read each.

Entry = int32 row + the vector (float32, float16 or int8 scaled by 127; vectors are unit length).
Metadata per posting (start page, entry count, capacity in entries) lives in memory. A posting
owns `pages` whole 4 KiB pages starting at `start_page`, so `read(p)` is one slice of the mmap.
Appends write into the slack of the last page(s); a posting that outgrows its pages moves to the
end of the file (still one contiguous region). The file is a private working copy: an index
loaded from a saved directory copies it before the first write, so saved generations stay
immutable.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np

from index.atomic import atomic_write

PAGE = 4096
PRECISIONS = ("float32", "float16", "int8")


def entry_dtype(dim: int, precision: str) -> np.dtype:
    return np.dtype([("row", "<i4"), ("vec", {"float32": "<f4", "float16": "<f2", "int8": "i1"}[precision], (dim,))])


def encode(vectors: np.ndarray, precision: str) -> np.ndarray:
    if precision == "int8":
        return np.clip(np.rint(vectors * 127.0), -127, 127).astype(np.int8)
    return vectors.astype(precision)


def decode(stored: np.ndarray, precision: str) -> np.ndarray:
    if precision == "int8":
        return stored.astype(np.float32) * (1.0 / 127.0)
    return stored.astype(np.float32, copy=False)


class PostingFile:
    """Page-aligned postings in one file + in-memory (start_page, count, capacity) per posting."""

    def __init__(self, dim: int, precision: str, path: Path | None = None, writable: bool = True) -> None:
        self.dim, self.precision = dim, precision
        self.dtype = entry_dtype(dim, precision)
        self.start_page = np.zeros(0, dtype=np.int64)
        self.count = np.zeros(0, dtype=np.int64)
        self.capacity = np.zeros(0, dtype=np.int64)
        self.n_pages = 0
        self._tmpdir: str | None = None
        if path is None:
            self._new_working_file()
        else:
            self.path = Path(path)
        self.writable = writable
        self._map: np.memmap | None = None

    def _new_working_file(self) -> None:
        self._tmpdir = tempfile.mkdtemp(prefix="codehop-spann-")
        weakref.finalize(self, shutil.rmtree, self._tmpdir, True)
        self.path = Path(self._tmpdir) / "postings.bin"
        self.path.touch()

    def _make_writable(self) -> None:
        """Copy-on-write: never modify a file that belongs to a saved index directory."""
        if self.writable:
            return
        source = self.path
        self._new_working_file()
        shutil.copyfile(source, self.path)
        self.writable, self._map = True, None

    def pages_for(self, entries: int) -> int:
        return max(1, -(-entries * self.dtype.itemsize // PAGE))

    def _mmap(self) -> np.memmap | None:
        if self._map is None and self.n_pages:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(self.n_pages * PAGE,))
        return self._map

    def read(self, posting: int) -> np.ndarray:
        """Entries of one posting: a single contiguous slice of the mapped file (structured)."""
        start, n = int(self.start_page[posting]) * PAGE, int(self.count[posting])
        return self._mmap()[start : start + n * self.dtype.itemsize].view(self.dtype)

    def write_all(self, postings: list[tuple[np.ndarray, np.ndarray]], slack: float = 0.0) -> None:
        """Lay out every posting from scratch: list of (rows int32, vectors float32)."""
        self._make_writable()
        counts = np.array([len(r) for r, _ in postings], dtype=np.int64)
        pages = np.array([self.pages_for(int(c * (1 + slack)) + 1 if slack else int(c)) for c in counts], dtype=np.int64)
        self.start_page = np.concatenate([[0], np.cumsum(pages)[:-1]]).astype(np.int64)
        self.count = counts
        self.capacity = pages * PAGE // self.dtype.itemsize
        self.n_pages = int(pages.sum())
        buffer = np.zeros(self.n_pages * PAGE, dtype=np.uint8)
        for p, (rows, vectors) in enumerate(postings):
            if len(rows):
                entries = np.zeros(len(rows), dtype=self.dtype)
                entries["row"], entries["vec"] = rows, encode(vectors, self.precision)
                start = int(self.start_page[p]) * PAGE
                buffer[start : start + entries.nbytes] = entries.view(np.uint8)
        self._map = None
        with open(self.path, "wb") as handle:
            handle.write(buffer.tobytes())

    def put(self, posting: int, rows: np.ndarray, vectors: np.ndarray, append: bool) -> None:
        """Append to (or overwrite) one posting; relocate it to the file's end if it outgrows its pages."""
        self._make_writable()
        entries = np.zeros(len(rows), dtype=self.dtype)
        entries["row"], entries["vec"] = rows, encode(vectors, self.precision)
        if posting == len(self.count):  # a new posting (after a split)
            self.start_page = np.append(self.start_page, self.n_pages)
            self.count = np.append(self.count, 0)
            self.capacity = np.append(self.capacity, 0)
        if append:
            old = self.read(posting).copy() if self.count[posting] else np.zeros(0, dtype=self.dtype)
            entries = np.concatenate([old, entries])
        self._map = None
        if len(entries) > self.capacity[posting]:
            pages = self.pages_for(2 * len(entries))  # room to grow again
            self.start_page[posting], self.n_pages = self.n_pages, self.n_pages + pages
            self.capacity[posting] = pages * PAGE // self.dtype.itemsize
            with open(self.path, "r+b") as handle:
                handle.truncate(self.n_pages * PAGE)
        with open(self.path, "r+b") as handle:
            handle.seek(int(self.start_page[posting]) * PAGE)
            handle.write(entries.tobytes())
        self.count[posting] = len(entries)

    def save(self, directory: Path, name: str) -> None:
        """Copy the page-aligned file into `directory` (temp + fsync + rename)."""

        def copy(temp: str) -> None:
            with open(self.path, "rb") as source, open(temp, "wb") as target:
                shutil.copyfileobj(source, target, 1 << 22)
                target.truncate(self.n_pages * PAGE)

        atomic_write(directory / name, copy)
        if not self.writable:  # follow the newest saved copy: the caller may delete older ones
            self.path, self._map = directory / name, None
