"""Contextual chunk text: what BM25 and the embedder see of a chunk, besides the chunk itself.

A passage cut out of a long page loses what the page is about: "Returns a new object with
the values replaced" could be any of a hundred API pages. Indexing each chunk with its
document's title and section headings puts that back, for BM25 and the embedder alike, while
the stored and displayed text stays the chunk (METHODS.md, "Contextual chunk text").

    indexed_text("Replace values where the condition is False.",
                 "pandas~1/reference/api/pandas.dataframe.where.txt", "passage", {})
    -> "pandas~1 / reference / api / pandas.dataframe.where\\nReplace values where ..."

The title is the chunk's `title` metadata when it has one, else its document path with the
file suffix dropped and "/" spaced so that a sentence embedder reads the parts; markdown and
reStructuredText chunks add their heading trail (`headings` metadata, from `index.ingest`).
Syntax chunks and file abstracts of the tree-sitter chunker already open with a
`# path:lines` line, so they are indexed as they are.
"""

from __future__ import annotations

from typing import Any, Iterable

# Chunk kinds whose text already names its file in a header line (code_tools.chunker).
SELF_DESCRIBED_KINDS = frozenset({"syntax", "abstract"})
HEADING_SEPARATOR = " > "
# The stand-in path of a text added without one (index.collection.Collection.add_texts).
UNNAMED_PREFIX = "text:"


def title_of(path: str) -> str:
    """A readable document title from its path: "a/b/c.txt" -> "a / b / c".

    A path with a `#fragment` (an in-document anchor) keeps only the document part.
    """
    document = path.split("#", 1)[0]
    head, _, last = document.rpartition("/")
    stem = last.rsplit(".", 1)[0] if "." in last.lstrip(".") else last
    parts = [p for p in head.split("/") if p] + [stem or last]
    return " / ".join(parts)


def context_header(path: str, kind: str, metadata: dict[str, Any]) -> str:
    """The header line(s) a chunk is indexed with; "" for chunks that carry their own, and
    no title for a text added without a path (its stand-in path, "text:<hash>", says nothing)."""
    if kind in SELF_DESCRIBED_KINDS:
        return ""
    named = not path.startswith(UNNAMED_PREFIX)
    title = str(metadata.get("title") or (title_of(path) if named else "")).strip()
    headings = metadata.get("headings") or ()
    trail = HEADING_SEPARATOR.join(str(h).strip() for h in headings if str(h).strip())
    return "\n".join(part for part in (title, trail) if part)


def indexed_text(text: str, path: str, kind: str, metadata: dict[str, Any],
                 enabled: bool = True) -> str:
    """The text BM25 tokenises and the embedder embeds for one chunk (see the module doc)."""
    header = context_header(path, kind, metadata) if enabled else ""
    return f"{header}\n{text}" if header else text


def heading_trail(lines: Iterable[str]) -> list[tuple[int, int, str]]:
    """(line number, level, title) of each markdown ATX heading ("## Title"), 1-based lines;
    headings inside fenced code blocks are not headings.

    heading_trail(["# A", "text", "## B", "```", "# not", "```"]) -> [(1, 1, "A"), (3, 2, "B")]
    """
    found: list[tuple[int, int, str]] = []
    fenced = False
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if fenced or not stripped.startswith("#"):
            continue
        marks = len(stripped) - len(stripped.lstrip("#"))
        title = stripped[marks:].strip().strip("#").strip()
        if 1 <= marks <= 6 and title and stripped[marks:marks + 1] in (" ", "\t"):
            found.append((number, marks, title))
    return found


def headings_at(trail: list[tuple[int, int, str]], line: int) -> list[str]:
    """The heading path in force at `line`: the last heading of each level above it.

    headings_at([(1, 1, "A"), (3, 2, "B"), (9, 2, "C")], 10) -> ["A", "C"]
    """
    path: list[tuple[int, str]] = []
    for number, level, title in trail:
        if number > line:
            break
        path = [(lv, t) for lv, t in path if lv < level] + [(level, title)]
    return [title for _, title in path]
