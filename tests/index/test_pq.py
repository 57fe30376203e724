"""PQ (OPQ + IVF) against the flat oracle on seeded synthetic data; JPQ tuning; persistence."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from index.dense import create_dense_index, load_dense_index
from runtime.errors import CorruptIndexError, InvalidInputError
from index.flat import FlatIndex
from index.jpq import DistillConfig, JPQConfig, distill_centroids, pseudo_queries, ranking_loss, tune_centroids
from index.pq import PQConfig, PQIndex, sinkhorn_codes

DIM, M = 32, 8


def clustered(n: int, seed: int, centres: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, DIM))
    x = c[rng.integers(0, centres, n)] + 0.4 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def recall(hits, truth) -> float:
    return float(np.mean([len(set(h.ids) & set(t.ids)) / len(t.ids) for h, t in zip(hits, truth)]))


@pytest.fixture(scope="module")
def data():
    x, q = clustered(4000, 0), clustered(80, 1)
    flat = FlatIndex(DIM)
    flat.add(np.arange(4000) + 100, x)
    return x, q, flat.search(q, 10)


def make(x, **kw) -> PQIndex:
    index = create_dense_index("pq", DIM, PQConfig(m=M, nprobe=16, opq_iters=4, **kw))
    index.add(np.arange(2000) + 100, x[:2000])
    index.add(np.arange(2000, len(x)) + 100, x[2000:])
    return index


@pytest.fixture(scope="module")
def opq(data):
    index = make(data[0])
    index.build()
    return index


def test_recall_floors_vs_brute_force(data, opq):
    x, q, truth = data
    # 8 bytes per 128-byte vector (16x compression), nprobe 16 of ~100 lists: measured ~0.6 ADC,
    # ~0.87 re-ranked (the IVF probe bounds the re-ranked figure)
    assert opq.variant == "OPQ IVF-residual"
    assert opq.config.rerank  # the default: exact re-rank of 4k from the float rows on disk
    assert recall(opq.search(q, 10), truth) >= 0.8
    opq.config = dataclasses.replace(opq.config, rerank=False)  # the same codes alone
    try:
        assert recall(opq.search(q, 10), truth) >= 0.45
    finally:
        opq.config = dataclasses.replace(opq.config, rerank=True)


def test_sinkhorn_codes_are_balanced():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1024, 8)).astype(np.float32)
    cent = rng.normal(size=(2, 256, 4)).astype(np.float32) * 0.3
    cent[:, :8] *= 0.01  # a few centroids near the origin would win most plain argmins
    codes = sinkhorn_codes(x, cent, iters=30, batch=1024)
    plain = np.argmin(((x.reshape(1024, 2, 1, 4) - cent[None]) ** 2).sum(-1), axis=2)
    for m in range(2):
        assert np.bincount(codes[:, m], minlength=256).max() < np.bincount(plain[:, m], minlength=256).max()
        assert np.bincount(codes[:, m], minlength=256).std() < np.bincount(plain[:, m], minlength=256).std()


def test_balanced_variant_searches(data):
    x, q, _ = data
    x = x[:1200]  # small: Sinkhorn is the slow part
    flat = FlatIndex(DIM)
    flat.add(np.arange(1200) + 100, x)
    index = create_dense_index("pq", DIM, PQConfig(m=M, nprobe=16, opq_iters=4, balanced_codes=True,
                                                   sinkhorn_iters=10, sinkhorn_batch=1200))
    index.add(np.arange(1200) + 100, x)
    hits = index.search(q, 10)
    assert index.variant == "OPQ IVF-residual + balanced codes"
    assert recall(hits, flat.search(q, 10)) >= 0.35
    _, codes = index.codes()
    used = [len(np.unique(codes[:, m])) for m in range(M)]
    assert min(used) >= 200  # balanced assignment spreads 1,200 vectors over most of the 256 codes


def test_jpq_lowers_loss_and_keeps_held_out_recall(data):
    x, _, _ = data
    rng = np.random.default_rng(5)
    pos = rng.choice(len(x), 900, replace=False)
    noisy = x[pos] + 0.06 * rng.normal(size=(900, DIM)).astype(np.float32)
    queries = (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)
    train, held = slice(0, 700), slice(700, 900)
    index = make(x)
    index.build()

    def hit_rate():
        hits = index.search(queries[held], 10)
        return np.mean([p + 100 in h.ids for p, h in zip(pos[held], hits)])

    before = hit_rate()
    cfg = JPQConfig(epochs=3, lr=1e-3)
    result = tune_centroids(index, queries[train], pos[train] + 100, cfg)
    assert result.loss_after < result.loss_before - 0.01
    assert ranking_loss(index, queries[train], pos[train] + 100, cfg) == pytest.approx(result.loss_after)
    assert index.variant == "OPQ IVF-residual + JPQ-tuned centroids"
    assert hit_rate() >= before - 0.02


def test_residual_codes_beat_plain_codes(data, opq):
    # Clustered data: the list a vector sits in already says which cluster it is near, so the
    # same 8 bytes spent on the residual reconstruct it far better (measured ~0.87 vs ~0.62).
    x, q, truth = data
    plain = make(x, by_residual=False)
    plain.build()
    assert plain.variant == "OPQ"
    assert recall(opq.search(q, 10), truth) >= recall(plain.search(q, 10), truth) + 0.1


def noisy_queries(x, n, seed, noise=0.15):
    rng = np.random.default_rng(seed)
    v = x[rng.choice(len(x), n, replace=False)] + noise * rng.normal(size=(n, DIM)).astype(np.float32)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("by_residual", [True, False])
def test_distillation_raises_recall_over_plain_opq(data, tmp_path, by_residual):
    # M=4 codes (32x) on 4,000 clustered vectors: coarse enough that ADC misorders neighbours;
    # distilling the centroids from exact scores on 3,000 pseudo-queries must lower the loss and
    # raise recall@10 vs exact on other, held-out queries; the tuned index round-trips exactly.
    x, _, _ = data
    index = create_dense_index("pq", DIM, PQConfig(m=4, nprobe=16, opq_iters=4, by_residual=by_residual,
                                                   rerank=False))  # what the codes alone rank
    index.add(np.arange(len(x)) + 100, x)
    index.build()
    flat = FlatIndex(DIM)
    flat.add(np.arange(len(x)) + 100, x)
    held = noisy_queries(x, 200, 9)
    truth = flat.search(held, 10)
    before = recall(index.search(held, 10), truth)
    result = distill_centroids(index, noisy_queries(x, 3000, 8), DistillConfig(epochs=3, lr=2e-3))
    after = recall(index.search(held, 10), truth)
    assert result.loss_after < result.loss_before - 0.05
    # measured: 0.516 -> 0.556 residual, 0.317 -> 0.339 plain (isotropic noise leaves k-means
    # codebooks little to gain; on devdocs the residual gain was 0.47 -> 0.52)
    assert after >= before + (0.025 if by_residual else 0.01), (before, after)
    assert index.variant.endswith("+ JPQ-distilled centroids") and index.tuned
    index.save(tmp_path)
    loaded = load_dense_index("pq", tmp_path)
    assert loaded.variant == index.variant
    for b, a in zip(index.search(held, 10), loaded.search(held, 10)):
        assert np.array_equal(b.ids, a.ids) and np.allclose(b.scores, a.scores)
    loaded.rebuild()  # new codes: the tuned centroids no longer apply
    assert not loaded.tuned


def test_pseudo_queries_from_first_lines():
    texts = ["# pandas.isna\n\npandas.isna(obj)[source]\n\nDetect missing values.",
             "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==",
             "", "`numpy.cbrt`"]
    queries, source = pseudo_queries(texts)
    assert queries == ["pandas.isna pandas.isna(obj)[source]", "numpy.cbrt"]
    assert source.tolist() == [0, 3]


def test_save_load_round_trip_and_delete(data, opq, tmp_path):
    x, q, _ = data
    index = opq
    before = index.search(q, 10)
    index.save(tmp_path / "a")
    loaded = load_dense_index("pq", tmp_path / "a")
    for b, a in zip(before, loaded.search(q, 10)):
        assert np.array_equal(b.ids, a.ids) and np.allclose(b.scores, a.scores)
    victim = before[0].ids[0]
    loaded.delete([victim])
    assert len(loaded) == len(x) - 1 and victim not in loaded.search(q[:1], 10)[0].ids
    loaded.add(np.array([victim]), x[victim - 100 : victim - 99])  # re-add after delete
    assert loaded.search(x[victim - 100 : victim - 99], 1)[0].ids[0] == victim
    loaded.rebuild()
    assert len(loaded) == len(x)


def test_small_collections_use_exact_search(tmp_path):
    x = clustered(30, 2)
    index = PQIndex.create(DIM, PQConfig(m=M))
    index.add(np.arange(30), x)
    assert index.search(x[3:4], 1)[0].ids[0] == 3 and "exact" in index.describe()
    index.save(tmp_path)
    assert PQIndex.load(tmp_path).search(x[3:4], 1)[0].ids[0] == 3
    with pytest.raises(InvalidInputError, match="divisible"):
        PQIndex.create(30, PQConfig(m=8))


@pytest.mark.parametrize("n, fitted", [(300, False), (600, True)])
def test_opq_needs_a_point_per_dimension(n, fitted):
    """faiss's OPQ training aborts the process with fewer points than dimensions (256-383 rows of
    384-d vectors did): such a build keeps the identity rotation, and once the collection holds a
    point per dimension the sample takes at least that many (600 x 0.5 = 300 < 384 before)."""
    dim = 384
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = PQIndex.create(dim, PQConfig(m=48, opq_iters=2, min_build=256))
    index.add(np.arange(n), x)
    index.build()
    assert "exact" not in index.describe()
    probe = rng.normal(size=(4, dim)).astype(np.float32)
    assert np.allclose(index.rotate(probe), probe, atol=1e-6) != fitted
    assert [h.ids[0] for h in index.search(x[:20], 1)] == list(range(20))


@pytest.mark.parametrize("damage", ["truncate_faiss", "truncate_vectors", "bad_version"])
def test_corrupt_files_raise_clear_error(opq, tmp_path, damage):
    opq.save(tmp_path)
    if damage == "truncate_faiss":
        path = tmp_path / "pq_ivf.faiss"
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "truncate_vectors":
        path = tmp_path / "pq_vectors.npy"
        path.write_bytes(path.read_bytes()[:5000])
    else:
        meta = json.loads((tmp_path / "pq_meta.json").read_text())
        (tmp_path / "pq_meta.json").write_text(json.dumps({**meta, "format_version": 0}))
    with pytest.raises(CorruptIndexError, match="rebuild it"):
        PQIndex.load(tmp_path)


def score_error(index: PQIndex, q: np.ndarray, x: np.ndarray) -> float:
    """Mean |ADC score - exact score| over each query's top 10 by codes alone."""
    hits = index.search(q, 10)
    return float(np.mean([np.abs(h.scores - x[h.ids - 100] @ row).mean() for h, row in zip(hits, q)]))


@pytest.fixture(scope="module")
def rq(data):
    index = make(data[0], quantizer="rq", rerank=False)
    index.build()
    return index


def test_residual_quantizer_scores_closer_at_equal_bytes(data, rq):
    # The same M bytes per vector: M full-dimensional stages fitted to what the earlier stages
    # left approximate each vector better than M sub-vector codebooks (measured 0.85x the score
    # error here with 2,000 training vectors; 0.6x the squared error on devdocs with MiniLM).
    x, q, truth = data
    pq = make(x, rerank=False)
    pq.build()
    assert rq.variant == "RQ IVF-residual" and "beam 5" in rq.describe()
    assert rq.ivf.code_size == pq.ivf.code_size == M  # no norm byte: inner product needs none
    assert score_error(rq, q, x) < 0.92 * score_error(pq, q, x)
    assert recall(rq.search(q, 10), truth) >= 0.55


def test_residual_quantizer_round_trip_rerank_and_no_jpq(data, rq, tmp_path):
    x, q, truth = data
    rq.save(tmp_path)
    loaded = load_dense_index("pq", tmp_path)
    for b, a in zip(rq.search(q, 10), loaded.search(q, 10)):
        assert np.array_equal(b.ids, a.ids) and np.allclose(b.scores, a.scores)
    assert loaded.ivf.rq.codebook_cross_products.size() == 0  # faiss rebuilds them on load; unused
    # our one-table-per-query scan returns what faiss's own IVF-RQ scanner returns
    loaded.ivf.nprobe = loaded.config.nprobe
    faiss_scores, faiss_rows = loaded.ivf.search(q, 10)
    for h, s, r in zip(loaded.search(q, 10), faiss_scores, faiss_rows):
        assert np.array_equal(h.ids, loaded._ids[r]) and np.allclose(h.scores, s, atol=1e-5)
    victim = loaded.search(q[:1], 1)[0].ids[0]
    loaded.delete([victim])
    assert victim not in loaded.search(q[:1], 10)[0].ids
    loaded.add(np.array([victim]), x[victim - 100 : victim - 99])  # encoded by faiss on add
    assert loaded.search(x[victim - 100 : victim - 99], 1)[0].ids[0] == victim
    loaded.config = dataclasses.replace(loaded.config, rerank=True)
    assert recall(loaded.search(q, 10), truth) >= 0.8
    with pytest.raises(InvalidInputError, match="quantizer='rq'"):
        distill_centroids(loaded, q)
    with pytest.raises(InvalidInputError, match="quantizer must be one of"):
        PQConfig(quantizer="lsq")
    with pytest.raises(InvalidInputError, match="balanced_codes"):
        PQConfig(quantizer="rq", balanced_codes=True)
