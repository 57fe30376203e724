"""Balanced hierarchical k-means: SPANN's head selection (Chen et al., NeurIPS 2021, sec. 3.2).

SPANN picks posting heads with SPTAG's balanced k-means tree: every node is split into at most
k=32 clusters, balance enforced in the assignment step by a `lambda * count` penalty
(point -> argmin_k d(x, c_k) + lambda * count_k), recursing until the leaves are small; each
leaf's centre is then snapped to the nearest real vector, which becomes a head.

Example: 1,000 vectors with leaf_size 8 -> the root splits into 32 groups of ~31, each of those
into 4 leaves of ~8 -> ~125 leaves -> ~125 heads (12.5% of N), each head a row of the input.
"""

from __future__ import annotations

import numpy as np


def _sq_dists(x: np.ndarray, c: np.ndarray, x_norms: np.ndarray) -> np.ndarray:
    """Squared L2 distances (n, k), clipped at 0 (round-off)."""
    d = x_norms[:, None] + np.einsum("kd,kd->k", c, c)[None, :] - 2.0 * (x @ c.T)
    return np.maximum(d, 0.0, out=d)


def balanced_kmeans(x: np.ndarray, k: int, iters: int = 8, balance: float = 1.0,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with the SPANN/SPTAG balance penalty in the assignment.

    lambda is scaled so that `balance=1` makes a cluster holding the mean count cost as much as
    the mean point-to-centre distance: lambda = balance * mean_dist / (n / k). Counts come from
    the previous iteration (as in SPTAG's KmeansAssign).

    Args:
        x: (n, d) float32 vectors.
        k: number of clusters (<= n).
        iters: Lloyd iterations.
        balance: penalty strength (0 = plain k-means).
        seed: initial centres are a seeded random sample of rows.

    Returns:
        (labels (n,) int64, centres (k, d) float32).
    """
    n = len(x)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centres = x[rng.choice(n, size=k, replace=False)].astype(np.float32, copy=True)
    norms = np.einsum("nd,nd->n", x, x)
    counts = np.full(k, n / k, dtype=np.float32)
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(iters):
        d = _sq_dists(x, centres, norms)
        lam = balance * float(d.min(axis=1).mean()) / max(n / k, 1.0)
        labels = np.argmin(d + lam * counts[None, :], axis=1)
        counts = np.bincount(labels, minlength=k).astype(np.float32)
        sums = np.zeros_like(centres)
        np.add.at(sums, labels, x)
        nonempty = counts > 0
        centres[nonempty] = sums[nonempty] / counts[nonempty, None]
        # An empty cluster restarts at the point farthest from its centre (keeps k useful).
        if (~nonempty).any():
            far = np.argsort(-d[np.arange(n), labels])[: int((~nonempty).sum())]
            centres[~nonempty] = x[far]
    return labels, centres


def hierarchical_heads(x: np.ndarray, n_heads: int, branching: int = 32, iters: int = 8,
                       balance: float = 1.0, seed: int = 0) -> np.ndarray:
    """Rows of `x` chosen as heads by a balanced k-means tree with leaves of ~n/n_heads points.

    Args:
        x: (n, d) float32 vectors.
        n_heads: wanted number of heads (the result has about this many, at most n).
        branching: k of every split (SPANN: 32).

    Returns:
        Sorted unique int64 row indices of the heads (each a leaf centre snapped to a real vector).
    """
    n = len(x)
    n_heads = max(1, min(n_heads, n))
    leaf = max(1.0, n / n_heads)
    heads: list[int] = []
    stack = [np.arange(n)]
    step = 0
    while stack:
        rows = stack.pop()
        want = int(np.ceil(len(rows) / leaf))
        if want <= 1:  # a leaf: snap its centre to the nearest member
            centre = x[rows].mean(axis=0)
            heads.append(int(rows[np.argmin(((x[rows] - centre) ** 2).sum(axis=1))]))
            continue
        k = min(branching, want)
        step += 1
        labels, centres = balanced_kmeans(x[rows], k, iters, balance, seed + step)
        if k == want:  # this split makes the leaves: snap every centre to its nearest member
            order = np.argsort(labels, kind="stable")
            bounds = np.searchsorted(labels[order], np.arange(k + 1))
            for c in range(k):
                members = rows[order[bounds[c] : bounds[c + 1]]]
                if len(members):
                    d = ((x[members] - centres[c]) ** 2).sum(axis=1)
                    heads.append(int(members[np.argmin(d)]))
            continue
        for c in range(k):
            members = rows[labels == c]
            if len(members):
                stack.append(members)
    return np.unique(np.asarray(heads, dtype=np.int64))
