"""Chunk boundaries, headers, long-definition splits, blocks and abstracts."""

from __future__ import annotations

import re

from code_tools.chunker import ChunkerConfig, block_chunks, chunk_file, chunk_for_index

HEADER = re.compile(r"^(#|//) (\S+):(\d+)-(\d+)")


def _long_class(n_methods: int = 8) -> str:
    methods = "\n".join(
        f"    def m{i}(self, x):\n        \"\"\"Method {i}.\"\"\"\n        y = x + {i}\n"
        f"        z = y * 2\n        w = z - 1\n        return w\n" for i in range(n_methods)
    )
    return f"import os\n\n\nclass Big(Base):\n    \"\"\"A big class.\"\"\"\n\n    LIMIT = 3\n\n{methods}\n\ndef tail():\n    return 1\n"


def _body(chunk) -> str:
    return chunk.text.split("\n", 1)[1]


def test_headers_name_path_and_exact_lines():
    text = _long_class()
    lines = text.split("\n")
    fc = chunk_file("pkg/big.py", text, ChunkerConfig(max_syntax_lines=20))
    for chunk in fc.syntax + fc.blocks:
        match = HEADER.match(chunk.text)
        assert match and match.group(2) == "pkg/big.py"
        assert (int(match.group(3)), int(match.group(4))) == (chunk.start_line, chunk.end_line)
        # The last lines of the chunk text are exactly the source lines it claims.
        span = "\n".join(lines[chunk.start_line - 1:chunk.end_line])
        assert chunk.text.endswith(span)


def test_long_class_is_split_into_head_and_methods_with_class_signature():
    text = _long_class()
    fc = chunk_file("big.py", text, ChunkerConfig(max_syntax_lines=20))
    symbols = [c.metadata["symbol"] for c in fc.syntax]
    assert symbols[0] == "Big" and "Big.m0" in symbols and "Big.m7" in symbols and "tail" in symbols
    head = fc.syntax[0]
    assert "LIMIT = 3" in head.text and "def m0" not in head.text
    method = next(c for c in fc.syntax if c.metadata["symbol"] == "Big.m3")
    assert method.text.split("\n")[1] == "class Big(Base):"
    assert method.start_line == text.split("\n").index("    def m3(self, x):") + 1
    # A small class stays one chunk.
    small = chunk_file("big.py", text, ChunkerConfig(max_syntax_lines=200))
    assert [c.metadata["symbol"] for c in small.syntax] == ["Big", "tail"]


def test_long_function_is_split_with_its_signature_as_context():
    body = "\n".join(f"    v{i} = {i}\n" if i % 5 == 4 else f"    v{i} = {i}" for i in range(50))
    text = f"def long(a, b):\n{body}\n    return a\n"
    fc = chunk_file("f.py", text, ChunkerConfig(max_syntax_lines=20))
    pieces = [c for c in fc.syntax if c.metadata["symbol"] == "long"]
    assert len(pieces) >= 3
    assert all(c.end_line - c.start_line + 1 <= 20 for c in pieces)
    assert pieces[0].start_line == 1 and pieces[-1].text.rstrip().endswith("return a")
    assert all(c.text.split("\n")[1] == "def long(a, b):" for c in pieces[1:])
    # Pieces tile the function: consecutive, no overlap, no gap beyond blank lines.
    for a, b in zip(pieces, pieces[1:]):
        assert a.end_line < b.start_line <= a.end_line + 2


def test_blocks_cut_at_blank_lines_near_fifteen_lines():
    paragraphs = ["\n".join(f"x{p}_{i} = {i}" for i in range(6)) for p in range(10)]
    text = "\n\n".join(paragraphs)
    blocks = block_chunks("b.py", text)
    lines = text.split("\n")
    for block in blocks:
        size = block.end_line - block.start_line + 1
        assert size <= 30
        if block is not blocks[-1]:
            assert 10 <= size <= 20
            assert lines[block.end_line] == ""  # ends right before a blank line
    covered = [n for b in blocks for n in range(b.start_line, b.end_line + 1)]
    assert len(covered) == len(set(covered))
    assert set(covered) >= {n for n, line in enumerate(lines, 1) if line.strip()}


def test_blocks_force_a_cut_without_blank_lines():
    text = "\n".join(f"a{i} = {i}" for i in range(70))
    blocks = block_chunks("b.py", text)
    assert [(b.start_line, b.end_line) for b in blocks] == [(1, 30), (31, 60), (61, 70)]


def test_abstract_keeps_signatures_and_docstrings_only():
    text = _long_class(3)
    fc = chunk_file("big.py", text)
    abstract = fc.abstract.text
    assert abstract.startswith("# big.py:1-") and "(abstract)" in abstract.split("\n")[0]
    assert "class Big(Base):" in abstract and '"""A big class."""' in abstract
    assert "    def m1(self, x):" in abstract and '"""Method 1."""' in abstract
    assert "y = x + 1" not in abstract and "return w" not in abstract
    assert "def tail():" in abstract


def test_abstract_for_brace_languages_drops_bodies():
    text = "// Adds.\nint add(int a, int b) {\n  return a + b;\n}\nstruct P { int x; };\n"
    fc = chunk_file("m.c", text)
    assert "// Adds.\nint add(int a, int b) { ... }" in fc.abstract.text
    assert "return a + b" not in fc.abstract.text
    assert fc.syntax[0].text.startswith("// m.c:2-4")


def test_chunk_for_index_covers_every_line_once_plus_abstract():
    text = "import os\n\nCONST = 1\n\n" + _long_class(2) + "\nprint(tail())\n"
    chunks = chunk_for_index("pkg/m.py", text)
    assert chunks[-1].kind == "abstract"
    body = [c for c in chunks if c.kind != "abstract"]
    lines = text.split("\n")
    seen = [n for c in body for n in range(c.start_line, c.end_line + 1)]
    assert len(seen) == len(set(seen))  # no overlap between syntax chunks and gap blocks
    assert set(seen) >= {n for n, line in enumerate(lines, 1) if line.strip()}


def test_chunk_for_index_declines_other_file_types_and_handles_empty_files():
    assert chunk_for_index("README.md", "# title") is None
    assert chunk_for_index("empty.py", "") == []
