"""SPANN: heads in memory, postings on disk (Chen et al., "SPANN", NeurIPS 2021).

Build (sec. 3.2): ~12% of the vectors become heads, picked by a balanced hierarchical k-means
tree whose leaf centres snap to real vectors (index/kmeans.py); heads sit in a faiss index in
memory. Every other vector looks at its 64 nearest heads in distance order and joins head c
only if, for every head s it already joined, d(c, s) >= d(x, c) (the RNG rule, sec. 3.2.2),
at most 8 replicas. A posting keeps its nearest `posting_cap` entries (farthest dropped), except
that a vector's nearest head always keeps it, so no vector is lost (our guard; the paper accepts
the loss). Postings live page-aligned in one file (index/postings.py); metadata stays in memory.

Search (sec. 3.3): nearest `search_heads` heads (their vectors on 2 MiB pages where the kernel
allows: `postings.advise_huge_pages`), query-aware pruning drops a head whose squared
L2 distance exceeds MaxDistRatio x that of the nearest head, each surviving posting is one
contiguous read, ids are de-duplicated, candidates re-ranked exactly (inner product on the
stored vectors) and merged with the head hits. The scan is native and batched
(`PostingFile.scan`: numba, queries spread over the cores, replicas de-duplicated in the top-k).

Deviation (pruning): the reference MaxDistRatio 8.0 prunes nothing on unit-normalised vectors
(squared L2 lies in [0, 4] and the 64th head is at most ~4x the nearest one's distance), so by
default the ratio is calibrated at build time on the data itself: a sample of the indexed
vectors serves as queries, and the ratio is the smallest one that keeps, for all but
`prune_loss` of (query, true top-10 neighbour) pairs, at least one head holding that
neighbour. A fixed `max_dist_ratio` (e.g. the reference 8.0) overrides the calibration.

Thread safety: every public method holds the index's own lock, and `build()` computes the new
heads and postings from a snapshot outside it, swapping them in under the lock, so a search
during a (re)build sees the old structure, never a half-built one.

Updates: an add routes the vector like the build did and appends it to its postings; a posting
past its cap splits in two (2-means, the second half gets a new head snapped to a real vector).
A delete is a tombstone; `rebuild()` compacts everything from scratch. Scores are inner
products (vectors are unit length, so the L2 order of heads equals the inner-product order).
"""

from __future__ import annotations

import json
import math
import threading
import weakref
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from numba import njit, prange

from index.atomic import atomic_write, write_npz
from index.dense import BuildsWhenDue, check_dim, checked_batch, checked_queries, exact_search
from runtime.errors import CorruptIndexError, InvalidInputError
from index.kmeans import balanced_kmeans, hierarchical_heads
from index.postings import PAGE, PARALLEL_KERNELS, PRECISIONS, PostingFile, advise_huge_pages, decode
from index.types import Hits

FORMAT_VERSION = 1
_META, _ARRAYS, _POSTINGS, _HEADS = "spann_meta.json", "spann_arrays.npz", "spann_postings.bin", "spann_heads.faiss"


@dataclass(frozen=True)
class SpannConfig:
    """SPANN settings; defaults are the paper's reference configuration where it has one."""

    head_ratio: float = 0.12  # heads / vectors (paper: 10-20%, reference 12%)
    branching: int = 32  # k of every balanced k-means split
    kmeans_iters: int = 8
    balance: float = 1.0  # lambda scale of the count penalty (0 = plain k-means)
    candidate_heads: int = 64  # heads considered per vector when assigning postings
    max_replicas: int = 8
    rng_factor: float = 1.0  # accept c only if rng_factor * d(c, s) >= d(x, c)
    posting_cap: int | None = None  # None: max(118, entries in 3 x 4 KiB pages)
    precision: str = "float32"  # on-disk vectors: float32 | float16 | int8
    search_heads: int = 64  # heads searched per query (paper: 32-96)
    max_dist_ratio: float | None = None  # prune heads with d > ratio * d(nearest head), squared L2;
    # None: calibrated at build (see the module docstring); the paper's reference is 8.0
    prune_loss: float = 0.005  # calibration: share of true top-10 pairs pruning may cut off
    calibration_queries: int = 256  # sampled vectors used as queries by the calibration
    head_index: str = "auto"  # flat | hnsw | auto (hnsw from 20,000 heads)
    hnsw_ef_search: int = 128  # HNSW head search breadth: max(this, search_heads) per query,
    # max(this, candidate_heads) when routing vectors (set per call, so a loaded index follows it)
    min_build: int = 512  # fewer vectors than this: exact search, no structure
    rebuild_growth: float = 2.0  # rebuild on next search/save once N grew this much (0: never)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.head_ratio <= 1:
            raise InvalidInputError(f"SpannConfig.head_ratio must be in (0, 1], got {self.head_ratio}")
        if self.precision not in PRECISIONS:
            raise InvalidInputError(f"SpannConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.head_index not in ("auto", "flat", "hnsw"):
            raise InvalidInputError(f"SpannConfig.head_index must be auto, flat or hnsw, got {self.head_index!r}")
        if min(self.branching, self.candidate_heads, self.max_replicas, self.search_heads) < 1:
            raise InvalidInputError("SpannConfig: branching, candidate_heads, max_replicas, search_heads must be >= 1")


def rng_assign(dist: np.ndarray, cand: np.ndarray, head_vecs: np.ndarray,
               max_replicas: int, rng_factor: float) -> tuple[np.ndarray, np.ndarray]:
    """SPANN's RNG posting assignment: walk each vector's candidate heads nearest first and accept
    head c only if rng_factor * d(c, s) >= d(x, c) for every head s already accepted.

    Native (numba, vectors spread over the cores): the numpy version gathered a (block, dim)
    copy of head vectors per candidate rank and replica and was the bulk of a 1M-vector build.

    Args:
        dist: (n, C) squared L2 from each vector to its candidate heads, ascending.
        cand: (n, C) head indices (-1 = none).
        head_vecs: (H, d) head vectors.

    Returns:
        (heads (n, max_replicas) int64 with -1 padding, their distances (n, max_replicas)).
    """
    with PARALLEL_KERNELS:  # see index.postings: one parallel numba launch at a time
        return _rng_assign(np.ascontiguousarray(dist, np.float32), np.ascontiguousarray(cand, np.int64),
                           np.ascontiguousarray(head_vecs, np.float32), int(max_replicas), np.float32(rng_factor))


@njit(parallel=True, fastmath=True, cache=True)
def _rng_assign(dist, cand, head_vecs, max_replicas, rng_factor):  # pragma: no cover (jit)
    n, c_max = cand.shape
    dim = head_vecs.shape[1]
    acc = np.full((n, max_replicas), -1, np.int64)
    accd = np.full((n, max_replicas), np.inf, np.float32)
    for i in prange(n):
        kept = 0
        for j in range(c_max):
            c = cand[i, j]
            if c < 0 or kept == max_replicas:
                break
            ok = True
            for r in range(kept):
                s = acc[i, r]
                dcs = np.float32(0.0)
                for t in range(dim):
                    diff = head_vecs[c, t] - head_vecs[s, t]
                    dcs += diff * diff
                if rng_factor * dcs < dist[i, j]:
                    ok = False
                    break
            if ok:
                acc[i, kept] = c
                accd[i, kept] = dist[i, j]
                kept += 1
    return acc, accd


@njit(cache=True)
def _prune(dist, heads, ratio):  # pragma: no cover (jit)
    """`SpannIndex.prune` for (nq, H) head lists (native: ten numpy passes over 8 heads cost
    ~20 us of a 0.4 ms query). A missing head (-1) counts as infinitely far."""
    nq, nh = heads.shape
    out = np.full((nq, nh), -1, np.int64)
    for i in range(nq):
        d0 = dist[i, 0] if heads[i, 0] >= 0 else np.inf
        second = d0
        if nh > 1:
            second = dist[i, 1] if heads[i, 1] >= 0 else np.inf
        reference = d0 if (d0 > 1e-6 or not np.isfinite(second)) else second
        limit = ratio * max(reference, np.float32(1e-12))
        for j in range(nh):
            if heads[i, j] >= 0 and dist[i, j] <= limit:
                out[i, j] = heads[i, j]
    return out


class SpannIndex(BuildsWhenDue):
    """SPANN memory/disk index; implements `index.dense.DenseIndex`."""

    kind = "spann"

    def __init__(self, dim: int, config: SpannConfig | None = None) -> None:
        self.dim = check_dim(dim)
        self.config = config or SpannConfig()
        self._ids = np.empty(0, dtype=np.int64)
        self._alive = np.empty(0, dtype=bool)
        self._vectors: np.ndarray | None = np.empty((0, self.dim), dtype=np.float32)  # until built
        self._built_n = 0
        self._head_rows = np.empty(0, dtype=np.int64)
        self._heads = None  # faiss index over _head_vecs (L2)
        self._postings: PostingFile | None = None
        self._ratio = 8.0  # the calibrated MaxDistRatio (set by the build)
        self._lock = threading.RLock()
        self._build_lock = threading.Lock()
        self._version = 0  # bumped by every mutation: a build's snapshot is stale when it moved
        self._ef_tag = None  # (weak reference to a head index, the efSearch last given to it)

    @property
    def _head_vecs(self) -> np.ndarray:
        """Head vectors as a zero-copy view of the faiss index's storage (no second copy in RAM)."""
        import faiss

        if self._heads is None:
            return np.empty((0, self.dim), dtype=np.float32)
        key = (id(self._heads), self._heads.ntotal)  # faiss may reallocate on add: re-view then
        if getattr(self, "_view_key", None) == key:
            return self._view
        flat = self._heads if isinstance(self._heads, faiss.IndexFlat) else faiss.downcast_index(self._heads.storage)
        self._view = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * self.dim).reshape(flat.ntotal, self.dim)
        self._view_key = key
        return self._view

    # ---- protocol ---------------------------------------------------------------------------
    @classmethod
    def create(cls, dim: int, config: SpannConfig | None = None) -> "SpannIndex":
        return cls(dim, config)

    def __len__(self) -> int:
        # cached per mutation: summing a million flags costs ~0.2 ms, twice per search
        if getattr(self, "_len_at", None) != self._version:
            self._len, self._len_at = int(self._alive.sum()), self._version
        return self._len

    @property
    def built(self) -> bool:
        return self._postings is not None

    @property
    def posting_cap(self) -> int:
        if self.config.posting_cap:
            return int(self.config.posting_cap)
        itemsize = 4 + self.dim * {"float32": 4, "float16": 2, "int8": 1}[self.config.precision]
        return max(118, 3 * PAGE // itemsize)

    @property
    def dist_ratio(self) -> float:
        """The MaxDistRatio searches use: the configured one, else the build's calibration."""
        return float(self.config.max_dist_ratio if self.config.max_dist_ratio is not None else self._ratio)

    def describe(self) -> str:
        if not self.built:
            return (f"spann: exact search over {len(self)} vectors (structure is built from "
                    f"{self.config.min_build} vectors on)")
        return (f"spann: {len(self._head_rows)} heads ({self._heads.__class__.__name__}), "
                f"{len(self)} live vectors, {self._postings.n_pages} pages of {self.config.precision} "
                f"postings, cap {self.posting_cap}, search {self.config.search_heads} heads, "
                f"MaxDistRatio {self.dist_ratio:.3g}")

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add `vectors` (n, dim) under new int64 `ids`; after the build they go straight to postings."""
        with self._lock:
            try:
                self._add(ids, vectors)
            finally:
                self._version += 1  # after the change: a cached length never sees a half-made one

    def _add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids, vectors = checked_batch("SpannIndex", ids, vectors, self.dim, self._ids[self._alive])
        first = len(self._ids)
        self._ids = np.concatenate([self._ids, ids])
        self._alive = np.concatenate([self._alive, np.ones(len(ids), dtype=bool)])
        if not self.built:
            self._vectors = np.concatenate([self._vectors, vectors])
            return
        self._insert(np.arange(first, first + len(ids), dtype=np.int64), vectors)

    def delete(self, ids: np.ndarray) -> None:
        """Tombstone ids (unknown ids are ignored); `rebuild()` reclaims their space."""
        with self._lock:
            self._alive &= ~np.isin(self._ids, np.asarray(ids, dtype=np.int64))
            self._version += 1

    def search(self, queries: np.ndarray, k: int) -> list[Hits]:
        """Top-k ids by inner product per query row, best first."""
        queries = checked_queries(queries, self.dim, k)
        self._maybe_build()
        with self._lock:
            if not len(self):
                return [Hits.empty() for _ in range(len(queries))]
            if not self.built:
                rows = np.nonzero(self._alive)[0]
                return exact_search(queries, self._vectors[rows], self._ids[rows], k)
            self._set_ef(self._heads, self.config.search_heads)
            dist, heads = self._heads.search(queries, min(self.config.search_heads, len(self._head_rows)))
            probe = self.prune(dist, heads)
            self._postings.prefetch(probe)
            rows, scores = self._postings.scan(queries, probe, self._head_rows, self._head_vecs, self._alive, k,
                                               all_alive=len(self) == len(self._alive))
            out = []
            for r, s in zip(rows, scores):
                keep = r >= 0
                out.append(Hits(self._ids[r[keep]], s[keep]))
            return out

    def prune(self, dist: np.ndarray, heads: np.ndarray) -> np.ndarray:
        """Query-aware pruning (SPANN sec. 3.3): heads (nq, H) with -1 where d > ratio x d(nearest);
        the reference is the second head when a query coincides with the first (d ~ 0)."""
        return _prune(np.ascontiguousarray(dist, np.float32), np.ascontiguousarray(heads, np.int64),
                      np.float32(self.dist_ratio))

    def save(self, directory: Path) -> None:
        """Write meta JSON, arrays, the page-aligned postings file and the head index (each atomic)."""
        self._maybe_build()
        with self._lock:
            self._save(Path(directory))

    def _save(self, directory: Path) -> None:
        import faiss

        directory.mkdir(parents=True, exist_ok=True)
        arrays = {"ids": self._ids, "alive": self._alive}
        if self.built:
            p = self._postings
            arrays.update(head_rows=self._head_rows, start_page=p.start_page,
                          count=p.count, capacity=p.capacity)
            p.save(directory, _POSTINGS)
            atomic_write(directory / _HEADS, lambda path: faiss.write_index(self._heads, path))
        else:
            arrays["vectors"] = self._vectors
        atomic_write(directory / _ARRAYS, lambda path: write_npz(path, arrays))
        meta = {"format_version": FORMAT_VERSION, "dim": self.dim, "config": asdict(self.config),
                "built": self.built, "rows": len(self._ids), "built_n": self._built_n,
                "n_pages": self._postings.n_pages if self.built else 0, "dist_ratio": self._ratio}
        atomic_write(directory / _META, lambda path: Path(path).write_text(json.dumps(meta)))

    @classmethod
    def load(cls, directory: Path) -> "SpannIndex":
        """Load what `save` wrote; CorruptIndexError when a file is missing, truncated or foreign."""
        import faiss

        directory = Path(directory)
        where = f"spann index at {directory}"
        fix = "rebuild it (codehop index --rebuild)"
        try:
            meta = json.loads((directory / _META).read_text())
            if meta.get("format_version") != FORMAT_VERSION:
                raise CorruptIndexError(f"{where} has format {meta.get('format_version')}, expected {FORMAT_VERSION}: {fix}")
            index = cls(int(meta["dim"]), SpannConfig(**meta["config"]))
            with np.load(directory / _ARRAYS) as data:
                arrays = {key: data[key] for key in data.files}
            rows = int(meta["rows"])
            if arrays["ids"].shape != (rows,) or arrays["alive"].shape != (rows,):
                raise CorruptIndexError(f"{where} is truncated (id arrays): {fix}")
            index._ids, index._alive = arrays["ids"].astype(np.int64), arrays["alive"].astype(bool)
            index._built_n = int(meta["built_n"])
            index._ratio = float(meta.get("dist_ratio", 8.0))
            if not meta["built"]:
                if arrays["vectors"].shape != (rows, index.dim):
                    raise CorruptIndexError(f"{where} is truncated (vectors): {fix}")
                index._vectors = arrays["vectors"].astype(np.float32)
                return index
            n_pages = int(meta["n_pages"])
            path = directory / _POSTINGS
            if path.stat().st_size != n_pages * PAGE:
                raise CorruptIndexError(
                    f"{where}: postings file has {path.stat().st_size} bytes, expected {n_pages * PAGE} "
                    f"(truncated or overwritten): {fix}")
            postings = PostingFile(index.dim, index.config.precision, path=path, writable=False)
            postings.start_page, postings.count = arrays["start_page"], arrays["count"]
            postings.capacity, postings.n_pages = arrays["capacity"], n_pages
            heads = faiss.read_index(str(directory / _HEADS))
        except CorruptIndexError:
            raise
        except (OSError, ValueError, KeyError, TypeError, EOFError, RuntimeError, zipfile.BadZipFile) as error:
            raise CorruptIndexError(f"{where} is unreadable ({type(error).__name__}: {str(error)[:200]}); {fix}") from error
        end = (postings.start_page + -(-postings.capacity * postings.dtype.itemsize // PAGE))
        if heads.ntotal != len(arrays["head_rows"]) or len(postings.count) != heads.ntotal or (
                len(end) and end.max() > n_pages) or (postings.count > postings.capacity).any():
            raise CorruptIndexError(f"{where}: head index and posting metadata disagree: {fix}")
        index._vectors = None
        index._head_rows = arrays["head_rows"]
        index._heads, index._postings = heads, postings
        advise_huge_pages(index._head_vecs)
        return index

    # ---- build ------------------------------------------------------------------------------
    def build(self) -> None:
        """Build heads and postings now from every live vector (also done lazily on search/save).

        The work runs on a snapshot outside the lock; searches meanwhile use the old structure."""
        with self._lock:
            rows, vectors = self._live_vectors()
            ids, version = self._ids[rows], self._version
        state = self._build(vectors) if len(rows) >= max(self.config.min_build, 2) else None
        with self._lock:
            if version != self._version:  # mutated meanwhile: build again, holding the lock
                rows, vectors = self._live_vectors()
                ids = self._ids[rows]
                state = self._build(vectors) if len(rows) >= max(self.config.min_build, 2) else None
            self._ids, self._alive = ids, np.ones(len(rows), dtype=bool)  # compact rows
            self._version += 1
            if state is None:
                self._vectors, self._postings, self._heads = vectors, None, None
                return
            self._head_rows, self._heads, self._postings, self._ratio = state
            self._vectors, self._built_n = None, len(rows)
            advise_huge_pages(self._head_vecs)

    def rebuild(self) -> None:
        """Compact: drop tombstones and rebuild heads and postings from the live vectors."""
        self.build()

    def _live_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, float32 vectors) of every live vector, from memory or from heads + postings."""
        if not self.built:
            rows = np.nonzero(self._alive)[0]
            return rows, self._vectors[rows]
        found_rows = np.full(len(self._ids), False)
        vectors = np.zeros((len(self._ids), self.dim), dtype=np.float32)
        for p in range(len(self._postings.count)):
            entries = self._postings.read(p)
            vectors[entries["row"]] = decode(entries["vec"], self.config.precision)
            found_rows[entries["row"]] = True
        vectors[self._head_rows] = self._head_vecs
        found_rows[self._head_rows] = True
        rows = np.nonzero(found_rows & self._alive)[0]
        return rows, vectors[rows]

    def _set_ef(self, heads, wanted: int) -> None:
        """HNSW breadth for a search of `wanted` heads (a flat head index has none). Only written
        when it changes: each SWIG attribute access costs microseconds, per query."""
        ef = max(self.config.hnsw_ef_search, int(wanted))
        tag = self._ef_tag
        if tag is not None and tag[0]() is heads and tag[1] == ef:
            return
        if hasattr(heads, "hnsw"):
            heads.hnsw.efSearch = ef
        self._ef_tag = (weakref.ref(heads), ef)

    def _make_head_index(self, head_vecs: np.ndarray):
        import faiss

        cfg = self.config
        use_hnsw = cfg.head_index == "hnsw" or (cfg.head_index == "auto" and len(head_vecs) >= 20000)
        if use_hnsw:
            heads = faiss.IndexHNSWFlat(self.dim, 32)
            heads.hnsw.efConstruction = 80
            heads.hnsw.efSearch = max(cfg.hnsw_ef_search, cfg.search_heads, cfg.candidate_heads)
        else:
            heads = faiss.IndexFlatL2(self.dim)
        heads.add(head_vecs)
        return heads

    def _build(self, vectors: np.ndarray) -> tuple:
        """(head rows, head index, postings, calibrated ratio) for `vectors`; touches no state."""
        cfg = self.config
        n = len(vectors)
        head_rows = hierarchical_heads(vectors, math.ceil(cfg.head_ratio * n), cfg.branching,
                                       cfg.kmeans_iters, cfg.balance, cfg.seed)
        heads = self._make_head_index(vectors[head_rows])
        head_vecs = vectors[head_rows]
        others = np.setdiff1d(np.arange(n), head_rows)
        head_of, dist = self._route(vectors, heads, head_vecs, subset=others)
        postings = PostingFile(self.dim, cfg.precision)
        postings.write_all([others[sel] for sel in self._group(head_of, dist, len(head_rows), cap=True)], vectors)
        ratio = self._calibrate(vectors, head_rows, heads, head_vecs, others, head_of)
        return head_rows, heads, postings, ratio

    def _calibrate(self, vectors, head_rows, heads, head_vecs, others, head_of, k: int = 10) -> float:
        """The smallest MaxDistRatio that keeps a head of the true top-k neighbour for all but
        `prune_loss` of (sampled vector, neighbour) pairs (module docstring: deviation)."""
        cfg = self.config
        if not len(others):
            return 8.0
        rng = np.random.default_rng(cfg.seed + 1)
        pick = np.sort(rng.choice(len(others), size=min(cfg.calibration_queries, len(others)), replace=False))
        queries = vectors[others[pick]]
        holders = np.full((len(vectors), head_of.shape[1]), -1, dtype=np.int64)  # heads holding each row
        holders[others] = head_of
        holders[head_rows, 0] = np.arange(len(head_rows))
        dist0 = heads.search(queries, 2)[0]
        reference = np.where(dist0[:, 0] > 1e-6, dist0[:, 0], dist0[:, 1])
        needed = []
        for start in range(0, len(queries), 32):
            qb = queries[start : start + 32]
            scores = qb @ vectors.T
            scores[np.arange(len(qb)), others[pick[start : start + 32]]] = -np.inf  # not itself
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            for i, neighbours in enumerate(top):
                h = holders[neighbours]  # (k, replicas)
                d = ((head_vecs[np.maximum(h, 0)] - qb[i]) ** 2).sum(axis=2)
                d[h < 0] = np.inf
                needed.append(d.min(axis=1) / max(float(reference[start + i]), 1e-12))
        needed = np.concatenate(needed)
        return float(max(1.0, np.quantile(needed, 1.0 - cfg.prune_loss)))

    def _route(self, vectors: np.ndarray, heads=None, head_vecs=None, subset: np.ndarray | None = None,
               block: int = 16384) -> tuple[np.ndarray, np.ndarray]:
        """Heads (n, max_replicas; -1 pad) each vector (of `subset`, default all) joins by the
        RNG rule, with distances."""
        cfg = self.config
        heads = self._heads if heads is None else heads
        head_vecs = self._head_vecs if head_vecs is None else head_vecs
        c = min(cfg.candidate_heads, heads.ntotal)
        self._set_ef(heads, c)
        out_h, out_d = [], []
        n = len(vectors) if subset is None else len(subset)
        for start in range(0, n, block):
            chunk = vectors[start : start + block] if subset is None else vectors[subset[start : start + block]]
            dist, cand = heads.search(np.ascontiguousarray(chunk, dtype=np.float32), c)
            h, d = rng_assign(dist, cand, head_vecs, cfg.max_replicas, cfg.rng_factor)
            out_h.append(h)
            out_d.append(d)
        if not out_h:
            return (np.empty((0, cfg.max_replicas), dtype=np.int64),
                    np.empty((0, cfg.max_replicas), dtype=np.float32))
        return np.concatenate(out_h), np.concatenate(out_d)

    def _group(self, head_of: np.ndarray, dist: np.ndarray, n_heads: int, cap: bool) -> list[np.ndarray]:
        """Per head, the routed vectors' positions (rows of `head_of`) sorted by distance; capped
        by dropping the farthest non-primary entries."""
        replica = np.broadcast_to(np.arange(head_of.shape[1]), head_of.shape)
        valid = head_of >= 0
        r = np.repeat(np.arange(len(head_of)), valid.sum(axis=1))
        h, d, rep = head_of[valid], dist[valid], replica[valid]
        order = np.lexsort((d, h))
        r, h, d, rep = r[order], h[order], d[order], rep[order]
        bounds = np.searchsorted(h, np.arange(n_heads + 1))
        if cap:
            rank = np.arange(len(h)) - bounds[h]
            keep = (rank < self.posting_cap) | (rep == 0)  # a vector's nearest head always keeps it
            r, h = r[keep], h[keep]
            bounds = np.searchsorted(h, np.arange(n_heads + 1))
        return [r[bounds[p] : bounds[p + 1]] for p in range(n_heads)]

    # ---- updates ----------------------------------------------------------------------------
    def _insert(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        head_of, dist = self._route(vectors)
        grouped = self._group(head_of, dist, len(self._head_rows), cap=False)
        for p, local in enumerate(grouped):
            if len(local):
                self._postings.put(p, rows[local].astype(np.int32), vectors[local], append=True)
                if self._postings.count[p] > self.posting_cap:
                    self._split(p)

    def _split(self, p: int) -> None:
        """Split an over-full posting by 2-means; the far half gets a new head (a real vector)."""
        entries = self._postings.read(p).copy()
        entries = entries[self._alive[entries["row"]]]
        vecs = decode(entries["vec"], self.config.precision)
        if len(entries) < 4:
            return
        labels, centres = balanced_kmeans(vecs, 2, iters=6, balance=1.0, seed=self.config.seed + p)
        stay = int(np.argmin(((centres - self._head_vecs[p]) ** 2).sum(axis=1)))
        move = labels != stay
        if not move.any() or move.all():
            return
        moved = entries[move]
        pick = int(np.argmin(((decode(moved["vec"], self.config.precision) - centres[1 - stay]) ** 2).sum(axis=1)))
        new_row, new_vec = int(moved["row"][pick]), decode(moved["vec"][pick : pick + 1], self.config.precision)
        self._postings.put(p, entries["row"][~move], vecs[~move], append=False)
        q = len(self._head_rows)
        self._postings.put(q, moved["row"], vecs[move], append=False)
        self._head_rows = np.append(self._head_rows, new_row)
        self._heads.add(new_vec)

    # ---- introspection for tests and benchmarks ----------------------------------------------
    @property
    def head_ids(self) -> np.ndarray:
        return self._ids[self._head_rows]

    def posting(self, p: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, float32 vectors) of posting `p` (tombstones included)."""
        with self._lock:
            entries = self._postings.read(p).copy()
        return self._ids[entries["row"]], decode(entries["vec"], self.config.precision)

    def memory_bytes(self) -> int:
        """Bytes this index holds in RAM (heads, head index, metadata, ids), not the mapped postings."""
        import faiss

        total = self._ids.nbytes + self._alive.nbytes + self._head_rows.nbytes
        if self._vectors is not None:
            total += self._vectors.nbytes
        if self.built:
            p = self._postings
            total += p.start_page.nbytes + p.count.nbytes + p.capacity.nbytes
            total += faiss.serialize_index(self._heads).nbytes  # head vectors (+ graph)
        return int(total)
