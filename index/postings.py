"""SPANN's on-disk postings: one file, every posting page-aligned, one contiguous read each.

Entry = int32 row + the vector (float32, float16 or int8 scaled by 127; vectors are unit length).
Metadata per posting (start page, entry count, capacity in entries) lives in memory. A posting
owns `pages` whole 4 KiB pages starting at `start_page`, so `read(p)` is one slice of the mmap.
Appends write into the slack of the last page(s); a posting that outgrows its pages moves to the
end of the file (still one contiguous region). The file is a private working copy: an index
loaded from a saved directory copies it before the first write, so saved generations stay
immutable. Working copies live in `codehop-spann-<pid>-*` temp directories; one whose process
is gone (killed with -9, so no finaliser ran) is removed when the next one is made.

Search scans postings in native code (`scan`, numba): one call per query batch, queries spread
over the cores, each posting read straight from the mapped file (no per-posting Python, no
concatenation of candidates), replicas de-duplicated inside the top-k, exact inner products
on the stored (float32 / float16 / int8) vectors. Each stored vector is read through a slice
(a slice index is known non-negative, so LLVM vectorises the dot product; a flat `arr[off + t]`
carries numba's negative-index wraparound and did not vectorise: 0.36 ms vs 0.12 ms for ~870
float16 entries), and float16 is widened by bit arithmetic (vectorises) instead of a 256 KiB
lookup table (a gather per element). The scan also asks the CPU to fetch the entry two ahead
(a hardware prefetcher stops at every 4 KiB page boundary: 0.125 -> 0.091 ms for ~870 entries).
`prefetch` issues its madvise calls from native code too.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import shutil
import tempfile
import threading
import time
import weakref
from pathlib import Path

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from index.atomic import atomic_write

PAGE = 4096
_NEVER = -(1 << 62)  # "advised at" of a posting never advised on the current mapping
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
        self._advised_ms = np.zeros(0, dtype=np.int64)  # per posting: when prefetch last advised it (ms)

    def _new_working_file(self) -> None:
        clean_stale_working_dirs()
        self._tmpdir = tempfile.mkdtemp(prefix=f"codehop-spann-{os.getpid()}-")
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
            self._advised_ms = np.full(len(self.count), _NEVER, dtype=np.int64)  # a new mapping: no advice yet
            self._base = np.asarray(self._map).ctypes.data  # its address, for madvise
        return self._map

    def prefetch(self, postings: np.ndarray, recent_s: float = 10.0) -> None:
        """madvise(WILLNEED) the pages of `postings` (-1 = skip) so a cold read of several lists
        overlaps; one native call (the Python loop of madvise calls cost ~40 us per warm query).

        A posting advised less than `recent_s` seconds ago on this mapping is skipped: its pages
        were just read, and each madvise walks the posting's ~23 cached pages in the kernel (8-16
        calls were ~0.03 ms of a 0.4 ms warm query at 1M). Should the kernel evict it sooner, the
        read is still correct, only not overlapped. `drop_cache` (and any change to the file)
        remaps, which forgets every advice."""
        mapped = self._mmap()
        if mapped is None:
            return
        postings = np.ascontiguousarray(postings, np.int64).ravel()
        if len(self._advised_ms) != len(self.count):  # postings added since the mapping was made
            self._advised_ms = np.full(len(self.count), _NEVER, dtype=np.int64)
        if _MADVISE is None:  # no libc madvise (not Linux): the mmap module's, one call per posting
            if hasattr(mmap, "MADV_WILLNEED"):
                for p in np.unique(postings[postings >= 0]):
                    if self.count[p]:
                        length = int(self.count[p]) * self.dtype.itemsize
                        mapped._mmap.madvise(mmap.MADV_WILLNEED, int(self.start_page[p]) * PAGE, -(-length // PAGE) * PAGE)
            return
        _prefetch(self._base, self.start_page, self.count, self.dtype.itemsize, postings,
                  self._advised_ms, time.monotonic_ns() // 1_000_000, int(recent_s * 1000))

    def drop_cache(self) -> None:
        """Evict this file from the page cache (benchmarks' cold reads): unmap, then fadvise."""
        self._map = None
        if hasattr(os, "posix_fadvise") and self.path.exists():
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def scan(self, queries: np.ndarray, probe: np.ndarray, head_rows: np.ndarray, head_vecs: np.ndarray,
             alive: np.ndarray, k: int, all_alive: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (rows, inner products) per query over the heads in `probe` (nq, H; -1 = skip)
        and their postings, replicas de-duplicated; rows -1 pad short results.

        `all_alive` (computed when None) says no row is tombstoned: the scan then skips the
        per-entry lookup in `alive`, a random read into n bytes that stalled every entry (1 MB at
        1M rows: 0.205 -> 0.121 ms for ~1,080 entries); otherwise the next entry's flag is
        prefetched while the current one is scored."""
        if all_alive is None:
            all_alive = bool(np.all(alive))
        mapped = self._mmap()
        raw = np.asarray(mapped) if mapped is not None else np.zeros(PAGE, np.uint8)
        f32 = raw.view(np.float32) if self.precision == "float32" else _EMPTY_F32
        u16 = raw.view(np.uint16) if self.precision == "float16" else _EMPTY_U16
        i8 = raw.view(np.int8) if self.precision == "int8" else _EMPTY_I8
        return _scan(raw, f32, u16, i8, PRECISIONS.index(self.precision), self.dtype.itemsize,
                     self.dim, self.start_page, self.count, np.ascontiguousarray(probe, np.int64),
                     np.ascontiguousarray(queries, np.float32), np.ascontiguousarray(head_rows, np.int64),
                     np.ascontiguousarray(head_vecs, np.float32), np.ascontiguousarray(alive, np.bool_),
                     bool(all_alive), int(k))

    def read(self, posting: int) -> np.ndarray:
        """Entries of one posting: a single contiguous slice of the mapped file (structured)."""
        start, n = int(self.start_page[posting]) * PAGE, int(self.count[posting])
        return self._mmap()[start : start + n * self.dtype.itemsize].view(self.dtype)

    def write_all(self, groups: list[np.ndarray], vectors: np.ndarray, slack: float = 0.0) -> None:
        """Lay out every posting from scratch, streaming: posting p holds rows `groups[p]`
        (indices into `vectors`, which are also the stored row numbers)."""
        self._make_writable()
        counts = np.array([len(g) for g in groups], dtype=np.int64)
        pages = np.array([self.pages_for(int(c * (1 + slack)) + 1 if slack else int(c)) for c in counts], dtype=np.int64)
        self.start_page = np.concatenate([[0], np.cumsum(pages)[:-1]]).astype(np.int64)
        self.count = counts
        self.capacity = pages * PAGE // self.dtype.itemsize
        self.n_pages = int(pages.sum())
        self._map = None
        with open(self.path, "wb", buffering=1 << 22) as handle:
            for group, n_pages in zip(groups, pages):
                entries = np.zeros(len(group), dtype=self.dtype)
                entries["row"], entries["vec"] = group, encode(vectors[group], self.precision)
                handle.write(entries.tobytes())
                handle.write(bytes(int(n_pages) * PAGE - entries.nbytes))

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


def clean_stale_working_dirs(root: str | None = None) -> list[str]:
    """Remove `codehop-spann-<pid>-*` working directories whose process no longer runs."""
    root = root or tempfile.gettempdir()
    removed = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        parts = name.split("-")
        if not name.startswith("codehop-spann-") or len(parts) < 4 or not parts[2].isdigit():
            continue
        pid = int(parts[2])
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue  # alive (or someone else's process: PermissionError below)
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        removed.append(name)
    return removed


_EMPTY_F32, _EMPTY_U16, _EMPTY_I8 = np.zeros(1, np.float32), np.zeros(1, np.uint16), np.zeros(1, np.int8)
for _empty in (_EMPTY_F32, _EMPTY_U16, _EMPTY_I8):  # read-only like the mapped views: one jitted
    _empty.flags.writeable = False                  # specialisation serves every precision


def _libc_madvise():
    """libc's madvise as a ctypes function numba can call, or None where there is none."""
    if not hasattr(mmap, "MADV_WILLNEED"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = (ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int), ctypes.c_int  # address as an integer
    return fn


_MADVISE = _libc_madvise()
_WILLNEED = int(getattr(mmap, "MADV_WILLNEED", 3))
_HUGE = 2 << 20


def advise_huge_pages(array: np.ndarray) -> bool:
    """Back the 2 MiB-aligned interior of `array`'s memory with transparent huge pages now
    (madvise HUGEPAGE, then COLLAPSE: Linux >= 6.1; a no-op returning False elsewhere).

    For SPANN's in-memory heads: an HNSW search reads ~600 random 1.5 KiB head vectors per query
    from 92 MB at 60,000 heads, and with 4 KiB pages nearly every read is a TLB miss (measured
    at 1M vectors, caches disturbed between queries: efSearch 16 0.25 -> 0.22 ms, 64 0.71 -> 0.57 ms)."""
    if _MADVISE is None or not array.flags.c_contiguous or array.nbytes < 2 * _HUGE:
        return False
    start = -(-array.ctypes.data // _HUGE) * _HUGE
    end = (array.ctypes.data + array.nbytes) // _HUGE * _HUGE
    if end <= start:
        return False
    hugepage, collapse = int(getattr(mmap, "MADV_HUGEPAGE", 14)), int(getattr(mmap, "MADV_COLLAPSE", 25))
    return _MADVISE(start, end - start, hugepage) == 0 and _MADVISE(start, end - start, collapse) == 0


# numba's default (workqueue) threading layer aborts the process when two Python threads launch
# parallel kernels at once (a search batch while a commit rebuilds): one launch at a time.
PARALLEL_KERNELS = threading.Lock()


@intrinsic
def _cache_prefetch(typingctx, array, index):
    """Hint the CPU to load the cache line holding array[index] (LLVM's llvm.prefetch: read,
    high locality). A hint only: an address past the array's end is never dereferenced."""

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        byte_ptr = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = builder.module.declare_intrinsic(
            "llvm.prefetch", fnty=ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32]))
        address = builder.bitcast(builder.gep(data, [args[1]]), byte_ptr)
        builder.call(fn, [address, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(array, index), codegen


if _MADVISE is not None:
    # libc's madvise by symbol name, not through the ctypes pointer: a kernel that calls a
    # function pointer cannot be cached, and its JIT cost every process ~0.3 s on its first query
    _madvise_symbol = types.ExternalFunction("madvise", types.int32(types.uintp, types.uintp, types.int32))

    @njit(cache=True)
    def _prefetch(base, start_page, count, itemsize, postings, advised_ms, now_ms, recent_ms):  # pragma: no cover (jit)
        """madvise(WILLNEED) the pages of each posting not advised within `recent_ms`."""
        for p in postings:
            if p >= 0 and count[p] > 0 and now_ms - advised_ms[p] >= recent_ms:
                length = (count[p] * itemsize + PAGE - 1) // PAGE * PAGE
                _madvise_symbol(base + start_page[p] * PAGE, length, _WILLNEED)
                advised_ms[p] = now_ms


def _scan(raw, f32, u16, i8, precision, itemsize, dim, start_page, count, probe, queries,
          head_rows, head_vecs, alive, all_alive, k):
    """Batches spread over the cores; a single query (or two) runs serially (no thread launch)."""
    nq = probe.shape[0]
    out_rows = np.full((nq, k), -1, np.int64)
    out_scores = np.full((nq, k), -np.inf, np.float32)
    args = (raw, f32, u16, i8, precision, itemsize, dim, start_page, count, probe, queries,
            head_rows, head_vecs, alive, all_alive, out_rows, out_scores)
    if nq > 2:
        with PARALLEL_KERNELS:
            _scan_parallel(*args)
    else:
        _scan_serial(*args)
    return out_rows, out_scores


@njit(cache=True, inline="always")
def _row(raw, o):  # pragma: no cover (jit)
    """The little-endian int32 row number of the entry at byte `o`."""
    return np.int64(raw[o]) | (np.int64(raw[o + 1]) << 8) | (np.int64(raw[o + 2]) << 16) | (np.int64(raw[o + 3]) << 24)


@njit(fastmath=True, cache=True, inline="always")
def _scan_query(qi, raw, f32, u16, i8, precision, itemsize, dim, start_page, count, probe,
                queries, head_rows, head_vecs, alive, all_alive, out_rows, out_scores):  # pragma: no cover (jit)
    """One query: score each probed head and every entry of its posting, keep the top k in a
    sorted array; a row already kept (a replica) is skipped.

    float16 is widened exactly by bit arithmetic: sign and exponent+mantissa shifted into place
    (`(h & 0x7fff) << 13 | (h & 0x8000) << 16`) give the value times 2^-112 as a float32 (half
    subnormals become float32 subnormals, also exact), so the query is scaled by 2^112 instead.
    Inf/NaN halves never occur (vectors are unit length)."""
    nh = probe.shape[1]
    k = out_rows.shape[1]
    q = queries[qi]
    rows = out_rows[qi]
    scores = out_scores[qi]
    kept = 0
    q_scaled = q * np.float32(2.0 ** 112)
    bits = np.empty(dim, np.uint32)
    widened = bits.view(np.float32)
    for hj in range(nh):
        p = probe[qi, hj]
        if p < 0:
            continue
        for e in range(count[p] + 1):
            if e == 0:  # the head itself (in memory)
                r = head_rows[p]
                if not all_alive and not alive[r]:
                    continue
                s = np.float32(0.0)
                for t in range(dim):
                    s += head_vecs[p, t] * q[t]
            else:
                o = start_page[p] * PAGE + (e - 1) * itemsize
                for b in range(0, itemsize, 64):  # two entries ahead (see the module docstring)
                    _cache_prefetch(raw, o + 2 * itemsize + b)
                r = _row(raw, o)
                if not all_alive:
                    if e < count[p]:  # the next entry's flag, while this one is scored
                        _cache_prefetch(alive, _row(raw, o + itemsize))
                    if not alive[r]:
                        continue
                s = np.float32(0.0)
                if precision == 0:
                    v32 = f32[(o + 4) // 4 : (o + 4) // 4 + dim]
                    for t in range(dim):
                        s += v32[t] * q[t]
                elif precision == 1:
                    v16 = u16[(o + 4) // 2 : (o + 4) // 2 + dim]
                    for t in range(dim):
                        h = np.uint32(v16[t])
                        bits[t] = ((h & np.uint32(0x7FFF)) << np.uint32(13)) | ((h & np.uint32(0x8000)) << np.uint32(16))
                    for t in range(dim):
                        s += widened[t] * q_scaled[t]
                else:
                    v8 = i8[o + 4 : o + 4 + dim]
                    for t in range(dim):
                        s += np.float32(v8[t]) * q[t]
                    s *= np.float32(1.0 / 127.0)
            if kept == k and s <= scores[k - 1]:
                continue
            dup = False
            for j in range(kept):
                if rows[j] == r:
                    dup = True
                    break
            if dup:
                continue
            pos = kept if kept < k else k - 1
            while pos > 0 and scores[pos - 1] < s:
                scores[pos] = scores[pos - 1]
                rows[pos] = rows[pos - 1]
                pos -= 1
            scores[pos] = s
            rows[pos] = r
            if kept < k:
                kept += 1


@njit(parallel=True, fastmath=True, cache=True)
def _scan_parallel(raw, f32, u16, i8, precision, itemsize, dim, start_page, count, probe, queries,
                   head_rows, head_vecs, alive, all_alive, out_rows, out_scores):  # pragma: no cover (jit)
    for qi in prange(probe.shape[0]):
        _scan_query(qi, raw, f32, u16, i8, precision, itemsize, dim, start_page, count, probe,
                    queries, head_rows, head_vecs, alive, all_alive, out_rows, out_scores)


@njit(fastmath=True, cache=True)
def _scan_serial(raw, f32, u16, i8, precision, itemsize, dim, start_page, count, probe, queries,
                 head_rows, head_vecs, alive, all_alive, out_rows, out_scores):  # pragma: no cover (jit)
    for qi in range(probe.shape[0]):
        _scan_query(qi, raw, f32, u16, i8, precision, itemsize, dim, start_page, count, probe,
                    queries, head_rows, head_vecs, alive, all_alive, out_rows, out_scores)
