"""Okapi BM25 on a sparse matrix, with rank-bm25 parity.

bm25s is the engine: it precomputes a term -> (doc, score) sparse matrix at index time, so a
query is a sum over a few posting slices instead of a Python loop over documents. Its default
idf is Lucene's log(1 + (N-n+0.5)/(n+0.5)); the reference scorer, rank_bm25.BM25Okapi, uses
the Okapi idf log((N-n+0.5)/(n+0.5)) with negative values floored to epsilon x mean idf and a
(k1+1) numerator. With `idf="okapi"` we rescale bm25s's stored scores per term so both give the
same numbers (Robertson et al. 1994; Kamphuis et al., ECIR 2020, table 1):

    score(q, d) = sum_t idf(t) * f(t,d) * (k1+1) / (f(t,d) + k1 * (1 - b + b*|d|/avgdl))
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from index.errors import CorruptIndexError, InvalidInputError
from index.types import Hits

FORMAT_VERSION = 1
_META = "bm25_meta.json"
_IDS = "bm25_ids.npy"


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
        self._engine = None
        self._ids = np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._ids)

    def index(self, documents: list[list[str]], ids: np.ndarray | None = None) -> None:
        """Build the index from token lists; `ids` (int64) label the documents (default 0..n-1)."""
        import bm25s

        ids = np.arange(len(documents), dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
        if len(ids) != len(documents):
            raise InvalidInputError("BM25Index.index: ids and documents differ in length")
        self._ids = ids
        if not documents:
            self._engine = None
            return
        engine = bm25s.BM25(
            k1=self.config.k1, b=self.config.b, method="lucene", backend=self.config.backend
        )
        logging.getLogger("bm25s").setLevel(logging.WARNING)
        engine.index(documents, show_progress=False)
        if self.config.idf == "okapi":
            self._rescale_to_okapi(engine, documents)
        self._engine = engine

    def _rescale_to_okapi(self, engine, documents: list[list[str]]) -> None:
        # bm25s stores lucene_idf(t) * tf/(tf + k1*norm) per (term, doc); Okapi wants
        # okapi_idf(t) * (k1+1) * tf/(tf + k1*norm): one factor per term.
        scores = engine.scores
        indptr = scores["indptr"]
        doc_freq = np.diff(indptr).astype(np.float64)
        n_docs = len(documents)
        lucene = np.log1p((n_docs - doc_freq + 0.5) / (doc_freq + 0.5))
        # The empty token bm25s adds has df=0; keep it out of rank-bm25's mean idf.
        real = doc_freq > 0
        okapi = np.zeros_like(lucene)
        okapi[real] = okapi_idf(doc_freq[real], n_docs, self.config.epsilon)
        factor = np.zeros_like(lucene)
        factor[real] = (self.config.k1 + 1.0) * okapi[real] / lucene[real]
        per_entry = np.repeat(factor, np.diff(indptr)).astype(scores["data"].dtype)
        scores["data"] = scores["data"] * per_entry

    def scores(self, tokens: list[str]) -> np.ndarray:
        """BM25 score of every document for one tokenised query (duplicates count twice)."""
        if self._engine is None:
            return np.zeros(len(self._ids), dtype=np.float32)
        token_ids = self._engine.get_tokens_ids(tokens)
        if not token_ids:
            return np.zeros(len(self._ids), dtype=np.float32)
        return self._engine.get_scores_from_ids(token_ids)

    def search(self, tokens: list[str], k: int = 10) -> Hits:
        """Top-k documents for one tokenised query; documents scoring 0 are left out."""
        if k <= 0:
            raise InvalidInputError(f"k must be positive, got {k}")
        scores = self.scores(tokens)
        if not len(scores):
            return Hits.empty()
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        # Stable tie-break on row order so results are deterministic.
        top = top[np.lexsort((top, -scores[top]))]
        top = top[scores[top] > 0]
        return Hits(self._ids[top], scores[top].astype(np.float32))

    def search_many(self, queries: list[list[str]], k: int = 10) -> list[Hits]:
        return [self.search(tokens, k) for tokens in queries]

    def save(self, directory: Path) -> None:
        """Write the index into `directory` (the caller makes the write atomic)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / _IDS, self._ids)
        if self._engine is not None:
            self._engine.save(str(directory / "engine"))
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
        except CorruptIndexError:
            raise
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as error:
            raise CorruptIndexError(
                f"BM25 index at {directory} is unreadable ({type(error).__name__}: {error}); "
                "rebuild it by re-running codehop index"
            ) from error
        if len(index._ids) != meta["n"]:
            raise CorruptIndexError(f"BM25 index at {directory} is truncated: rebuild it")
        return index


