"""JPQ-style tuning of PQ centroids against fixed document codes (Zhan et al., CIKM 2021, sec. 4).

JPQ trains the query encoder and the PQ centroids end to end with a ranking loss while each
document keeps its code. We cannot train the encoder here, so only the centroids move: for a
(query, positive) pair, a document's score is q . [C_1[code_1], ..., C_M[code_M]] (the ADC
score, queries in the OPQ-rotated space), and the loss is InfoNCE over the batch's positives
(in-batch negatives) plus `sampled_negatives` random documents. The tuned centroids are written
back into the faiss index; the codes and the IVF lists are untouched. This is the variant
"OPQ + JPQ-tuned centroids".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from index.errors import InvalidInputError


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
    rows, codes = index.codes()
    code_of = np.full(len(index._ids), -1, dtype=np.int64)
    code_of[rows] = np.arange(len(rows))
    pos_rows = index.rows_of(np.asarray(positive_ids, dtype=np.int64))
    keep = pos_rows >= 0
    keep[keep] &= code_of[pos_rows[keep]] >= 0
    if not keep.any():
        raise InvalidInputError("JPQ tuning: none of the positive ids is in the index")
    q = torch.from_numpy(index.rotate(queries[keep]))
    pos = torch.from_numpy(code_of[pos_rows[keep]])
    return q, pos, torch.from_numpy(codes.astype(np.int64))


def _loss(cent, q, pos, codes, negatives, temperature):
    import torch

    m = cent.shape[0]
    docs = torch.cat([pos, negatives])
    # (n_docs, M, dsub) reconstruction from fixed codes; scores are ADC inner products.
    recon = cent[torch.arange(m)[None, :], codes[docs]].reshape(len(docs), -1)
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

    q, pos, codes = _setup(index, queries, positive_ids)
    cent = torch.from_numpy(index.centroids())
    gen = torch.Generator().manual_seed(config.seed + 1)
    total, batches = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(q), config.batch_size):
            neg = torch.randint(0, len(codes), (config.sampled_negatives,), generator=gen)
            total += float(_loss(cent, q[start : start + config.batch_size], pos[start : start + config.batch_size],
                                 codes, neg, config.temperature))
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
    q, pos, codes = _setup(index, queries, positive_ids)
    cent = torch.nn.Parameter(torch.from_numpy(index.centroids().copy()))
    opt = torch.optim.Adam([cent], lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    steps = 0
    for _ in range(config.epochs):
        order = torch.randperm(len(q), generator=gen)
        for start in range(0, len(q), config.batch_size):
            batch = order[start : start + config.batch_size]
            neg = torch.randint(0, len(codes), (config.sampled_negatives,), generator=gen)
            loss = _loss(cent, q[batch], pos[batch], codes, neg, config.temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
    index.set_centroids(cent.detach().numpy())
    return JPQResult(before, ranking_loss(index, queries, positive_ids, config), steps)
