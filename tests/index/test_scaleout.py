"""Ray Data batch build (local mode) writes the same index files as the single-process path."""

from __future__ import annotations

import hashlib
import importlib.util

import numpy as np
import pytest

from index.dense import load_dense_index
from index.scaleout import ScaleoutConfig, build_dense_index, build_dense_index_ray
from index.pq import PQConfig
from index.spann import SpannConfig


class HashEncoder:
    """A real (if crude) text encoder: bag of hashed character trigrams, L2-normalised."""

    def __call__(self, texts):
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for row, text in enumerate(texts):
            for i in range(len(text) - 2):
                out[row, int(hashlib.md5(text[i : i + 3].encode()).hexdigest()[:6], 16) % 64] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def factory():
    return HashEncoder()


def corpus(n: int = 600):
    rng = np.random.default_rng(0)
    words = ["index", "vector", "posting", "head", "query", "cluster", "ray", "batch", "page", "disk"]
    return [" ".join(rng.choice(words, 12)) + f" doc{i}" for i in range(n)]


@pytest.mark.optional
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed (pip install 'codehop[ray]')")
def test_ray_local_build_matches_single_process(tmp_path):
    texts = corpus()
    ids = np.arange(len(texts))[::-1] * 2  # ids need not be sorted
    config = SpannConfig(min_build=256)
    single = build_dense_index(ids, texts, tmp_path / "single", "spann", config, factory)
    ray_index = build_dense_index_ray(ids, texts, tmp_path / "ray", "spann", config, factory,
                                      ScaleoutConfig(num_cpus=1, batch_size=100))
    names = sorted(p.name for p in (tmp_path / "single").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "ray").iterdir())
    for name in ("spann_postings.bin", "spann_arrays.npz"):
        assert (tmp_path / "single" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes()
    queries = HashEncoder()(texts[:5])
    loaded = load_dense_index("spann", tmp_path / "ray")
    for a, b in zip(single.search(queries, 5), loaded.search(queries, 5)):
        assert np.array_equal(a.ids, b.ids)
    assert ray_index.search(queries[:1], 1)[0].ids[0] == ids[0]


def test_single_process_path_without_ray(tmp_path):
    texts = corpus(400)  # above min_build: the PQ structure is trained, not exact search
    config = PQConfig(m=16, min_build=256, rerank=True)
    index = build_dense_index(np.arange(400), texts, tmp_path / "x", "pq", config, factory)
    assert len(index) == 400 and index.built
    assert load_dense_index("pq", tmp_path / "x").built
    hits = index.search(HashEncoder()(texts[:20]), 1)
    assert [h.ids[0] for h in hits] == list(range(20))
