"""Paired bootstrap intervals shared by the benches: how much of a difference between two
retrievers on the same questions is which-questions noise."""

from __future__ import annotations

import numpy as np


def bootstrap_rows(n: int, rounds: int = 2000, seed: int = 0) -> np.ndarray:
    """(rounds, n) question indices drawn with replacement, shared by every row of a run (paired)."""
    return np.random.default_rng(seed).integers(0, n, (rounds, n))


def loss_ci95(exact_per_q: np.ndarray, per_q: np.ndarray, boot: np.ndarray) -> list[float]:
    """Paired bootstrap 95% CI of the NDCG loss in points (same questions for exact and variant):
    how much of a loss is which-questions noise."""
    lo, hi = np.percentile(100 * (np.asarray(exact_per_q) - np.asarray(per_q))[boot].mean(axis=1), [2.5, 97.5])
    return [float(lo), float(hi)]
