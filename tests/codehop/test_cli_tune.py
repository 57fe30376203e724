"""`codehop tune` end to end through the CLI: a collection tuned on itself, then searched as the
settings name it; a collection too small to tune is one error line."""

from __future__ import annotations

import json

import pytest

from codehop.cli import main
from tests.index.test_collection_tune import _paragraphs

pytestmark = pytest.mark.slow  # trains the shipped MiniLM for a few steps


def _cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _workspace(tmp_path, texts: dict[str, str]):
    tree = tmp_path / "tree"
    for title, text in texts.items():
        path = tree / f"{title.replace('/', '_')}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    config = tmp_path / "codehop.toml"
    config.write_text('[embedding]\nbackend = "sentence-transformers"\n')
    return tree, config, tmp_path / "ws"


def test_tune_then_search_with_the_settings_unchanged(tmp_path, capsys, shared_data):
    tree, config, ws = _workspace(tmp_path, _paragraphs(shared_data, 90))
    assert main(["--config", str(config), "index", str(tree), "--workspace", str(ws), "--no-progress"]) == 0
    capsys.readouterr()
    code, out, err = _cli(capsys, "--config", str(config), "tune", "--workspace", str(ws),
                          "--pairs", "80", "--batch-size", "8", "--force", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["switched"] and report["heldout"] >= 8
    assert "codehop: training on" in err  # the stages are shown as they start
    code, out, err = _cli(capsys, "--config", str(config), "search", "the film's director",
                          "--mode", "dense", "--json", "--workspace", str(ws))
    assert code == 0, err
    assert json.loads(out)["results"]


def test_too_small_a_collection_is_one_error_line(tmp_path, capsys):
    tree, config, ws = _workspace(tmp_path, {"one": "A single short page of prose about nothing.\nIt has two lines of words."})
    assert main(["--config", str(config), "index", str(tree), "--workspace", str(ws), "--no-progress"]) == 0
    capsys.readouterr()
    code, out, err = _cli(capsys, "--config", str(config), "tune", "--workspace", str(ws))
    assert code == 2
    assert "pseudo-query pairs" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2
