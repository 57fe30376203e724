"""Files -> chunks: reading text safely and the built-in chunkers (index.walk finds the files).

- text / markdown / rst: passages of whole paragraphs (blank-line separated) packed up to
  `passage_chars`; a paragraph longer than that is cut at line boundaries.
- html: the visible text (no script/style), packed into passages the same way; line spans
  refer to the lines of the HTML source.
- source code: ~`block_lines`-line blocks, each ending at the first blank line after 2/3 of
  the target (a forced cut at `max_block_lines`). An injected `chunker` (e.g. code_tools'
  tree-sitter `chunk_for_index`) wins whenever it returns a list.
- .jsonl: one chunk per record with a text field; its other scalar fields become metadata.

Lines are 1-based and inclusive. Example: "a\\nb\\n\\nc" with a small passage_chars gives the
passages "a\\nb" (lines 1-2) and "c" (line 4).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable

from index.context import heading_trail, headings_at
from index.types import Chunk

Chunker = Callable[[str, str], "list[Chunk] | None"]

MARKDOWN_SUFFIXES = {".md", ".markdown"}
TEXT_SUFFIXES = {".txt", ".text", ".md", ".markdown", ".rst", ".adoc", ".org", ""}
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
CODE_SUFFIXES = {
    ".py", ".pyi", ".js", ".jsx", ".mjs", ".ts", ".tsx", ".java", ".go", ".rs", ".c", ".h", ".cc",
    ".cpp", ".cxx", ".hpp", ".cs", ".rb", ".php", ".swift", ".kt", ".kts", ".scala", ".sh", ".bash",
    ".lua", ".r", ".jl", ".sql", ".toml", ".yaml", ".yml", ".cfg", ".ini", ".json", ".css", ".scss",
    ".vue", ".svelte", ".dart", ".ex", ".exs", ".erl", ".hs", ".ml", ".pl", ".m", ".mm",
}
_JSONL_TEXT_FIELDS = ("text", "contents", "content", "body")


@dataclass(frozen=True)
class IngestConfig:
    """Chunk sizes and file limits.

    Args:
        passage_chars: target size of a prose passage (whole paragraphs are packed up to it).
        block_lines: target lines of a code block.
        max_block_lines: hard cut for a code block without blank lines.
        max_file_bytes: larger files are skipped with a reason.
    """

    passage_chars: int = 1000
    block_lines: int = 15
    max_block_lines: int = 30
    max_file_bytes: int = 8 * 1024 * 1024


def file_kind(path: str) -> str:
    """"html", "jsonl", "code" or "text" (unknown suffixes are read as text if they decode)."""
    suffix = Path(path).suffix.lower()
    if suffix in HTML_SUFFIXES:
        return "html"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in CODE_SUFFIXES:
        return "code"
    return "text"


def read_text(path: Path, config: IngestConfig = IngestConfig()) -> tuple[str | None, str]:
    """(text, "") for a readable text file (UTF-8, or another encoding detected with
    confidence: index.files), else (None, reason it was skipped). Never blocks on a FIFO."""
    from index.files import read_file

    read = read_file(path, config.max_file_bytes)
    return read.text, read.reason


def _pack(lines: list[tuple[int, str]], path: str, config: IngestConfig, kind: str) -> list[Chunk]:
    """Pack (line number, text) pairs into passages of whole paragraphs."""
    paragraphs: list[list[tuple[int, str]]] = []
    current: list[tuple[int, str]] = []
    for number, line in lines:
        if line.strip():
            current.append((number, line.rstrip()))
        elif current:
            paragraphs.append(current)
            current = []
    if current:
        paragraphs.append(current)
    # A paragraph longer than a passage is cut into line runs that each fit.
    pieces: list[list[tuple[int, str]]] = []
    for paragraph in paragraphs:
        run: list[tuple[int, str]] = []
        size = 0
        for item in paragraph:
            if run and size + len(item[1]) + 1 > config.passage_chars:
                pieces.append(run)
                run, size = [], 0
            run.append(item)
            size += len(item[1]) + 1
        pieces.append(run)
    chunks: list[Chunk] = []
    group: list[list[tuple[int, str]]] = []
    size = 0
    for piece in pieces:
        piece_size = sum(len(text) + 1 for _, text in piece)
        if group and size + piece_size > config.passage_chars:
            chunks.append(_passage(group, path, kind))
            group, size = [], 0
        group.append(piece)
        size += piece_size + 1
    if group:
        chunks.append(_passage(group, path, kind))
    return chunks


def _passage(group: list[list[tuple[int, str]]], path: str, kind: str) -> Chunk:
    text = "\n\n".join("\n".join(t for _, t in piece) for piece in group)
    return Chunk(text, path, group[0][0][0], group[-1][-1][0], kind)


def split_passages(text: str, path: str, config: IngestConfig = IngestConfig()) -> list[Chunk]:
    """Prose -> passages of whole paragraphs (see the module docstring). Markdown passages
    record the headings they sit under (`headings` metadata: index.context indexes them)."""
    lines = text.splitlines()
    chunks = _pack(list(enumerate(lines, start=1)), path, config, "passage")
    if Path(path).suffix.lower() not in MARKDOWN_SUFFIXES:
        return chunks
    trail = heading_trail(lines)
    return [_with_headings(chunk, trail) for chunk in chunks]


def _with_headings(chunk: Chunk, trail: list[tuple[int, int, str]]) -> Chunk:
    """The chunk with the heading path above its first line (a heading that opens the chunk
    is in its text already, so only its parents are added)."""
    above = [(number, level, title) for number, level, title in trail if number < chunk.start_line]
    opening = next((level for number, level, _ in trail if number == chunk.start_line), None)
    if opening is not None:  # siblings and deeper headings of the opening one are not above it
        above.append((chunk.start_line, opening, ""))
    headings = [title for title in headings_at(above, chunk.start_line) if title]
    if not headings:
        return chunk
    return replace(chunk, metadata={**chunk.metadata, "headings": headings})


class _HTMLText(HTMLParser):
    """Collects visible text per source line; block tags end a paragraph."""

    _BLOCK = {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "pre",
              "table", "tr", "section", "article", "header", "footer", "blockquote", "hr", "dd", "dt"}
    _HIDDEN = {"script", "style", "noscript", "template", "head"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: dict[int, str] = {}
        self.breaks: set[int] = set()  # a paragraph starts on this line (opening block tag)
        self.ends: set[int] = set()  # a paragraph ends on this line (closing block tag)
        self._hidden = 0

    def handle_starttag(self, tag, attrs):
        if tag in self._HIDDEN:
            self._hidden += 1
        if tag in self._BLOCK:
            self.breaks.add(self.getpos()[0])

    def handle_endtag(self, tag):
        if tag in self._HIDDEN and self._hidden:
            self._hidden -= 1
        if tag in self._BLOCK:
            self.ends.add(self.getpos()[0])

    def handle_data(self, data):
        if self._hidden:
            return
        line = self.getpos()[0]
        for offset, part in enumerate(data.split("\n")):
            if part.strip():
                self.lines[line + offset] = (self.lines.get(line + offset, "") + " " + part.strip()).strip()


def html_passages(text: str, path: str, config: IngestConfig = IngestConfig()) -> list[Chunk]:
    """Visible text of an HTML page as passages; spans are lines of the HTML source."""
    parser = _HTMLText()
    parser.feed(text)
    parser.close()
    lines: list[tuple[int, str]] = []
    for number in sorted(parser.lines):
        previous = lines[-1][0] if lines else None
        gap = previous is not None and (number > previous + 1 or previous in parser.ends)
        if (gap or number in parser.breaks) and lines and lines[-1][1]:
            lines.append((number, ""))  # paragraph break before this line
        lines.append((number, parser.lines[number]))
    return _pack(lines, path, config, "passage")


def code_blocks(text: str, path: str, config: IngestConfig = IngestConfig()) -> list[Chunk]:
    """Source -> ~block_lines-line blocks cut at blank lines (whitespace-only blocks dropped)."""
    lines = text.splitlines()
    chunks: list[Chunk] = []
    start = 0
    min_lines = max(1, (2 * config.block_lines) // 3)
    while start < len(lines):
        end = start
        while end < len(lines):
            length = end - start + 1
            if length >= config.max_block_lines:
                break
            if length >= min_lines and not lines[end].strip():
                break
            end += 1
        end = min(end, len(lines) - 1)
        body = lines[start : end + 1]
        if any(line.strip() for line in body):
            # Trim blank edges so spans point at real code.
            first = next(i for i, line in enumerate(body) if line.strip())
            last = len(body) - next(i for i, line in enumerate(reversed(body)) if line.strip())
            chunks.append(Chunk("\n".join(body[first:last]), path, start + first + 1,
                                start + last, "block"))
        start = end + 1
    return chunks


def jsonl_records(text: str, path: str) -> tuple[list[Chunk], str]:
    """One chunk per JSON record with a text field; (chunks, reason) where reason explains why
    nothing was found."""
    chunks: list[Chunk] = []
    bad = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if not isinstance(record, dict):
            continue
        field = next((f for f in _JSONL_TEXT_FIELDS if isinstance(record.get(f), str)), None)
        if field is None or not record[field].strip():
            continue
        metadata = {k: v for k, v in record.items()
                    if k != field and isinstance(v, (str, int, float, bool)) and len(str(v)) <= 200}
        chunks.append(Chunk(record[field], path, number, number, "record", metadata))
    if chunks:
        return chunks, ""
    if bad:
        return [], f"{bad} lines are not valid JSON"
    return [], f"no record has a text field ({', '.join(_JSONL_TEXT_FIELDS)})"


def chunk_text(
    path: str, text: str, config: IngestConfig = IngestConfig(), chunker: Chunker | None = None
) -> tuple[list[Chunk], str]:
    """Chunks of one file's text by its type; (chunks, reason) where reason is why none."""
    if chunker is not None:
        injected = chunker(path, text)
        if injected is not None:
            return list(injected), "" if injected else "no chunks"
    kind = file_kind(path)
    if kind == "jsonl":
        return jsonl_records(text, path)
    if kind == "html":
        chunks = html_passages(text, path, config)
    elif kind == "code":
        chunks = code_blocks(text, path, config)
    else:
        chunks = split_passages(text, path, config)
    return chunks, "" if chunks else "empty file"
