from pathlib import Path

import numpy as np
import pytest

from index.atomic import atomic_write, write_npy, write_npz


def test_a_write_replaces_the_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "meta.json"
    target.write_text("old")
    atomic_write(target, lambda path: Path(path).write_text("new"))
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "meta.json"
    target.write_text("old")

    def half_then_crash(path: str) -> None:
        Path(path).write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, half_then_crash)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]


def test_arrays_round_trip_without_pickle(tmp_path):
    atomic_write(tmp_path / "a.npy", lambda path: write_npy(path, np.arange(5)))
    atomic_write(tmp_path / "b.npz", lambda path: write_npz(path, {"x": np.ones(3), "y": np.zeros(2)}))
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy", allow_pickle=False), np.arange(5))
    with np.load(tmp_path / "b.npz", allow_pickle=False) as data:
        assert sorted(data.files) == ["x", "y"] and data["x"].sum() == 3
