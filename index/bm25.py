"""Okapi BM25 on a sparse matrix, with rank-bm25 parity, and cheap document updates.

Documents are kept as term counts (per document: its distinct term ids and their frequencies).
From them one vectorised numpy pass computes the term -> (doc, score) sparse matrix, and
bm25s scores queries over it (a query is a sum over a few posting slices, not a Python loop
over documents) and saves/loads it. `add` and `delete` therefore cost counting the changed
documents plus one O(postings) rebuild before the next query, never a re-tokenisation: a
repository index re-indexes one edited file of a ~3k-chunk pool in a few milliseconds.

With `idf="okapi"` (default) the scores are those of the reference scorer, rank_bm25.BM25Okapi:
Okapi idf log((N-n+0.5)/(n+0.5)) with negative values floored to epsilon x mean idf and a (k1+1)
numerator; `idf="lucene"` gives Lucene's log(1 + (N-n+0.5)/(n+0.5)) without it, as bm25s does
(Robertson et al. 1994; Kamphuis et al., ECIR 2020, table 1):

    score(q, d) = sum_t idf(t) * f(t,d) * (k1+1) / (f(t,d) + k1 * (1 - b + b*|d|/avgdl))
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import sparse

from runtime.errors import CorruptIndexError, InvalidInputError
from index.types import Hits

FORMAT_VERSION = 1
_META = "bm25_meta.json"
_IDS = "bm25_ids.npy"
_COUNTS = "bm25_counts.npz"  # absent in indexes saved before updates existed: those are read-only
_COUNT_BATCH = 4096  # documents counted per vectorised pass (bounds the temporary arrays)


@dataclass(frozen=True)
class BM25Statistics:
    """The corpus statistics BM25 scores with: documents, their total length in tokens and the
    document frequency of some terms. A shard reports its own; `merge` sums them, so every
    shard scores with the whole collection's (Elasticsearch's dfs_query_then_fetch).

    Example: merge([(2 docs, 10 tokens, {a: 1}), (3, 20, {a: 2, b: 1})]) -> (5, 30, {a: 3, b: 1}).
    """

    documents: int
    total_length: float
    df: dict[str, int]

    @classmethod
    def merge(cls, parts: "list[BM25Statistics]") -> "BM25Statistics":
        df: dict[str, int] = {}
        for part in parts:
            for term, count in part.df.items():
                df[term] = df.get(term, 0) + count
        return cls(sum(p.documents for p in parts), float(sum(p.total_length for p in parts)), df)


@dataclass(frozen=True)
class BM25Config:
    """BM25 parameters. Defaults are rank-bm25's (k1=1.5, b=0.75, Okapi idf, epsilon=0.25);
    Lucene's are k1=1.2, b=0.75, idf="lucene"."""

    k1: float = 1.5
    b: float = 0.75
    idf: str = "okapi"  # "okapi" (rank-bm25 parity) or "lucene"
    epsilon: float = 0.25  # Okapi only: floor for negative idf, as a fraction of mean idf
    # "numba" makes queries ~3x faster once compiled, but compiling costs seconds per process:
    # right for servers and benches, wrong for one-shot CLI searches.
    backend: str = "numpy"

    def __post_init__(self) -> None:
        if self.idf not in ("okapi", "lucene"):
            raise InvalidInputError(f"BM25 idf must be 'okapi' or 'lucene', not {self.idf!r}")
        if self.k1 < 0 or not 0 <= self.b <= 1:
            raise InvalidInputError(f"BM25 needs k1 >= 0 and 0 <= b <= 1 (got {self.k1}, {self.b})")


def okapi_idf(doc_freq: np.ndarray, n_docs: int, epsilon: float) -> np.ndarray:
    """rank-bm25's idf: log((N-n+0.5)/(n+0.5)), negatives replaced by epsilon * mean(idf).

    Example: N=4, n=[1, 3] -> raw [0.847, -0.847]; mean 0 -> floor 0 -> [0.847, 0.0].
    """
    idf = np.log(n_docs - doc_freq + 0.5) - np.log(doc_freq + 0.5)
    floor = epsilon * idf.mean() if len(idf) else 0.0
    return np.where(idf < 0, floor, idf)


class BM25Index:
    """A BM25 index over pre-tokenised documents; search returns `Hits` of caller ids."""

    def __init__(self, config: BM25Config = BM25Config()) -> None:
        self.config = config
        self._clear()

    def _clear(self) -> None:
        self._vocab: dict[str, int] = {}
        self._ids = np.empty(0, dtype=np.int64)
        self._lengths = np.empty(0, dtype=np.float32)  # tokens per document
        self._starts = np.zeros(1, dtype=np.int64)  # document d's counts: _starts[d]:_starts[d+1]
        self._terms = np.empty(0, dtype=np.int32)
        self._tfs = np.empty(0, dtype=np.float32)
        self._engine = None
        self._stale = False
        self._read_only = False
        self._by_term = None  # raw term frequencies, terms x documents (scoring with given statistics)
        self._norm: tuple[float, np.ndarray] | None = None  # (average length, k1 * length norm)

    def __len__(self) -> int:
        return len(self._ids)

    def index(self, documents: list[list[str]], ids: np.ndarray | None = None) -> None:
        """Build the index from token lists; `ids` (int64) label the documents (default 0..n-1)."""
        ids = np.arange(len(documents), dtype=np.int64) if ids is None else ids
        self._clear()
        self.add(documents, ids)

    def add(self, documents: list[list[str]], ids: np.ndarray) -> None:
        """Add documents under new, unique int64 `ids`; scores follow on the next query."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) != len(documents):
            raise InvalidInputError("BM25Index.add: ids and documents differ in length")
        if len(np.unique(ids)) != len(ids) or np.isin(ids, self._ids).any():
            raise InvalidInputError("BM25Index.add: ids must be new and unique")
        self._check_writable()
        terms, tfs, sizes, lengths = [self._terms], [self._tfs], [], [self._lengths]
        for start in range(0, len(documents), _COUNT_BATCH):
            t, f, n, length = self._count(documents[start : start + _COUNT_BATCH])
            terms.append(t)
            tfs.append(f)
            sizes.append(n)
            lengths.append(length)
        if sizes:
            ends = self._starts[-1] + np.cumsum(np.concatenate(sizes))
            self._starts = np.concatenate([self._starts, ends])
        self._terms, self._tfs = np.concatenate(terms), np.concatenate(tfs)
        self._lengths = np.concatenate(lengths)
        self._ids = np.concatenate([self._ids, ids])
        self._stale = True
        self._by_term = self._norm = None

    def copy(self) -> "BM25Index":
        """An index of the same documents that can be added to or deleted from while this one
        keeps serving searches: the count arrays are shared (add and delete build new ones,
        never write into them), the vocabulary is copied (adding extends it)."""
        self._check_writable()
        out = BM25Index(self.config)
        out._vocab = dict(self._vocab)
        out._ids, out._lengths, out._starts = self._ids, self._lengths, self._starts
        out._terms, out._tfs = self._terms, self._tfs
        out._stale = True
        return out

    def dead_term_share(self) -> float:
        """The share of the vocabulary no document holds any more (deleted documents' terms stay
        numbered until a rebuild; they do not change scores, only the saved vocabulary's size)."""
        if not self._vocab:
            return 0.0
        live = np.count_nonzero(np.bincount(self._terms, minlength=len(self._vocab)))
        return 1.0 - live / len(self._vocab)

    def grouped(self, groups: np.ndarray) -> "BM25Index":
        """A new index with one row per group of this one's rows, each the union of its rows'
        tokens (term frequencies and lengths summed): a document made of its chunks, counted
        from the postings already here instead of tokenising everything again.

        Args:
            groups: the group id (int64, the new row's id) of each row, in this index's row
                order (`ids()`).
        Example: rows [["a", "b"], ["a"]] with groups [7, 7] -> one row 7 with a: 2, b: 1.
        """
        self._check_writable()
        groups = np.asarray(groups, dtype=np.int64).reshape(-1)
        if len(groups) != len(self._ids):
            raise InvalidInputError("BM25Index.grouped: one group per row")
        out = BM25Index(self.config)
        out._vocab = dict(self._vocab)  # its own: adding to one must not renumber the other
        if not len(groups):
            return out
        labels, group_of_row = np.unique(groups, return_inverse=True)
        width = max(len(self._vocab), 1)
        group_of_posting = np.repeat(group_of_row, np.diff(self._starts))
        keys, at = np.unique(group_of_posting * width + self._terms, return_inverse=True)
        tfs = np.bincount(at, weights=self._tfs, minlength=len(keys))
        group_of_key, terms = np.divmod(keys, width)
        sizes = np.bincount(group_of_key, minlength=len(labels))
        out._ids = labels
        out._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        out._terms, out._tfs = terms.astype(np.int32), tfs.astype(np.float32)
        out._lengths = np.bincount(group_of_row, weights=self._lengths, minlength=len(labels)).astype(np.float32)
        out._stale = True
        return out

    def ids(self) -> np.ndarray:
        """The row ids, in row order."""
        return self._ids

    @property
    def has_counts(self) -> bool:
        """Whether term counts are kept (not an index saved by an older codehop without them)."""
        return not self._read_only

    def delete(self, ids: np.ndarray) -> None:
        """Remove documents by id (unknown ids are ignored); scores follow on the next query."""
        keep = ~np.isin(self._ids, np.asarray(ids, dtype=np.int64))
        if keep.all():
            return
        self._check_writable()
        sizes = np.diff(self._starts)
        entries = np.repeat(keep, sizes)
        self._terms, self._tfs = self._terms[entries], self._tfs[entries]
        self._starts = np.concatenate([[0], np.cumsum(sizes[keep])]).astype(np.int64)
        self._ids, self._lengths = self._ids[keep], self._lengths[keep]
        self._stale = True
        self._by_term = self._norm = None

    def _check_writable(self) -> None:
        if self._read_only:
            raise InvalidInputError(
                "this BM25 index was saved without term counts (by an older codehop), so documents "
                "cannot be added or deleted: rebuild it (codehop index --rebuild)")

    def _count(self, documents: list[list[str]]):
        """(term ids, frequencies, distinct terms per document, tokens per document).

        Example: vocab {} and [["a", "b", "a"], ["b"]] -> vocab {a: 0, b: 1},
        terms [0, 1, 1], tfs [2, 1, 1], sizes [2, 1], lengths [3, 1].
        """
        vocab = self._vocab
        lengths = np.fromiter((len(doc) for doc in documents), dtype=np.int64, count=len(documents))
        flat = np.fromiter((vocab.setdefault(token, len(vocab)) for doc in documents for token in doc),
                           dtype=np.int64, count=int(lengths.sum()))
        width = max(len(vocab), 1)
        rows = np.repeat(np.arange(len(documents), dtype=np.int64), lengths)
        keys, tfs = np.unique(rows * width + flat, return_counts=True)  # sorted: by row, then term
        doc_of, terms = np.divmod(keys, width)
        sizes = np.bincount(doc_of, minlength=len(documents))
        return terms.astype(np.int32), tfs.astype(np.float32), sizes, lengths.astype(np.float32)

    def _score_matrix(self):
        """The bm25s engine over the current counts: one vectorised pass over every posting."""
        import bm25s

        cfg, n, n_vocab = self.config, len(self._ids), len(self._vocab)
        df = np.bincount(self._terms, minlength=n_vocab).astype(np.float64)
        real = df > 0  # terms whose documents were all deleted stay out of the mean idf
        idf = np.zeros(n_vocab)
        if cfg.idf == "okapi":
            idf[real] = (cfg.k1 + 1.0) * okapi_idf(df[real], n, cfg.epsilon)
        else:
            idf[real] = np.log1p((n - df[real] + 0.5) / (df[real] + 0.5))
        norm = self._length_norm(self._average_length())
        doc_of = np.repeat(np.arange(n, dtype=np.int32), np.diff(self._starts))
        # float32 like the stored matrix: half the memory traffic of this, the slow part of a rebuild
        tfs = self._tfs
        data = idf.astype(np.float32)[self._terms] * tfs / (tfs + norm[doc_of])
        # Transpose documents x terms (our layout) to terms x documents (bm25s's): scipy does it
        # in C by counting, O(postings + vocabulary), documents ascending in every posting.
        matrix = sparse.csr_matrix((data, self._terms, self._starts), shape=(n, n_vocab)).tocsc()
        engine = bm25s.BM25(k1=cfg.k1, b=cfg.b, method="lucene", backend=cfg.backend)
        engine.scores = {"data": matrix.data, "indices": matrix.indices.astype(np.int32, copy=False),
                         "indptr": matrix.indptr.astype(np.int64, copy=False), "num_docs": n}
        engine.vocab_dict = self._vocab
        engine.unique_token_ids_set = set(range(n_vocab))
        engine.nonoccurrence_array = None
        return engine

    def _average_length(self) -> float:
        """Tokens per document, summed exactly (float64: a float32 sum drifts past 2**24 tokens)."""
        n = len(self._lengths)
        return float(self._lengths.sum(dtype=np.float64)) / n if n else 1.0

    def _length_norm(self, avgdl: float) -> np.ndarray:
        """k1 * (1 - b + b * |d| / avgdl) per document, float32 as the stored scores."""
        cfg = self.config
        avgdl = avgdl or 1.0
        return (cfg.k1 * (1.0 - cfg.b + cfg.b * self._lengths.astype(np.float64) / avgdl)).astype(np.float32)

    def _current(self):
        if self._stale:
            self._engine = self._score_matrix() if len(self._ids) else None
            self._stale = False
        return self._engine

    def scores(self, tokens: list[str]) -> np.ndarray:
        """BM25 score of every document for one tokenised query (duplicates count twice)."""
        engine = self._current()
        if engine is None:
            return np.zeros(len(self._ids), dtype=np.float32)
        token_ids = engine.get_tokens_ids(tokens)
        if not token_ids:
            return np.zeros(len(self._ids), dtype=np.float32)
        return engine.get_scores_from_ids(token_ids)

    def statistics(self, tokens: list[str]) -> BM25Statistics:
        """This index's document count, total length and the document frequency of `tokens`."""
        self._check_writable()
        by_term = self._term_major()
        df = {}
        for token in set(tokens):
            term = self._vocab.get(token)
            if term is not None and term < by_term.shape[1]:
                count = int(by_term.indptr[term + 1] - by_term.indptr[term])
                if count:
                    df[token] = count
        return BM25Statistics(len(self._ids), float(self._lengths.sum(dtype=np.float64)), df)

    def _term_major(self):
        """Raw term frequencies as a terms x documents (CSC) matrix, built once per change."""
        if self._by_term is None:
            n = len(self._ids)
            matrix = sparse.csr_matrix((self._tfs, self._terms, self._starts), shape=(n, max(len(self._vocab), 1)))
            self._by_term = matrix.tocsc()
        return self._by_term

    def scores_with(self, tokens: list[str], statistics: BM25Statistics) -> np.ndarray:
        """BM25 score of every document with corpus statistics given from outside (a sharded
        collection's, summed over its shards): the same float32 arithmetic, in the same order,
        as `scores` on one index holding every shard's documents. Lucene idf only."""
        cfg = self.config
        if cfg.idf != "lucene":
            raise InvalidInputError("scoring with shared statistics needs idf='lucene' (Okapi's floor is a "
                                    "mean over the whole vocabulary)")
        self._check_writable()
        scores = np.zeros(len(self._ids), dtype=np.float32)
        terms = [self._vocab[t] for t in tokens if t in self._vocab and statistics.df.get(t)]
        if not terms or not len(self._ids):
            return scores
        by_term = self._term_major()
        avgdl = statistics.total_length / statistics.documents if statistics.documents else 1.0
        if self._norm is None or self._norm[0] != avgdl:
            self._norm = (avgdl, self._length_norm(avgdl))
        norm = self._norm[1]
        n = statistics.documents
        df = np.asarray([statistics.df[t] for t in tokens if t in self._vocab and statistics.df.get(t)],
                        dtype=np.float64)
        idf = np.log1p((n - df + 0.5) / (df + 0.5)).astype(np.float32)
        for term, weight in zip(terms, idf):
            start, end = by_term.indptr[term], by_term.indptr[term + 1]
            documents, tfs = by_term.indices[start:end], by_term.data[start:end]
            np.add.at(scores, documents, weight * tfs / (tfs + norm[documents]))
        return scores

    def search(self, tokens: list[str], k: int = 10, exclude: np.ndarray | None = None,
               statistics: BM25Statistics | None = None) -> Hits:
        """Top-k documents for one tokenised query; documents scoring 0 are left out.

        Args:
            tokens: the tokenised query.
            k: how many hits at most.
            exclude: ids that must not come back (e.g. the chunks of the file being completed).
            statistics: score with these corpus statistics instead of this index's own (a
                shard of a sharded collection: index.sharded).
        """
        if k <= 0:
            raise InvalidInputError(f"k must be positive, got {k}")
        scores = self.scores(tokens) if statistics is None else self.scores_with(tokens, statistics)
        if not len(scores):
            return Hits.empty()
        if exclude is not None and len(exclude):
            scores[np.isin(self._ids, np.asarray(exclude, dtype=np.int64))] = 0.0
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        # Stable tie-break on row order so results are deterministic.
        top = top[np.lexsort((top, -scores[top]))]
        top = top[scores[top] > 0]
        return Hits(self._ids[top], scores[top].astype(np.float32))

    def save(self, directory: Path) -> None:
        """Write the index into `directory` (the caller makes the write atomic)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / _IDS, self._ids)
        engine = self._current()
        if engine is not None:
            engine.save(str(directory / "engine"))
        if not self._read_only:
            with open(directory / _COUNTS, "wb") as handle:
                np.savez(handle, lengths=self._lengths, starts=self._starts, terms=self._terms,
                         tfs=self._tfs)
        meta = {"format_version": FORMAT_VERSION, "config": asdict(self.config), "n": len(self)}
        (directory / _META).write_text(json.dumps(meta))

    @classmethod
    def load(cls, directory: Path) -> "BM25Index":
        import bm25s

        directory = Path(directory)
        try:
            meta = json.loads((directory / _META).read_text())
            if meta.get("format_version") != FORMAT_VERSION:
                raise CorruptIndexError(
                    f"BM25 index at {directory} has format {meta.get('format_version')}, "
                    f"expected {FORMAT_VERSION}: rebuild it (codehop index --rebuild)"
                )
            index = cls(BM25Config(**meta["config"]))
            index._ids = np.load(directory / _IDS)
            if meta["n"]:
                index._engine = bm25s.BM25.load(str(directory / "engine"))
                index._engine.backend = index.config.backend
                if index.config.backend == "numba":
                    index._engine.activate_numba_scorer()
                index._vocab = index._engine.vocab_dict
            if (directory / _COUNTS).exists():
                with np.load(directory / _COUNTS) as counts:
                    index._lengths, index._starts = counts["lengths"], counts["starts"]
                    index._terms, index._tfs = counts["terms"], counts["tfs"]
            else:
                index._read_only = bool(meta["n"])
        except CorruptIndexError:
            raise
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as error:
            raise CorruptIndexError(
                f"BM25 index at {directory} is unreadable ({type(error).__name__}: {error}); "
                "rebuild it by re-running codehop index"
            ) from error
        n = meta["n"]
        if len(index._ids) != n or (not index._read_only and (
                len(index._lengths) != n or len(index._starts) != n + 1
                or len(index._terms) != int(index._starts[-1]))):
            raise CorruptIndexError(f"BM25 index at {directory} is truncated: rebuild it")
        return index
