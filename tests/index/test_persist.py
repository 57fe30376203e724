import json

import numpy as np
import pytest

from index import persist
from index.bm25 import BM25Index
from runtime.errors import CorruptIndexError, MissingDependencyError
from index.flat import FlatIndex


def _indexes():
    bm25 = BM25Index()
    bm25.index([["alpha", "beta"], ["gamma"], ["beta", "delta"]], np.array([10, 11, 12]))
    dense = FlatIndex.create(4)
    dense.add(np.array([10, 11, 12]), np.eye(4, dtype=np.float32)[:3])
    return bm25, dense


def test_stage_manifest_load_roundtrip_and_clean(tmp_path):
    bm25, dense = _indexes()
    (tmp_path / ".tmp-gen-000001-999").mkdir()  # debris of a killed run
    old, _ = persist.stage_generation(tmp_path, 1, bm25, dense)
    final, counts = persist.stage_generation(tmp_path, 2, bm25, dense)
    assert final.name == "gen-000002" and counts == {"bm25": 3, "dense": 3, "pending": 0}
    assert [p.name for p in tmp_path.glob(".tmp-gen-*")] == [".tmp-gen-000001-999"]
    manifest = persist.new_manifest("c", 2, final.name, dense, "flat", counts, "m")
    persist.write_manifest(tmp_path, manifest)
    read = persist.read_manifest(tmp_path, "c")
    assert read["generation"] == 2 and read["versions"]["index_format"] == "1"
    loaded_bm25, loaded_dense = persist.load_generation(tmp_path, read, "c")
    assert loaded_bm25.search(["beta"], 5).ids.tolist() == bm25.search(["beta"], 5).ids.tolist()
    assert loaded_dense.search(np.eye(4, dtype=np.float32)[1], 1)[0].ids.tolist() == [11]
    persist.clean(tmp_path, keep=final.name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen-000002", "manifest.json"]
    stamp = persist.manifest_stamp(tmp_path)
    persist.write_manifest(tmp_path, {**manifest, "generation": 3})
    assert persist.manifest_stamp(tmp_path) != stamp


def test_bad_manifests_and_mismatched_counts(tmp_path):
    assert persist.read_manifest(tmp_path, "c") is None
    bm25, dense = _indexes()
    final, counts = persist.stage_generation(tmp_path, 1, bm25, dense)
    manifest = persist.new_manifest("c", 1, final.name, dense, "flat", counts, "m")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest)[:30])
    with pytest.raises(CorruptIndexError, match="unreadable"):
        persist.read_manifest(tmp_path, "c")
    persist.write_manifest(tmp_path, {**manifest, "format_version": 99})
    with pytest.raises(CorruptIndexError, match="format 99"):
        persist.read_manifest(tmp_path, "c")
    with pytest.raises(CorruptIndexError, match="do not match"):
        persist.load_generation(tmp_path, {**manifest, "counts": {"bm25": 3, "dense": 2}}, "c")
    with pytest.raises(CorruptIndexError, match="missing"):
        persist.load_generation(tmp_path, {**manifest, "index_dir": "gen-000009"}, "c")


def test_missing_dense_backend_is_a_clear_error(monkeypatch):
    import index.dense

    monkeypatch.setitem(index.dense._BACKENDS, "spann", ("index.no_such_backend", "X"))
    with pytest.raises(MissingDependencyError, match="use --dense flat"):
        persist.dense_backend("spann")
