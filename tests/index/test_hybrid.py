import numpy as np
import pytest

from runtime.errors import InvalidInputError
from index.hybrid import rrf_fuse, weighted_fuse
from index.types import Hits


def hits(ids, scores=None):
    scores = scores if scores is not None else list(range(len(ids), 0, -1))
    return Hits(np.array(ids, dtype=np.int64), np.array(scores, dtype=np.float32))


def test_rrf_matches_hand_computed_scores():
    fused = rrf_fuse([hits([7, 3]), hits([3, 9])])
    assert fused.ids.tolist() == [3, 7, 9]
    np.testing.assert_allclose(fused.scores, [1 / 62 + 1 / 61, 1 / 61, 1 / 62], rtol=1e-6)


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
