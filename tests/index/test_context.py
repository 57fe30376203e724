"""Contextual chunk text: the header BM25 and the embedder see, never the displayed text."""

from index.context import context_header, heading_trail, headings_at, indexed_text, title_of


def test_title_of_drops_the_suffix_and_spaces_the_path():
    assert title_of("pandas~1/reference/api/pandas.dataframe.where.txt") == \
        "pandas~1 / reference / api / pandas.dataframe.where"
    assert title_of("docs/guide.md#3") == "docs / guide"
    assert title_of(".bashrc") == ".bashrc"
    assert title_of("Makefile") == "Makefile"


def test_indexed_text_prefixes_title_and_heading_trail():
    text = indexed_text("Body.", "docs/guide.md", "passage", {"headings": ["Install", "From PyPI"]})
    assert text == "docs / guide\nInstall > From PyPI\nBody."


def test_metadata_title_wins_over_the_path():
    assert indexed_text("Body.", "notes/x.txt", "text", {"title": "Release notes"}) == "Release notes\nBody."
    assert indexed_text("Body.", "text:ab12", "text", {"title": "Release notes"}) == "Release notes\nBody."


def test_a_text_without_a_path_gets_no_title():
    assert indexed_text("Body.", "text:ab12cd34", "text", {}) == "Body."


def test_syntax_chunks_carry_their_own_header():
    chunk = "# index/atomic.py:1-9\ndef atomic_write(final, write): ..."
    assert indexed_text(chunk, "index/atomic.py", "syntax", {}) == chunk
    assert context_header("index/atomic.py", "abstract", {}) == ""


def test_disabled_context_is_the_plain_text():
    assert indexed_text("Body.", "docs/guide.md", "passage", {}, enabled=False) == "Body."


def test_heading_trail_skips_fenced_code_and_keeps_levels():
    lines = ["# Guide", "intro", "## Install", "```bash", "# not a heading", "```",
             "### From PyPI", "text", "## Use", "more"]
    trail = heading_trail(lines)
    assert trail == [(1, 1, "Guide"), (3, 2, "Install"), (7, 3, "From PyPI"), (9, 2, "Use")]
    assert headings_at(trail, 8) == ["Guide", "Install", "From PyPI"]
    assert headings_at(trail, 10) == ["Guide", "Use"]
    assert headings_at(trail, 1) == ["Guide"]
    assert headings_at([], 5) == []
    assert heading_trail(["#hashtag", "####### seven"]) == []
