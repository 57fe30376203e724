import numpy as np
import pytest

from index.errors import CorruptIndexError, InvalidInputError
from rag.reservoir import Reservoir, RetrieverTrigger, TriggerConfig


class _AxisEmbedder:
    """Maps a text to a fixed unit vector by its first word, so cosines are known exactly."""

    AXES = {"alpha": [1, 0, 0], "beta": [0, 1, 0], "mix": [0.6, 0.8, 0], "gamma": [0, 0, 1]}

    def encode_query(self, text):
        return np.array(self.AXES[text.split()[0]], np.float32)


def test_entries_persist_per_namespace(tmp_path):
    reservoir = Reservoir(tmp_path / "r.sqlite")
    reservoir.add("u1", "alpha question", "content a", "a.md:1-2", np.ones(3))
    reservoir.add("u2", "beta question", "content b", "b.md:1-2", np.ones(3))
    reservoir.close()
    reopened = Reservoir(tmp_path / "r.sqlite")
    assert [e.content for e in reopened.entries("u1")] == ["content a"]
    assert [e.title for e in reopened.entries("u2")] == ["beta question"]
    assert reopened.db.journal_mode == "wal"
    with pytest.raises(InvalidInputError):
        reopened.add("u1", "  ", "x", "y", np.ones(3))


def test_trigger_needs_three_entries_above_threshold(tmp_path):
    trigger = RetrieverTrigger(Reservoir(tmp_path / "r.sqlite"), _AxisEmbedder())
    for _ in range(2):
        trigger.remember("ns", "alpha q", "fact", "src")
    assert not trigger.check("ns", "alpha again").reuse  # only 2 entries
    trigger.remember("ns", "mix q", "fact", "src")  # cosine with alpha = 0.6
    decision = trigger.check("ns", "alpha again")
    assert decision.reuse and len(decision.matches) == 3
    assert decision.matches[0][1] == pytest.approx(1.0) and decision.matches[-1][1] == pytest.approx(0.6)
    assert not trigger.check("ns", "gamma other").reuse  # cosine 0 with all
    assert not trigger.check("other-namespace", "alpha").reuse


def test_thresholds_are_configurable(tmp_path):
    trigger = RetrieverTrigger(Reservoir(tmp_path / "r.sqlite"), _AxisEmbedder(),
                               TriggerConfig(min_entries=1, threshold=0.7))
    trigger.remember("ns", "mix q", "fact", "src")
    assert not trigger.check("ns", "alpha").reuse  # 0.6 < 0.7
    assert trigger.check("ns", "beta").reuse  # 0.8 >= 0.7


def test_corrupt_file_gives_clear_error(tmp_path):
    path = tmp_path / "r.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CorruptIndexError, match="reservoir"):
        Reservoir(path)
