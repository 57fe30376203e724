"""Hover text: the symbol's definition, then documentation passages that mention it, even
when code mentions the symbol far more often than the docs do."""

from code_tools.repo import RepoIndex
from codehop.locks import RWLock
from codehop.lsp import hover_markdown
from index import Collection


def test_hover_finds_the_one_doc_passage_among_many_code_mentions(tmp_path):
    root = tmp_path / "project"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "core.py").write_text("def frobnicate(x):\n    return x * 2\n")
    for i in range(80):  # code that mentions the symbol often: BM25 ranks it above the docs
        (root / "pkg" / f"use{i:02d}.py").write_text(
            f"from pkg.core import frobnicate\n\n\ndef use{i}(x):\n"
            f"    return frobnicate(frobnicate(frobnicate(x)))\n")
    (root / "README.md").write_text(
        "# Project\n\nGeneral notes about the project layout and its many modules.\n\n"
        "Call frobnicate on a value to double it; it is pure and cheap, so callers may use "
        "it in tight loops without caching the result anywhere in the package.\n")
    repo = RepoIndex.open(root)
    with Collection.open(tmp_path / "ws", "workspace") as collection:
        collection.add_paths([root], progress=False, defer_dense=True)  # BM25 is enough here
        plain = [r.path for r in collection.search("frobnicate", k=50, mode="bm25")]
        assert not any(p.endswith("README.md") for p in plain)  # what a fixed over-fetch saw
        text = hover_markdown(repo, collection, RWLock(), "frobnicate", passages=1)
    assert "**function `frobnicate`**" in text and "pkg/core.py:1" in text
    assert "README.md:" in text and "double it" in text
    assert text.count("---") == 1  # one definition, one passage: no code block as a "doc"
