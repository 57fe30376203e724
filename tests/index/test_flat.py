import numpy as np
import pytest

from index.dense import DenseIndex, create_dense_index, load_dense_index
from runtime.errors import CorruptIndexError, InvalidInputError
from index.flat import FlatIndex


def _unit(rng, n, d=16):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_contract_build_count_self_first_and_brute_force_oracle():
    rng = np.random.default_rng(0)
    vectors = _unit(rng, 200)
    ids = np.arange(1000, 1200, dtype=np.int64)
    index = create_dense_index("flat", 16)
    assert isinstance(index, DenseIndex) and index.kind == "flat"
    index.add(ids, vectors)
    assert len(index) == 200
    hits = index.search(vectors[:5], k=3)
    assert [int(h.ids[0]) for h in hits] == [1000, 1001, 1002, 1003, 1004]
    queries = _unit(rng, 7)
    for query, got in zip(queries, index.search(queries, k=10)):
        order = np.argsort(-(vectors @ query), kind="stable")[:10]
        assert got.ids.tolist() == ids[order].tolist()
        np.testing.assert_allclose(got.scores, (vectors @ query)[order], rtol=1e-5)
        assert got.scores.dtype == np.float32 and got.ids.dtype == np.int64


def test_delete_then_search_and_k_larger_than_index():
    rng = np.random.default_rng(1)
    vectors = _unit(rng, 10)
    index = FlatIndex.create(16)
    index.add(np.arange(10), vectors)
    index.delete(np.array([3, 99]))
    assert len(index) == 9
    hits = index.search(vectors[3], k=50)[0]
    assert 3 not in hits.ids.tolist() and len(hits) == 9
    assert index.search(vectors[:2], k=1)[0].ids.tolist() == [0]


def test_save_load_roundtrip_gives_identical_results(tmp_path):
    rng = np.random.default_rng(2)
    index = FlatIndex.create(16)
    index.add(np.arange(50) * 7, _unit(rng, 50))
    index.save(tmp_path / "flat")
    loaded = load_dense_index("flat", tmp_path / "flat")
    queries = _unit(rng, 4)
    for a, b in zip(index.search(queries, 5), loaded.search(queries, 5)):
        assert a.ids.tolist() == b.ids.tolist()
        np.testing.assert_array_equal(a.scores, b.scores)


def test_bad_inputs_and_empty_index(tmp_path):
    index = FlatIndex.create(4)
    assert len(index.search(np.ones(4, np.float32), 3)[0]) == 0
    with pytest.raises(InvalidInputError):
        index.add(np.array([1]), np.ones((1, 5), np.float32))
    index.add(np.array([1]), np.ones((1, 4), np.float32))
    with pytest.raises(InvalidInputError):
        index.add(np.array([1]), np.ones((1, 4), np.float32))  # duplicate id
    with pytest.raises(InvalidInputError):
        index.search(np.ones(4, np.float32), 0)
    with pytest.raises(InvalidInputError):
        create_dense_index("annoy", 4)


def test_truncated_files_raise_corrupt_index(tmp_path):
    index = FlatIndex.create(8)
    index.add(np.arange(20), np.ones((20, 8), np.float32))
    index.save(tmp_path)
    data = (tmp_path / "flat_vectors.npy").read_bytes()
    (tmp_path / "flat_vectors.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptIndexError):
        FlatIndex.load(tmp_path)
    (tmp_path / "flat_meta.json").write_text("{")
    with pytest.raises(CorruptIndexError):
        FlatIndex.load(tmp_path)
