import gzip
import json

from index.ingest import (IngestConfig, chunk_text, code_blocks, file_kind, html_passages,
                          jsonl_records, read_text, split_passages)
from index.types import Chunk


def _lines(text, chunk):
    return "\n".join(text.splitlines()[chunk.start_line - 1 : chunk.end_line])


def test_passages_keep_whole_paragraphs_with_true_line_spans():
    text = "Title\n\nfirst para line one\nline two\n\n\nsecond para\n   \nthird"
    chunks = split_passages(text, "a.md", IngestConfig(passage_chars=30))
    assert [(c.start_line, c.end_line) for c in chunks] == [(1, 1), (3, 4), (7, 9)]
    assert chunks[1].text == "first para line one\nline two"
    assert chunks[2].text == "second para\n\nthird"
    big = split_passages(text, "a.md")  # default size: everything fits in one passage
    assert len(big) == 1 and (big[0].start_line, big[0].end_line) == (1, 9)


def test_passages_on_real_devdocs_page_cover_every_word(shared_data):
    with gzip.open(shared_data / "coderag" / "devdocs.jsonl.gz", "rt") as handle:
        page = json.loads(next(handle))["text"]
    chunks = split_passages(page, "p.txt", IngestConfig(passage_chars=400))
    assert len(chunks) > 3 and all(len(c.text) <= 400 or "\n" not in c.text for c in chunks)
    assert " ".join(" ".join(c.text for c in chunks).split()) == " ".join(page.split())
    for chunk in chunks:  # every span points at lines holding exactly that text
        assert " ".join(chunk.text.split()) == " ".join(_lines(page, chunk).split())


def test_awkward_inputs():
    assert split_passages("", "e.txt") == []
    assert split_passages("\n\n  \n", "e.txt") == []
    one = split_passages("x", "e.txt")
    assert one == [Chunk("x", "e.txt", 1, 1, "passage")]
    emoji = split_passages("héllo 🙂\n\nwörld", "e.txt", IngestConfig(passage_chars=5))
    assert [c.text for c in emoji] == ["héllo 🙂", "wörld"]


def test_code_blocks_cut_at_blank_lines_and_rejoin_to_source():
    source = "\n".join(
        f"def f{i}():\n    a = {i}\n    b = a + 1\n    return b\n" for i in range(10))
    blocks = code_blocks(source, "m.py", IngestConfig(block_lines=9, max_block_lines=20))
    assert all(b.kind == "block" for b in blocks)
    assert all(6 <= b.end_line - b.start_line + 1 <= 20 for b in blocks[:-1])
    for block in blocks:
        assert block.text == _lines(source, block)
        assert block.text.startswith("def ")  # cut at blank lines, never inside a function
    covered = {n for b in blocks for n in range(b.start_line, b.end_line + 1)}
    nonblank = {i + 1 for i, line in enumerate(source.splitlines()) if line.strip()}
    assert nonblank <= covered
    dense = "\n".join(f"x{i} = {i}" for i in range(70))  # no blank lines: forced cuts
    assert [b.end_line - b.start_line + 1 for b in code_blocks(dense, "d.py")] == [30, 30, 10]


def test_html_passages_skip_scripts_and_map_lines():
    html = ("<html><head><title>T</title><script>var x = 1;</script></head>\n<body>\n"
            "<h1>Install</h1>\n<p>Run pip install\ncodehop now.</p>\n<style>p{}</style>\n"
            "<p>Second &amp; last.</p>\n</body></html>")
    chunks = html_passages(html, "i.html", IngestConfig(passage_chars=25))
    text = " ".join(c.text for c in chunks)
    assert "var x" not in text and "p{}" not in text and "Second & last." in text
    tail = next(c for c in chunks if "codehop now." in c.text)
    assert tail.end_line == 5 and tail.text.startswith("codehop now.")  # cut inside <p>
    whole = html_passages(html, "i.html")
    assert len(whole) == 1 and (whole[0].start_line, whole[0].end_line) == (3, 7)
    assert whole[0].text == "Install\n\nRun pip install\ncodehop now.\n\nSecond & last."


def test_jsonl_one_chunk_per_record_with_metadata():
    text = '{"id": "a", "text": "alpha"}\n\n{"id": "b", "contents": "beta", "n": [1]}\nnot json\n'
    chunks, reason = jsonl_records(text, "r.jsonl")
    assert reason == "" and [(c.text, c.start_line, c.metadata) for c in chunks] == [
        ("alpha", 1, {"id": "a"}), ("beta", 3, {"id": "b"})]
    assert jsonl_records('{"title": "x"}\n', "r.jsonl") == ([], "no record has a text field "
                                                                 "(text, contents, content, body)")
    assert jsonl_records("nope\n", "r.jsonl")[1] == "1 lines are not valid JSON"


def test_chunk_text_dispatch_and_injected_chunker():
    assert file_kind("a.PY") == "code" and file_kind("x.rst") == "text"
    assert file_kind("p.htm") == "html" and file_kind("d.jsonl") == "jsonl"
    assert chunk_text("a.py", "x = 1\n")[0][0].kind == "block"
    mine = [Chunk("custom", "a.py", 1, 1, "syntax")]
    assert chunk_text("a.py", "x = 1\n", chunker=lambda p, t: mine)[0] == mine
    assert chunk_text("a.py", "x = 1\n", chunker=lambda p, t: None)[0][0].kind == "block"
    assert chunk_text("e.txt", "  \n") == ([], "empty file")


def test_read_text_gives_the_reason_a_file_is_skipped(tmp_path):
    (tmp_path / "ok.txt").write_text("fine")
    (tmp_path / "bin.dat").write_bytes(b"\x7fELF\x00\x01\x02")
    (tmp_path / "latin.txt").write_bytes("café".encode("latin-1"))
    assert read_text(tmp_path / "ok.txt") == ("fine", "")
    assert read_text(tmp_path / "bin.dat") == (None, "binary file")
    assert read_text(tmp_path / "latin.txt") == ("café", "")  # detected: index.files (tests/index/test_files.py)
    assert read_text(tmp_path / "ok.txt", IngestConfig(max_file_bytes=2))[1].startswith("larger")
    assert read_text(tmp_path / "gone.txt")[1].startswith("unreadable")
