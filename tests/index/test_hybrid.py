import numpy as np
import pytest

from runtime.errors import InvalidInputError
from index.hybrid import rrf_fuse, rrf_fuse_keys, weighted_fuse
from index.types import Hits


def hits(ids, scores=None):
    scores = scores if scores is not None else list(range(len(ids), 0, -1))
    return Hits(np.array(ids, dtype=np.int64), np.array(scores, dtype=np.float32))


def test_rrf_matches_hand_computed_scores():
    fused = rrf_fuse([hits([7, 3]), hits([3, 9])])
    assert fused.ids.tolist() == [3, 7, 9]
    np.testing.assert_allclose(fused.scores, [1 / 62 + 1 / 61, 1 / 61, 1 / 62], rtol=1e-6)


def test_rrf_of_keys_is_rrf_of_their_positions():
    fused = rrf_fuse_keys([["a.py", "b.py"], ["b.py", "c.py"]])
    assert list(fused) == ["b.py", "a.py", "c.py"]
    np.testing.assert_allclose(list(fused.values()), [1 / 62 + 1 / 61, 1 / 61, 1 / 62], rtol=1e-6)
    # ties keep first appearance, as rrf_fuse does; a dict run counts its keys in order; k applies
    assert list(rrf_fuse_keys([["x", "y"], ["y", "x"]])) == ["x", "y"]
    tied = rrf_fuse_keys([{"z": 0.1}, {"w": 9.0}], k=1)
    assert tied == {"z": pytest.approx(0.5), "w": pytest.approx(0.5)} and list(tied) == ["z", "w"]
    assert rrf_fuse_keys([[], []]) == {} == rrf_fuse_keys([])


def test_rrf_weights_and_k():
    fused = rrf_fuse([hits([1]), hits([2])], k=1, weights=[1.0, 3.0])
    assert fused.ids.tolist() == [2, 1]
    np.testing.assert_allclose(fused.scores, [1.5, 0.5])
    with pytest.raises(InvalidInputError):
        rrf_fuse([hits([1])], k=0)


def test_weighted_fusion_normalises_each_list():
    bm25 = hits([1, 2, 3], [30.0, 20.0, 10.0])
    dense = hits([3, 1], [0.9, 0.1])
    fused = weighted_fuse([bm25, dense], [0.5, 0.5])
    # 1: 0.5*1 + 0.5*0 = 0.5; 3: 0.5*0 + 0.5*1 = 0.5; 2: 0.5*0.5 = 0.25
    assert fused.ids.tolist() == [1, 3, 2]
    np.testing.assert_allclose(fused.scores, [0.5, 0.5, 0.25])


def test_empty_inputs():
    assert len(rrf_fuse([])) == 0
    assert len(rrf_fuse([Hits.empty(), Hits.empty()])) == 0
    assert weighted_fuse([hits([4], [2.0])], [1.0]).ids.tolist() == [4]
    with pytest.raises(InvalidInputError):
        weighted_fuse([hits([1])], [1.0, 2.0])
