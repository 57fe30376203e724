"""JPQ-style tuning of PQ centroids against fixed document codes (Zhan et al., CIKM 2021, sec. 4).

JPQ trains the query encoder and the PQ centroids end to end with a ranking loss while each
document keeps its code. We cannot train the encoder here, so only the centroids move: for a
(query, positive) pair, a document's score is q . [C_1[code_1], ..., C_M[code_M]] (the ADC
score, queries in the OPQ-rotated space), and the loss is InfoNCE over the batch's positives
(in-batch negatives) plus `sampled_negatives` random documents. The tuned centroids are written
back into the faiss index; the codes and the IVF lists are untouched. This is the variant
"OPQ + JPQ-tuned centroids". With an IVF-residual index the score also holds q . c_list (the
document's list centroid), a constant here.

`distill_centroids` is the variant "OPQ + JPQ-distilled centroids": the same frozen-code
fine-tuning (JPQ stage 2 without the query encoder), of the PQ and the IVF centroids, but with
no relevance labels the target is the exact search the codes approximate: for each query the
loss is the cross-entropy between softmax(exact scores / T) and softmax(ADC scores / T) over
its exact top-k and its current ADC top-k (listwise distillation). The queries are
pseudo-queries made from the corpus (`pseudo_queries`: the first lines of each chunk), never
benchmark questions. Measured on the full devdocs corpus (docs/benchmarks/ann_bench/devdocs_pq.md,
3 training seeds): at 64x recall@10 vs exact 0.487 -> 0.509 and mean NDCG@10 loss 2.32 -> 1.17
points, at 32x recall unchanged (0.627) and mean loss 1.49 -> 1.00 (each seed's loss swings by
~2 points). The pairwise loss above, on the same pseudo-queries (positive = the source chunk),
lowers its own loss but drops recall@10 vs exact (64x: 0.486 -> 0.369): the source chunk is
often not what exact search ranks first for its own first line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.errors import InvalidInputError


@dataclass(frozen=True)
class JPQConfig:
    epochs: int = 3
    batch_size: int = 64
    sampled_negatives: int = 256
    lr: float = 1e-4
    temperature: float = 0.05  # scores of unit vectors are in [-1, 1]: sharpen them for InfoNCE
    seed: int = 0


@dataclass(frozen=True)
class JPQResult:
    loss_before: float
    loss_after: float
    steps: int


def _setup(index, queries: np.ndarray, positive_ids: np.ndarray):
    import torch

    if not index.built:
        raise InvalidInputError("JPQ tuning needs a built PQ index (add at least PQConfig.min_build vectors first)")
    rows, lists, codes = index.encoded()
    code_of = np.full(len(index._ids), -1, dtype=np.int64)
    code_of[rows] = np.arange(len(rows))
    pos_rows = index.rows_of(np.asarray(positive_ids, dtype=np.int64))
    keep = pos_rows >= 0
    keep[keep] &= code_of[pos_rows[keep]] >= 0
    if not keep.any():
        raise InvalidInputError("JPQ tuning: none of the positive ids is in the index")
    q = torch.from_numpy(index.rotate(queries[keep]))
    pos = torch.from_numpy(code_of[pos_rows[keep]])
    offset = torch.from_numpy(_coarse_rows(index, lists))
    return q, pos, torch.from_numpy(codes.astype(np.int64)), offset


def _coarse_rows(index, lists: np.ndarray) -> np.ndarray:
    """Each encoded vector's list centroid if the codes are residual, else zeros (n, dim)."""
    if not index.config.by_residual:
        return np.zeros((len(lists), index.dim), dtype=np.float32)
    return index.coarse_centroids()[lists]


def _loss(cent, q, pos, codes, negatives, temperature, offset):
    import torch

    m = cent.shape[0]
    docs = torch.cat([pos, negatives])
    # (n_docs, M, dsub) reconstruction from fixed codes; scores are ADC inner products.
    recon = cent[torch.arange(m)[None, :], codes[docs]].reshape(len(docs), -1) + offset[docs]
    logits = q @ recon.T / temperature
    target = torch.arange(len(pos))
    # a sampled negative that is the positive itself must not count against it
    same = docs[None, :] == pos[:, None]
    same[torch.arange(len(pos)), torch.arange(len(pos))] = False
    logits = logits.masked_fill(same, float("-inf"))
    return torch.nn.functional.cross_entropy(logits, target)


def ranking_loss(index, queries: np.ndarray, positive_ids: np.ndarray, config: JPQConfig = JPQConfig()) -> float:
    """Mean InfoNCE loss of the current centroids on the pairs (fixed seed negatives)."""
    import torch

    q, pos, codes, offset = _setup(index, queries, positive_ids)
    cent = torch.from_numpy(index.centroids())
    gen = torch.Generator().manual_seed(config.seed + 1)
    total, batches = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(q), config.batch_size):
            neg = torch.randint(0, len(codes), (config.sampled_negatives,), generator=gen)
            total += float(_loss(cent, q[start : start + config.batch_size], pos[start : start + config.batch_size],
                                 codes, neg, config.temperature, offset))
            batches += 1
    return total / max(batches, 1)


def tune_centroids(index, queries: np.ndarray, positive_ids: np.ndarray, config: JPQConfig = JPQConfig()) -> JPQResult:
    """Fine-tune `index`'s PQ centroids on (query, positive id) pairs; codes stay fixed.

    Args:
        index: a built `index.pq.PQIndex`.
        queries: (n, dim) float32 query embeddings.
        positive_ids: (n,) int64 ids of each query's relevant document.

    Returns:
        JPQResult with the training loss before and after (same seeded negatives).
    """
    import torch

    before = ranking_loss(index, queries, positive_ids, config)
    q, pos, codes, offset = _setup(index, queries, positive_ids)
    cent = torch.nn.Parameter(torch.from_numpy(index.centroids().copy()))
    opt = torch.optim.Adam([cent], lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    steps = 0
    for _ in range(config.epochs):
        order = torch.randperm(len(q), generator=gen)
        for start in range(0, len(q), config.batch_size):
            batch = order[start : start + config.batch_size]
            neg = torch.randint(0, len(codes), (config.sampled_negatives,), generator=gen)
            loss = _loss(cent, q[batch], pos[batch], codes, neg, config.temperature, offset)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
    index.set_centroids(cent.detach().numpy(), tuning="pairs")
    return JPQResult(before, ranking_loss(index, queries, positive_ids, config), steps)


@dataclass(frozen=True)
class DistillConfig:
    epochs: int = 2  # measured on devdocs: epoch 2 ~ epoch 3, most of the gain in epoch 1
    batch_size: int = 64
    candidates: int = 40  # exact top-k and ADC top-k per query: the list the loss ranks
    lr: float = 5e-4
    temperature: float = 0.05
    tune_coarse: bool = True  # also move the IVF centroids (part of every residual score)
    max_queries: int = 50_000
    seed: int = 0


def _topk(queries: np.ndarray, vectors: np.ndarray, k: int, batch: int = 2048) -> np.ndarray:
    """Exact inner-product top-k rows, best first, in query batches (vectors may be a memmap)."""
    k = min(k, len(vectors))
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), batch):
        s = queries[start : start + batch] @ np.asarray(vectors).T
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, part, 1), axis=1, kind="stable")
        out[start : start + batch] = np.take_along_axis(part, order, 1)
    return out


def distill_centroids(index, queries: np.ndarray, config: DistillConfig = DistillConfig()) -> JPQResult:
    """Fine-tune `index`'s PQ (and IVF) centroids so ADC ranks like exact search; codes stay fixed.

    Args:
        index: a built `index.pq.PQIndex` (its float vectors are the teacher).
        queries: (n, dim) float32 query vectors, e.g. embedded `pseudo_queries` of the corpus.

    Returns:
        JPQResult with the mean distillation loss before and after (same queries and candidates).
    """
    import torch

    if not index.built:
        raise InvalidInputError("JPQ distillation needs a built PQ index (add at least PQConfig.min_build vectors first)")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if len(queries) > config.max_queries:
        pick = np.random.default_rng(config.seed).choice(len(queries), config.max_queries, replace=False)
        queries = queries[np.sort(pick)]
    with index._lock:
        rows, lists, codes = index.encoded()
        vectors = np.asarray(index._vectors[rows], dtype=np.float32)  # encoded rows, in code order
        rotated = torch.from_numpy(index.rotate(vectors))
        code_of = np.full(len(index._ids), -1, dtype=np.int64)
        code_of[rows] = np.arange(len(rows))
        k = min(config.candidates, len(rows))
        adc = code_of[np.clip(index._index.search(queries, k)[1], 0, None)]  # the index's own top-k
        qr = torch.from_numpy(index.rotate(queries))
        cent = torch.nn.Parameter(torch.from_numpy(index.centroids().copy()))
        coarse = torch.nn.Parameter(torch.from_numpy(index.coarse_centroids().copy()))
    cand = torch.from_numpy(np.concatenate([_topk(queries, vectors, k), adc], axis=1))
    with torch.no_grad():  # teacher: exact scores (the rotation is orthogonal, so rotated = raw)
        teacher = torch.softmax(torch.einsum("bd,bkd->bk", qr, rotated[cand]) / config.temperature, dim=1)
    codes_t = torch.from_numpy(codes.astype(np.int64))
    lists_t = torch.from_numpy(lists)
    subspaces = torch.arange(codes.shape[1])
    residual = bool(index.config.by_residual)

    def loss_of(batch):
        docs = cand[batch]
        recon = cent[subspaces, codes_t[docs]].flatten(-2)
        if residual:
            recon = recon + coarse[lists_t[docs]]
        logits = torch.einsum("bd,bkd->bk", qr[batch], recon) / config.temperature
        return -(teacher[batch] * torch.log_softmax(logits, dim=1)).sum(1).mean()

    def mean_loss() -> float:
        with torch.no_grad():
            parts = [float(loss_of(torch.arange(s, min(s + 1024, len(qr))))) * min(1024, len(qr) - s)
                     for s in range(0, len(qr), 1024)]
        return sum(parts) / len(qr)

    before = mean_loss()
    params = [cent] + ([coarse] if config.tune_coarse and residual else [])
    opt = torch.optim.Adam(params, lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    steps = 0
    for _ in range(config.epochs):
        order = torch.randperm(len(qr), generator=gen)
        for start in range(0, len(qr), config.batch_size):
            loss = loss_of(order[start : start + config.batch_size])
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
    after = mean_loss()
    index.set_centroids(cent.detach().numpy(), tuning="distilled",
                        coarse=coarse.detach().numpy() if config.tune_coarse and residual else None)
    return JPQResult(before, after, steps)


def pseudo_queries(texts: list[str], lines: int = 2) -> tuple[list[str], np.ndarray]:
    """Pseudo-queries made from the corpus: the first `lines` line(s) of each text that look like
    words (4-200 characters, no token over 59 characters: skips base64 and rules), markdown
    heading marks and backticks stripped.

    Example: ["# pandas.isna\n\npandas.isna(obj)[source]\n..."] ->
    (["pandas.isna pandas.isna(obj)[source]"], array([0]))

    Returns:
        (queries, index of the text each one came from); texts without such a line give none.
    """
    out, source = [], []
    for i, text in enumerate(texts):
        found = []
        for line in text.split("\n"):
            s = line.strip().strip("#").strip().strip("`").strip()
            if 4 <= len(s) <= 200 and (" " in s or "." in s or "_" in s) and max(map(len, s.split())) < 60:
                found.append(s)
                if len(found) == lines:
                    break
        if found:
            out.append(" ".join(found))
            source.append(i)
    return out, np.array(source, dtype=np.int64)
