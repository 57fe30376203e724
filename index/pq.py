"""RepCONC-style compressed index: OPQ rotation + PQ (M x 256) codes, IVF on top, ADC search.

Without training a dual encoder (which RepCONC does), these honest variants exist
(docs/methods.md, "RepCONC-style product quantisation"), named by `PQIndex.variant`:
- "OPQ": faiss OPQ rotation, PQ codebooks by k-means, codes by plain argmin (RepCONC's warm-up);
  with `by_residual` (the default, "IVF-residual") the codes quantise x - c(x), the vector minus
  its IVF centroid, and the score is q.c + ADC(q, residual code): the list a vector sits in then
  carries information too (log2(nlist) bits, paid by the layout, not the code); on the full
  devdocs corpus (docs/benchmarks/ann_bench/devdocs_pq.md), same 4 OPQ iterations, recall@10 vs
  exact went from 0.33 to 0.45 at 64x and from 0.47 to 0.59 at 32x;
- "OPQ + balanced codes": codes assigned under RepCONC's uniform-cluster constraint (Sinkhorn,
  eps=0.003 on distances scaled to [-1, 1], 100 iterations, rows/cols normalised to 1/B and
  1/K; Zhan et al., WSDM 2022, sec. 4.3), centroids re-estimated as the means of their codes;
- "OPQ + JPQ-tuned centroids": PQ centroids fine-tuned on (query, positive) pairs with a
  ranking loss while the document codes stay fixed (index/jpq.py; Zhan et al., CIKM 2021);
- "OPQ + JPQ-distilled centroids": the same frozen-code fine-tuning (PQ and IVF centroids), but
  the loss is listwise distillation from the exact scores of the float vectors on pseudo-queries
  made from the corpus (index/jpq.py `distill_centroids`); needs query vectors, so it runs after
  `build()` via `index.jpq`, not inside it.
- "RQ" (`quantizer="rq"`, an option beyond the method): a residual quantiser in place of OPQ + PQ,
  M codebooks of 256 full-dimensional centroids fitted stage by stage, codes by beam search; the
  same M bytes per vector. On devdocs with MiniLM, recall@10 vs exact of the codes alone went from
  0.73 to 0.80 at 32x and from 0.59 to 0.69 at 64x (mean NDCG@10 loss 1.55 -> 1.15 and
  4.32 -> 2.48 points; docs/benchmarks/ann_bench/devdocs_pq_minilm.md), for 6-8x the build time,
  full-dimensional codebooks and a costlier query table (`_scan_rq`).
The IVF (inner-product coarse quantiser) prunes lists for CPU speed; one global PQ codebook
serves every list (by residual or not); queries stay uncompressed (ADC).
By default the top `k * rerank_factor` are re-scored exactly from the float vectors, which
live on disk (a memory-mapped .npy after a save/load) and are also what `rebuild()` uses
(`rerank=False`: the codes alone decide).

Training uses a sample: OPQ, the codebooks and the IVF centroids are fitted on
min(train_size, max(256, train_fraction x N)) vectors drawn at random (and at least one per
dimension for OPQ, as far as N allows; below that the rotation is the identity), and every vector is then
encoded with them, so at scale most codes come from vectors the codebooks never saw (measured
quality is not inflated by fitting the very vectors being compressed).

Thread safety: public methods hold the index's lock; `build()` trains and encodes a snapshot
outside it and swaps the new faiss index in under the lock (a search sees the old or the new).
"""

from __future__ import annotations

import json
import mmap
import threading
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from index.atomic import atomic_write, write_npy, write_npz
from index.dense import BuildsWhenDue, check_dim, checked_batch, checked_queries, exact_search
from runtime.errors import CorruptIndexError, InvalidInputError
from index.types import Hits

FORMAT_VERSION = 2  # 2: by_residual and the tuning name in the meta (1 reads as by_residual=False)
_META, _ARRAYS, _VECTORS, _FAISS = "pq_meta.json", "pq_arrays.npz", "pq_vectors.npy", "pq_ivf.faiss"
QUANTIZERS = ("pq", "rq")
# Rows rotated, assigned and encoded at a time during a build: faiss encodes M=24 PQ codes
# through an (n, M, 256) float distance table, 1.6 GB at 65,536 rows; 100 MB at this size.
_ENCODE_BATCH = 4_096


@dataclass(frozen=True)
class PQConfig:
    """PQ settings. M=48 sub-vectors x 8 bits on 384-d MiniLM = 32x compression (M=24: 64x)."""

    m: int = 48
    # "pq": OPQ + product quantiser (RepCONC-style, the reference); "rq": residual (additive)
    # quantiser, M full-dimensional codebooks fitted stage by stage, codes by beam search: the
    # same M bytes, a far smaller error (see the module docstring), slower to train and encode
    quantizer: str = "pq"
    rq_beam: int = 5  # "rq": candidates kept per stage while encoding (faiss max_beam_size)
    opq: bool = True  # "pq" only: a residual quantiser's codebooks do not depend on the axes
    by_residual: bool = True  # codes of x - IVF centroid, score q.c + ADC (see the module docstring)
    opq_iters: int = 20  # OPQ alternations (faiss default 50); on devdocs 20 vs 4 raised recall@10 by 0.04 at 2.3x the build time
    nlist: int | None = None  # None: 4 * sqrt(N), at least 1, at most N / 39
    nprobe: int = 32
    balanced_codes: bool = False
    sinkhorn_eps: float = 0.003
    sinkhorn_iters: int = 100
    sinkhorn_batch: int = 4096
    # Re-score the top k * rerank_factor exactly from the float rows the index keeps on disk
    # anyway (for rebuilds): RAM still holds only the codes. On the full devdocs corpus with
    # MiniLM it turns an NDCG@10 loss of 1.3 (32x) / 5.4 (64x) points for codes alone into
    # 0.4 / 0.2 (docs/benchmarks/ann_bench/devdocs_pq_minilm.md); rerank=False: codes alone.
    rerank: bool = True
    rerank_factor: int = 4
    train_size: int = 100_000  # at most this many training vectors
    train_fraction: float = 0.5  # ... and at most this share of N (at least 256)
    min_build: int = 1024  # fewer vectors: exact search (PQ needs >= 256 points per codebook)
    rebuild_growth: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.m < 1 or self.nprobe < 1 or self.rerank_factor < 1:
            raise InvalidInputError("PQConfig: m, nprobe and rerank_factor must be >= 1")
        if self.min_build < 256:
            raise InvalidInputError("PQConfig.min_build must be >= 256 (one training point per centroid)")
        if self.quantizer not in QUANTIZERS:
            raise InvalidInputError(f"PQConfig.quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")
        if self.quantizer == "rq" and (self.balanced_codes or self.rq_beam < 1):
            raise InvalidInputError("PQConfig: quantizer 'rq' needs rq_beam >= 1 and has no balanced_codes "
                                    "(Sinkhorn balancing is per product-quantiser codebook)")

    @property
    def rotates(self) -> bool:
        """Whether an OPQ rotation precedes the codes (product quantiser only)."""
        return self.opq and self.quantizer == "pq"


def sinkhorn_codes(x: np.ndarray, centroids: np.ndarray, eps: float = 0.003, iters: int = 100,
                   batch: int = 4096) -> np.ndarray:
    """Uniform-cluster code assignment (RepCONC): Sinkhorn on exp(-d/eps), argmax per row.

    Args:
        x: (n, d) rotated vectors; centroids: (M, K, d/M) PQ codebooks.

    Returns:
        (n, M) uint8 codes whose per-batch usage of the K centroids is near uniform.
    """
    import torch

    m, k, dsub = centroids.shape
    cent = torch.from_numpy(np.ascontiguousarray(centroids))
    codes = np.empty((len(x), m), dtype=np.uint8)
    for start in range(0, len(x), batch):
        xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch])).view(-1, m, dsub).transpose(0, 1)
        d = torch.cdist(xb, cent) ** 2  # (M, B, K)
        lo, hi = d.amin(dim=(1, 2), keepdim=True), d.amax(dim=(1, 2), keepdim=True)
        d = 2 * (d - lo) / (hi - lo).clamp_min(1e-12) - 1  # scaled to [-1, 1]
        log_q = -d / eps
        b = log_q.shape[1]
        for _ in range(iters):  # log-domain Sinkhorn: columns sum to 1/K, rows to 1/B
            log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - np.log(k)
            log_q = log_q - torch.logsumexp(log_q, dim=2, keepdim=True) - np.log(b)
        codes[start : start + b] = log_q.argmax(dim=2).T.numpy().astype(np.uint8)
    return codes


class _RowAdvice:
    """madvise for the float rows a re-rank reads from a memory-mapped file (no-op in RAM).

    At load the mapping gets MADV_RANDOM: a re-rank reads ~40 scattered rows, and the kernel's
    read-ahead (128 KiB per fault) had pulled the whole 1.5 GB file of a 1M index into the page
    cache over 300 queries to serve ~18 MB of rows. Before a re-rank, `will_need` advises
    WILLNEED on the rows' pages so their disk reads overlap instead of faulting one after
    another (a cold 40-row re-rank at 1M: 233 ms -> ~3 ms). A page advised in the last
    `recent_s` seconds is skipped (its rows were just read; each call costs a syscall), so
    batches that revisit rows pay little."""

    def __init__(self, vectors: np.ndarray, recent_s: float = 10.0) -> None:
        self.mapped = getattr(vectors, "_mmap", None) if hasattr(mmap, "MADV_WILLNEED") else None
        self.recent_s = recent_s
        if self.mapped is not None:
            self.mapped.madvise(mmap.MADV_RANDOM)
            self.origin = vectors.offset % mmap.ALLOCATIONGRANULARITY  # row 0's place in the mapping
            self.row_bytes = vectors.strides[0]
            self.advised = np.full(-(-len(self.mapped) // mmap.PAGESIZE), -np.inf)  # monotonic s per page

    def will_need(self, rows: np.ndarray, batch: bool = False) -> None:
        """Advise the pages of `rows`; `batch`: a build's contiguous read (never skipped)."""
        if self.mapped is None or not len(rows):
            return
        page, now = mmap.PAGESIZE, time.monotonic()
        start = self.origin + np.asarray(rows, dtype=np.int64) * self.row_bytes
        pages = np.concatenate([start // page, (start + self.row_bytes - 1) // page])
        if not batch:  # the recency test first: a warm re-rank then returns without sorting
            pages = pages[now - self.advised[pages] >= self.recent_s]
            if not len(pages):
                return
        pages = np.unique(pages)
        self.advised[pages] = now
        runs = np.flatnonzero(np.r_[True, np.diff(pages) > 1])  # adjacent pages share one call
        for lo, hi in zip(pages[runs].tolist(), np.r_[pages[runs[1:] - 1], pages[-1]].tolist()):
            self.mapped.madvise(mmap.MADV_WILLNEED, lo * page, (hi - lo + 1) * page)


def _drop_rq_tables(ivf) -> None:
    """Free a residual quantiser's codebook cross-products (M(M-1)/2 x 256^2 floats: 72 MB at
    M=24, 296 MB at M=48, rebuilt by faiss on every load): only the beam-LUT encoder reads
    them, and ours encodes without it (use_beam_LUT = 0, the same codes)."""
    import faiss

    if hasattr(ivf, "rq") and ivf.rq.codebook_cross_products.size():
        ivf.rq.codebook_cross_products.swap(faiss.Float32Vector())


class _Rebalance:
    """Per-codebook sums of the vectors each balanced code took, batch by batch, so the
    centroids can follow their assignments after the last batch (RepCONC's constrained step).
    `trained`: the (M, 256, dsub) k-means codebooks the Sinkhorn assignment starts from."""

    def __init__(self, trained: np.ndarray) -> None:
        self.trained = trained
        self.sums = np.zeros(trained.shape, dtype=np.float64)
        self.used = np.zeros(trained.shape[:2], dtype=np.int64)

    def add(self, target: np.ndarray, codes: np.ndarray) -> None:
        sub = target.reshape(len(target), self.sums.shape[0], -1)
        for m in range(self.sums.shape[0]):
            np.add.at(self.sums[m], codes[:, m], sub[:, m])
            self.used[m] += np.bincount(codes[:, m], minlength=256)

    def centroids(self) -> np.ndarray:
        """The means of the assigned vectors; a centroid nobody took keeps its trained place."""
        out = self.trained.copy()
        hit = self.used > 0
        out[hit] = (self.sums[hit] / self.used[hit][:, None]).astype(np.float32)
        return out


class PQIndex(BuildsWhenDue):
    """OPQ + PQ codes under an IVF (faiss), int64 ids; implements `index.dense.DenseIndex`."""

    kind = "pq"

    def __init__(self, dim: int, config: PQConfig | None = None) -> None:
        check_dim(dim)
        self.config = config or PQConfig()
        if dim % self.config.m:
            raise InvalidInputError(f"PQ needs dim divisible by m: {dim} % {self.config.m} != 0; pick m from the divisors of {dim}")
        self.dim = int(dim)
        self._ids = np.empty(0, dtype=np.int64)
        self._alive = np.empty(0, dtype=bool)
        self._vectors: np.ndarray = np.empty((0, self.dim), dtype=np.float32)  # float rows (disk after load)
        self._index = None  # faiss IndexPreTransform(OPQ, IVFPQ) or None (exact)
        self._built_n = 0
        self.tuning = ""  # "" | "pairs" (JPQ ranking loss) | "distilled" (exact-score distillation)
        self._lock = threading.RLock()
        self._build_lock = threading.Lock()
        self._version = 0
        self._counted = (-1, 0)  # (version, live count) for __len__
        self._rq_cache: tuple = (-1, None)  # (version, inverted lists as arrays) for _scan_rq

    @property
    def _vectors(self) -> np.ndarray:
        """The float rows (memory-mapped from disk after a load): re-rank and rebuild read them."""
        return self._float_rows

    @_vectors.setter
    def _vectors(self, rows: np.ndarray) -> None:
        self._float_rows, self._advice = rows, _RowAdvice(rows)

    @classmethod
    def create(cls, dim: int, config: PQConfig | None = None) -> "PQIndex":
        return cls(dim, config)

    def __len__(self) -> int:
        """Live vectors, counted once per mutation (a search asks twice; summing 1M flags took
        0.3 ms each time, half of a warm 1M query)."""
        if self._counted[0] != self._version:
            self._counted = (self._version, int(np.count_nonzero(self._alive)))
        return self._counted[1]

    @property
    def built(self) -> bool:
        return self._index is not None

    @property
    def tuned(self) -> bool:
        return bool(self.tuning)

    @property
    def variant(self) -> str:
        name = "RQ" if self.config.quantizer == "rq" else "OPQ" if self.config.opq else "PQ"
        if self.config.by_residual:
            name += " IVF-residual"
        if self.config.balanced_codes:
            name += " + balanced codes"
        if self.tuning:
            name += {"pairs": " + JPQ-tuned centroids", "distilled": " + JPQ-distilled centroids"}[self.tuning]
        return name

    @property
    def ivf(self):
        import faiss

        return faiss.downcast_index(self._index.index) if self.config.rotates else self._index

    def describe(self) -> str:
        if not self.built:
            return f"pq: exact search over {len(self)} vectors (codes are trained from {self.config.min_build} vectors on)"
        return (f"pq [{self.variant}]: {len(self)} vectors, M={self.config.m} x 8 bits"
                + (f" (beam {self.config.rq_beam})" if self.config.quantizer == "rq" else "") + f", nlist={self.ivf.nlist}, "
                f"nprobe={self.config.nprobe}, rerank={'x%d' % self.config.rerank_factor if self.config.rerank else 'off'}")

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add `vectors` (n, dim) under new int64 ids; after the build they are encoded at once."""
        with self._lock:
            ids, vectors = checked_batch("PQIndex", ids, vectors, self.dim, self._ids[self._alive])
            rows = np.arange(len(self._ids), len(self._ids) + len(ids), dtype=np.int64)
            self._version += 1
            self._ids = np.concatenate([self._ids, ids])
            self._alive = np.concatenate([self._alive, np.ones(len(ids), dtype=bool)])
            self._vectors = np.concatenate([self._vectors, vectors])
            if self.built:
                self._index.add_with_ids(vectors, rows)

    def delete(self, ids: np.ndarray) -> None:
        import faiss

        with self._lock:
            gone = np.isin(self._ids, np.asarray(ids, dtype=np.int64)) & self._alive
            self._version += 1
            self._alive &= ~gone
            if self.built and gone.any():
                self.ivf.remove_ids(faiss.IDSelectorBatch(np.nonzero(gone)[0].astype(np.int64)))

    def search(self, queries: np.ndarray, k: int) -> list[Hits]:
        """ADC top-k by inner product (optionally exact re-rank), best first."""
        queries = checked_queries(queries, self.dim, k)
        self._maybe_build()
        with self._lock:
            return self._search(queries, k)

    def _search(self, queries: np.ndarray, k: int) -> list[Hits]:
        if not len(self):
            return [Hits.empty() for _ in range(len(queries))]
        if not self.built:
            rows = np.nonzero(self._alive)[0]
            return exact_search(queries, self._vectors[rows], self._ids[rows], k)
        self.ivf.nprobe = min(self.config.nprobe, self.ivf.nlist)
        fetch = k * self.config.rerank_factor if self.config.rerank else k
        if self.config.quantizer == "rq":
            scores, rows = self._scan_rq(queries, fetch)
        else:
            scores, rows = self._index.search(queries, fetch)
        out = []
        for q, s, r in zip(queries, scores, rows):
            keep = r >= 0
            s, r = s[keep], r[keep]
            if self.config.rerank and len(r):
                self._advice.will_need(r)
                s = np.asarray(self._vectors[r]) @ q
                order = np.argsort(-s, kind="stable")[:k]
                s, r = s[order], r[order]
            out.append(Hits(self._ids[r], s.astype(np.float32)))
        return out

    def _scan_rq(self, queries: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of each query's top `fetch` among the probed lists of a residual-quantiser
        index, scanned here, not by faiss: its scanner recomputes the M x 256 x d lookup table
        for every probed list (90 ms per devdocs question at nprobe 32), though under inner
        product it is the same for all of them. Here: one table per query, q . c_list + the sum
        of the code's M entries per vector."""
        ivf, cfg = self.ivf, self.config
        offsets, rows, codes = self._rq_layout()
        coarse, probe = ivf.quantizer.search(queries, min(cfg.nprobe, ivf.nlist))
        if not cfg.by_residual:
            coarse = np.zeros_like(coarse)
        m = codes.shape[1]
        tables = (queries @ self._rq_codebooks.T).reshape(len(queries), m, 256)
        books = np.arange(m)
        out_scores = np.full((len(queries), fetch), -np.inf, dtype=np.float32)
        out_rows = np.full((len(queries), fetch), -1, dtype=np.int64)
        for i, (lists, table) in enumerate(zip(probe, tables)):
            keep = lists >= 0
            lists, bias = lists[keep], coarse[i][keep]
            sizes = offsets[lists + 1] - offsets[lists]
            if not sizes.sum():
                continue
            # the positions of every probed list's entries, list by list
            at = np.repeat(offsets[lists] - np.cumsum(sizes) + sizes, sizes) + np.arange(sizes.sum())
            scores = np.repeat(bias, sizes) + table[books, codes[at]].sum(axis=1)
            top = np.argpartition(-scores, fetch - 1)[:fetch] if len(scores) > fetch else np.arange(len(scores))
            top = top[np.argsort(-scores[top], kind="stable")]
            out_scores[i, : len(top)], out_rows[i, : len(top)] = scores[top], rows[at[top]]
        return out_scores, out_rows

    def _rq_layout(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`_inverted_lists()`, read once per mutation (one extra copy of the codes and ids: ~32 MB
        at 1M x 24 bytes); also caches the codebooks as (M x 256, d)."""
        import faiss

        if self._rq_cache[0] != self._version:
            self._rq_codebooks = faiss.vector_to_array(self.ivf.rq.codebooks).reshape(-1, self.dim)
            self._rq_cache = (self._version, self._inverted_lists())
        return self._rq_cache[1]

    # ---- build ------------------------------------------------------------------------------
    def build(self) -> None:
        """Train OPQ/PQ/IVF on the live vectors and encode them (also done lazily); the work runs
        on a snapshot outside the lock, searches meanwhile use the old index."""
        with self._lock:
            rows = np.nonzero(self._alive)[0]
            ids, vectors, version = self._ids[rows], self._live_vectors(rows), self._version
        index = self._build(vectors) if len(rows) >= self.config.min_build else None
        with self._lock:
            if version != self._version:  # mutated meanwhile: build again, holding the lock
                rows = np.nonzero(self._alive)[0]
                ids, vectors = self._ids[rows], self._live_vectors(rows)
                index = self._build(vectors) if len(rows) >= self.config.min_build else None
            self._ids, self._vectors = ids, vectors
            self._alive = np.ones(len(rows), dtype=bool)
            self._index, self.tuning, self._version = index, "", self._version + 1
            if index is not None:
                self._built_n = len(rows)

    rebuild = build

    def _live_vectors(self, rows: np.ndarray) -> np.ndarray:
        """The float rows of `rows`: the stored array itself when nothing was deleted (no 1.5 GB
        copy at 1M; `_build` reads it batch by batch, memory-mapped or not)."""
        return self._vectors if len(rows) == len(self._vectors) else np.ascontiguousarray(self._vectors[rows])

    def _build(self, x: np.ndarray):
        """A trained faiss index holding the codes of `x` (rows 0..n-1); touches no state.

        Training sees a sample; encoding walks `x` in batches of `_ENCODE_BATCH` rows (rotate,
        assign a list, take the residual, encode), so the build holds the codes and one batch,
        not rotated and residual copies of every vector (1.5 GB each at 1M x 384)."""
        import faiss

        cfg, n = self.config, len(x)
        rng = np.random.default_rng(cfg.seed)
        size = min(n, cfg.train_size, max(256, int(cfg.train_fraction * n)))
        if cfg.rotates:  # OPQ needs a point per dimension (_train_opq)
            size = min(n, max(size, self.dim))
        sample = x[np.sort(rng.choice(n, size=size, replace=False))]
        opq = self._train_opq(sample) if cfg.rotates else None
        if opq is not None:
            sample = opq.apply(sample)
        quantizer = self._train_coarse(sample, n)
        centroids = quantizer.reconstruct_n(0, quantizer.ntotal)
        if cfg.by_residual:  # OPQ stays trained on the raw vectors (on residuals: no clear gain, scratch run)
            sample = sample - centroids[quantizer.search(sample, 1)[1].ravel()]
        ivf = self._rq_lists(quantizer, sample) if cfg.quantizer == "rq" else self._pq_lists(quantizer, sample)
        # One global codebook set either way (JPQ tunes it); with by_residual faiss scores
        # q.c_list + ADC(q, code of x - c_list) for inner product.
        ivf.own_fields = True
        quantizer.this.disown()
        lists = np.empty(n, dtype=np.int64)
        codes = np.empty((n, ivf.code_size), dtype=np.uint8)
        balance = _Rebalance(self._pq_centroids(ivf)) if cfg.balanced_codes else None
        advice = self._advice if x is self._vectors else _RowAdvice(x)
        for start in range(0, n, _ENCODE_BATCH):
            advice.will_need(np.arange(start, min(start + _ENCODE_BATCH, n)), batch=True)
            batch = np.ascontiguousarray(x[start : start + _ENCODE_BATCH], dtype=np.float32)
            if opq is not None:
                batch = opq.apply(batch)
            part = slice(start, start + len(batch))
            lists[part] = quantizer.search(batch, 1)[1].ravel()
            target = batch - centroids[lists[part]] if cfg.by_residual else batch
            codes[part] = self._encode(ivf, target, balance)
        if balance is not None:  # centroids follow their balanced assignments
            faiss.copy_array_to_vector(balance.centroids().ravel(), ivf.pq.centroids)
        coarse = ivf.coarse_code_size()
        ivf.add_sa_codes(np.concatenate([lists.astype("<i8").view(np.uint8).reshape(n, 8)[:, :coarse], codes], axis=1),
                         np.arange(n, dtype=np.int64))
        if opq is None:
            return ivf
        index = faiss.IndexPreTransform(opq, ivf)
        index.own_fields = True
        opq.this.disown()
        ivf.this.disown()
        return index

    def _encode(self, ivf, target: np.ndarray, balance: "_Rebalance | None") -> np.ndarray:
        """(n, M) uint8 codes of one batch of (residual) vectors: plain argmin, beam search (RQ)
        or the uniform-cluster assignment (balanced codes)."""
        cfg = self.config
        if cfg.quantizer == "rq":
            return ivf.rq.compute_codes(target)
        if balance is None:
            return ivf.pq.compute_codes(target)
        codes = sinkhorn_codes(target, balance.trained, cfg.sinkhorn_eps, cfg.sinkhorn_iters, cfg.sinkhorn_batch)
        balance.add(target, codes)
        return codes

    @staticmethod
    def _pq_centroids(ivf) -> np.ndarray:
        import faiss

        return faiss.vector_to_array(ivf.pq.centroids).reshape(ivf.pq.M, ivf.pq.ksub, ivf.pq.dsub)

    def _train_opq(self, sample: np.ndarray):
        """The OPQ rotation fitted on `sample`; the identity (plain PQ) when the sample has fewer
        rows than dimensions: faiss's OPQ training then aborts the process or corrupts its memory
        (seen with faiss-cpu 1.15.1 at 256-383 rows of 384-d MiniLM vectors, and it would at
        min_build 1024 for a 1,024-d embedder). The next build past that size fits it."""
        import faiss

        opq = faiss.OPQMatrix(self.dim, self.config.m)
        if len(sample) < self.dim:
            faiss.copy_array_to_vector(np.eye(self.dim, dtype=np.float32).ravel(), opq.A)
            opq.is_trained = True
            return opq
        opq.pq = faiss.ProductQuantizer(self.dim, self.config.m, 8)
        opq.pq.cp.min_points_per_centroid = 1
        opq.niter = self.config.opq_iters
        opq.train(sample)
        return opq

    def _train_coarse(self, sample: np.ndarray, n: int):
        """The IVF's inner-product quantiser over spherical k-means centroids of the sample."""
        import faiss

        cfg = self.config
        nlist = cfg.nlist or int(np.clip(4 * np.sqrt(n), 1, max(1, n // 39)))
        kmeans = faiss.Kmeans(self.dim, nlist, niter=10, seed=cfg.seed, spherical=True, min_points_per_centroid=1)
        kmeans.train(sample)
        quantizer = faiss.IndexFlatIP(self.dim)
        quantizer.add(kmeans.centroids)
        return quantizer

    def _pq_lists(self, quantizer, sample: np.ndarray):
        """An empty IVF-PQ index whose codebooks are k-means of the sample's sub-vectors."""
        import faiss

        cfg = self.config
        ivf = faiss.IndexIVFPQ(quantizer, self.dim, quantizer.ntotal, cfg.m, 8, faiss.METRIC_INNER_PRODUCT)
        ivf.by_residual = cfg.by_residual
        ivf.pq.cp.min_points_per_centroid, ivf.pq.cp.seed = 1, cfg.seed
        ivf.pq.train(np.ascontiguousarray(sample))
        ivf.is_trained = True
        return ivf

    def _rq_lists(self, quantizer, sample: np.ndarray):
        """An empty IVF-RQ index: M codebooks of 256 full-dimensional centroids, each fitted to
        what the previous stages left of the sample; codes come by beam search. With inner
        product the scan needs no stored norm (q . sum_m C_m[code_m] is a sum of LUT entries),
        so a code stays M bytes, as with PQ."""
        import faiss

        cfg = self.config
        ivf = faiss.IndexIVFResidualQuantizer(quantizer, self.dim, quantizer.ntotal, cfg.m, 8,
                                              faiss.METRIC_INNER_PRODUCT)
        ivf.by_residual = cfg.by_residual
        # Scan by LUT sums (q . C_m[code_m]), not by decoding each code into a vector and taking
        # a dot product (faiss's default): 0.11 vs 7.2 ms per question on devdocs, same scores
        ivf.rq.search_type = faiss.AdditiveQuantizer.ST_LUT_nonorm
        ivf.rq.max_beam_size = cfg.rq_beam
        ivf.rq.cp.seed, ivf.rq.cp.min_points_per_centroid = cfg.seed, 1
        ivf.rq.train(np.ascontiguousarray(sample))
        ivf.is_trained = True
        _drop_rq_tables(ivf)
        return ivf

    # ---- JPQ hooks ----------------------------------------------------------------------------
    def rotate(self, x: np.ndarray) -> np.ndarray:
        """Apply the OPQ rotation (identity without OPQ)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self._index.chain.at(0).apply(x) if self.config.rotates else x

    def codes(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows int64, codes (n, M) uint8) of every encoded vector, read from the inverted lists."""
        rows, _, codes = self.encoded()
        return rows, codes

    def encoded(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows int64, IVF list of each row int64, codes (n, M) uint8), read from the inverted lists."""
        offsets, rows, codes = self._inverted_lists()
        return rows, np.repeat(np.arange(len(offsets) - 1), np.diff(offsets)), codes

    def _inverted_lists(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(offsets (nlist + 1), rows, codes) of faiss's inverted lists, list after list, each
        list copied straight into its place (no per-list arrays to concatenate)."""
        from faiss.contrib.inspect_tools import get_invlist

        ivf = self.ivf
        sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        rows = np.empty(offsets[-1], dtype=np.int64)
        codes = np.empty((offsets[-1], ivf.code_size), dtype=np.uint8)
        for i in np.flatnonzero(sizes):
            part = slice(offsets[i], offsets[i + 1])
            rows[part], flat = get_invlist(ivf.invlists, int(i))
            codes[part] = flat.reshape(-1, ivf.code_size)
        return offsets, rows, codes

    def coarse_centroids(self) -> np.ndarray:
        """(nlist, dim) IVF centroids in the rotated space; with `by_residual` part of every score."""
        return self.ivf.quantizer.reconstruct_n(0, self.ivf.nlist)

    def centroids(self) -> np.ndarray:
        """(M, 256, dim / M) product-quantiser centroids (what JPQ tunes)."""
        if self.config.quantizer != "pq":
            raise InvalidInputError(f"JPQ tuning moves product-quantiser centroids; this index uses "
                                    f"quantizer={self.config.quantizer!r}, whose codebooks are full-dimensional stages")
        return self._pq_centroids(self.ivf)

    def set_centroids(self, centroids: np.ndarray, tuning: str = "pairs", coarse: np.ndarray | None = None) -> None:
        """Write PQ centroids (and optionally IVF centroids) back, codes and lists unchanged; names
        the tuning in `variant` ("pairs": JPQ ranking loss, "distilled": exact-score distillation)."""
        import faiss

        with self._lock:
            ivf = self.ivf
            faiss.copy_array_to_vector(np.ascontiguousarray(centroids, dtype=np.float32).ravel(), ivf.pq.centroids)
            if coarse is not None:  # the lists keep their members; only probing and q.c move
                quantizer = faiss.downcast_index(ivf.quantizer)
                quantizer.reset()
                quantizer.add(np.ascontiguousarray(coarse, dtype=np.float32))
            if ivf.use_precomputed_table:  # tables derived from the old centroids
                ivf.precompute_table()
            self.tuning = tuning

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row numbers of live ids (KeyError-free: unknown ids -> -1)."""
        order = np.argsort(self._ids)
        pos = np.searchsorted(self._ids, ids, sorter=order)
        pos = np.clip(pos, 0, len(order) - 1)
        rows = order[pos]
        return np.where(self._ids[rows] == ids, rows, -1)

    # ---- persistence --------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Write meta JSON, id arrays, float vectors (.npy) and the faiss index, each atomically."""
        self._maybe_build()
        with self._lock:
            self._save(Path(directory))

    def _save(self, directory: Path) -> None:
        import faiss

        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / _VECTORS, lambda p: write_npy(p, np.asarray(self._vectors)))
        atomic_write(directory / _ARRAYS, lambda p: write_npz(p, {"ids": self._ids, "alive": self._alive}))
        if self.built:
            atomic_write(directory / _FAISS, lambda p: faiss.write_index(self._index, p))
        meta = {"format_version": FORMAT_VERSION, "dim": self.dim, "config": asdict(self.config),
                "built": self.built, "rows": len(self._ids), "built_n": self._built_n, "tuning": self.tuning,
                "variant": self.variant}
        atomic_write(directory / _META, lambda p: Path(p).write_text(json.dumps(meta)))

    @classmethod
    def load(cls, directory: Path) -> "PQIndex":
        import faiss

        directory = Path(directory)
        where, fix = f"pq index at {directory}", "rebuild it (codehop index --rebuild)"
        try:
            meta = json.loads((directory / _META).read_text())
            if meta.get("format_version") not in (1, FORMAT_VERSION):
                raise CorruptIndexError(f"{where} has format {meta.get('format_version')}, expected {FORMAT_VERSION}: {fix}")
            if meta["format_version"] == 1:  # written before by_residual existed: codes are not residual
                meta["config"]["by_residual"] = False
                meta["tuning"] = "pairs" if meta.get("tuned") else ""
            index = cls(int(meta["dim"]), PQConfig(**meta["config"]))
            with np.load(directory / _ARRAYS) as data:
                ids, alive = data["ids"], data["alive"]
            vectors = np.load(directory / _VECTORS, mmap_mode="r")
            rows = int(meta["rows"])
            if ids.shape != (rows,) or alive.shape != (rows,) or vectors.shape != (rows, index.dim):
                raise CorruptIndexError(f"{where} is truncated (arrays do not match {rows} rows): {fix}")
            if meta["built"]:
                index._index = faiss.read_index(str(directory / _FAISS))
                _drop_rq_tables(index._index)
                if index._index.ntotal != int(alive.sum()) or index._index.d != index.dim:
                    raise CorruptIndexError(f"{where}: faiss index holds {index._index.ntotal} codes, expected {int(alive.sum())}: {fix}")
        except CorruptIndexError:
            raise
        except (OSError, ValueError, KeyError, TypeError, EOFError, RuntimeError, zipfile.BadZipFile) as error:
            raise CorruptIndexError(f"{where} is unreadable ({type(error).__name__}: {str(error)[:200]}); {fix}") from error
        index._ids, index._alive, index._vectors = ids.astype(np.int64), alive.astype(bool), vectors
        index._built_n, index.tuning = int(meta["built_n"]), str(meta.get("tuning", ""))
        return index

    def memory_bytes(self) -> int:
        """Bytes held in RAM: the faiss index (codes, codebooks, OPQ, lists) + id arrays; the float
        vectors count only while they are not memory-mapped from disk."""
        import faiss

        total = self._ids.nbytes + self._alive.nbytes
        if not isinstance(self._vectors, np.memmap):
            total += self._vectors.nbytes
        if self.built:
            total += faiss.serialize_index(self._index).nbytes
        return int(total)
