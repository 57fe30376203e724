"""Code chunkers: syntax chunks, ~15-line blocks and file abstracts, each with a path+lines header.

A chunker never touches an index: it turns (path, text) into `index.types.Chunk`s.

- syntax chunks: one per definition (top-level function, small class, or each method of a large
  class with the class signature as context); a definition longer than `max_syntax_lines` is
  split at blank lines, each continuation piece carrying its signature as context;
- blocks: ~`block_lines`-line windows cut at blank lines (forced cut at `max_block_lines`);
- abstract: signatures and docstrings of a file, bodies replaced by "...".

Every chunk's text starts with a header naming the file and lines, e.g. ``# pkg/mod.py:10-24``.
Example: ``class A:\\n    def f(self):\\n        return 1`` with max_syntax_lines=60 gives one
syntax chunk ``# a.py:1-3\\nclass A:\\n    def f(self):\\n        return 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

from code_tools.languages import FileOutline, LanguageSpec, Symbol, language_for_path, outline
from index.types import Chunk


@dataclass(frozen=True)
class ChunkerConfig:
    """Chunk sizes in lines.

    Args:
        block_lines: target length of a block; a block ends at the first blank line after
            2/3 of it.
        max_block_lines: a block is cut here even without a blank line.
        max_syntax_lines: definitions longer than this are split into pieces.
        docstring_lines: lines of a docstring kept in an abstract.
    """

    block_lines: int = 15
    max_block_lines: int = 30
    max_syntax_lines: int = 60
    docstring_lines: int = 3


@dataclass
class FileChunks:
    """All chunk kinds of one file plus its outline (None for files we do not parse)."""

    path: str
    outline: FileOutline | None
    syntax: list[Chunk]
    blocks: list[Chunk]
    abstract: Chunk | None

    def all(self) -> list[Chunk]:
        return self.syntax + self.blocks + ([self.abstract] if self.abstract else [])


def header(path: str, start: int, end: int, comment: str = "#", note: str = "") -> str:
    """The first line of every chunk: ``# path:start-end`` (+ an optional note)."""
    return f"{comment} {path}:{start}-{end}{' ' + note if note else ''}"


def _make(path, lines, start, end, comment, kind, context=(), **metadata) -> Chunk:
    body = "\n".join(lines[start - 1:end])
    parts = [header(path, start, end, comment), *context, body]
    return Chunk(text="\n".join(parts), path=path, start_line=start, end_line=end, kind=kind,
                 metadata=metadata)


def _split_ranges(lines: list[str], start: int, end: int, target: int, limit: int):
    """Cut lines start..end (1-based inclusive) into pieces at blank lines.

    A piece ends at a blank line once it has 2/3 of `target` lines, or at `limit` lines.
    Example: 40 non-blank lines, target 15, limit 30 -> (1, 30), (31, 40).
    """
    pieces = []
    first = start
    for number in range(start, end + 1):
        size = number - first + 1
        blank = not lines[number - 1].strip()
        if (blank and size >= max(1, 2 * target // 3)) or size >= limit:
            pieces.append((first, number))
            first = number + 1
    if first <= end:
        pieces.append((first, end))
    # Drop pieces that are only blank lines; trim blank edges so line ranges stay honest.
    trimmed = []
    for a, b in pieces:
        while a <= b and not lines[a - 1].strip():
            a += 1
        while b >= a and not lines[b - 1].strip():
            b -= 1
        if a <= b:
            trimmed.append((a, b))
    return trimmed


def block_chunks(path: str, text: str, config: ChunkerConfig = ChunkerConfig(),
                 comment: str = "#", ranges: list[tuple[int, int]] | None = None) -> list[Chunk]:
    """~15-line blocks split at blank lines, over the whole file or the given line ranges."""
    lines = text.split("\n")
    ranges = ranges if ranges is not None else [(1, len(lines))]
    chunks = []
    for start, end in ranges:
        for a, b in _split_ranges(lines, start, end, config.block_lines, config.max_block_lines):
            chunks.append(_make(path, lines, a, b, comment, "block"))
    return chunks


def _signature(symbol: Symbol, out: FileOutline) -> tuple[str, object | None]:
    """Source text of a definition up to its body (decorators included), and the body node."""
    node = _node_at(out, symbol)
    body = _body(node, out.language)
    end = body.start_byte if body is not None else symbol.end_byte
    return out.source[symbol.start_byte:end].decode("utf-8", "replace").rstrip(), body


def _node_at(out: FileOutline, symbol: Symbol):
    return out.tree.root_node.descendant_for_byte_range(symbol.start_byte, symbol.end_byte)


def _body(node, spec: LanguageSpec):
    if node.type == "decorated_definition":
        node = node.child_by_field_name("definition") or node
    body = node.child_by_field_name(spec.body_field)
    if body is None and node.type in ("type_declaration",):
        spec_node = node.named_children[0] if node.named_children else None
        body = spec_node.child_by_field_name("type") if spec_node is not None else None
    if body is None and node.type in ("lexical_declaration", "variable_declaration"):
        for child in node.named_children:
            value = child.child_by_field_name("value")
            if value is not None:
                return value.child_by_field_name("body")
    return body


def _docstring(body, out: FileOutline, keep: int) -> list[str]:
    """Python docstring lines (at most `keep`), re-indented to the body's column."""
    if body is None or out.language.name != "python" or not body.named_children:
        return []
    first = body.named_children[0]
    if first.type == "expression_statement" and first.named_children:
        first = first.named_children[0]
    if first.type != "string":
        return []
    text = out.source[first.start_byte:first.end_byte].decode("utf-8", "replace").split("\n")
    indent = " " * first.start_point[1]
    kept = [indent + text[0]] + [(indent + line.strip()).rstrip() for line in text[1:keep]]
    if len(text) > keep:
        quote = '"""' if text[0].lstrip("rbuRBU").startswith('"""') else "'''"
        kept.append(indent + "..." + quote)
    return kept


def _leading_comment(node, out: FileOutline) -> list[str]:
    """Doc comments directly above a definition (non-Python languages)."""
    comments = []
    sibling = node.prev_named_sibling
    line = node.start_point[0]
    while sibling is not None and sibling.type == "comment" and sibling.end_point[0] >= line - 1:
        comments.insert(0, out.source[sibling.start_byte:sibling.end_byte].decode("utf-8", "replace"))
        line = sibling.start_point[0]
        sibling = sibling.prev_named_sibling
    return comments


def file_abstract(path: str, out: FileOutline, config: ChunkerConfig = ChunkerConfig()) -> Chunk | None:
    """Signatures + docstrings of every definition not nested in a function; bodies -> '...'."""
    spec = out.language
    python = spec.name == "python"
    visible = _visible_symbols(out.symbols)
    if not visible:
        return None
    parts: list[str] = []
    has_child = {s.parent for s in visible if s.parent}
    lines = out.source.decode("utf-8", "replace").split("\n")
    for symbol in visible:
        node = _node_at(out, symbol)
        signature, body = _signature(symbol, out)
        indent = _indent_of(lines[symbol.start_line - 1])
        column = len(indent)
        if not python:
            parts.extend(indent + c for c in _leading_comment(node, out))
        parts.append(indent + signature)
        if python:
            parts.extend(_docstring(body, out, config.docstring_lines))
            if symbol.kind != "class" or symbol.qualname not in has_child:
                body_indent = " " * (body.start_point[1] if body is not None else column + 4)
                parts.append(body_indent + "...")
        elif body is not None and symbol.kind not in ("class", "namespace"):
            parts[-1] += " { ... }"
        elif body is not None and symbol.qualname not in has_child:
            parts[-1] += " { ... }"
    last_line = out.source.count(b"\n") + 1
    text = "\n".join([header(path, 1, last_line, spec.comment, "(abstract)"), *parts])
    return Chunk(text=text, path=path, start_line=1, end_line=last_line, kind="abstract",
                 metadata={"language": spec.name})


def _visible_symbols(symbols: list[Symbol]) -> list[Symbol]:
    """Definitions not nested inside a function or method (nested helpers stay in their parent)."""
    kinds = {s.qualname: s.kind for s in symbols}
    visible = []
    for symbol in symbols:
        parent, hidden = symbol.parent, False
        while parent is not None:
            if kinds.get(parent) in ("function", "method"):
                hidden = True
                break
            parent = parent.rsplit(".", 1)[0] if "." in parent else None
        if not hidden:
            visible.append(symbol)
    return visible


def syntax_chunks(path: str, text: str, out: FileOutline,
                  config: ChunkerConfig = ChunkerConfig()) -> list[Chunk]:
    """One chunk per definition; long classes become their head + one chunk per method."""
    lines = text.split("\n")
    comment = out.language.comment
    visible = _visible_symbols(out.symbols)
    by_name = {s.qualname: s for s in visible}
    children: dict[str, list[Symbol]] = {}
    for symbol in visible:
        if symbol.parent:
            children.setdefault(symbol.parent, []).append(symbol)
    chunks: list[Chunk] = []

    def context_of(symbol: Symbol) -> list[str]:
        ctx, parent = [], symbol.parent
        while parent is not None and parent in by_name:
            owner = by_name[parent]
            ctx.insert(0, lines[owner.start_line - 1] if owner.kind != "class" else
                       _first_signature_line(owner, out, lines))
            parent = owner.parent
        return ctx

    def emit(symbol: Symbol) -> None:
        size = symbol.end_line - symbol.start_line + 1
        kids = children.get(symbol.qualname, [])
        meta = {"language": out.language.name, "symbol": symbol.qualname, "symbol_kind": symbol.kind}
        if symbol.kind in ("class", "namespace") and kids and (
            size > config.max_syntax_lines or symbol.kind == "namespace"
        ):
            # Head: from the class line to just before its first member definition.
            head_end = kids[0].start_line - 1
            while head_end > symbol.start_line and not lines[head_end - 1].strip():
                head_end -= 1
            if symbol.kind == "class" and head_end >= symbol.start_line:
                chunks.append(_make(path, lines, symbol.start_line, head_end, comment, "syntax",
                                    context_of(symbol), part=0, **meta))
            for kid in kids:
                emit(kid)
            return
        if symbol.kind == "namespace":
            return
        context = context_of(symbol)
        if size <= config.max_syntax_lines:
            chunks.append(_make(path, lines, symbol.start_line, symbol.end_line, comment, "syntax",
                                context, **meta))
            return
        pieces = _split_ranges(lines, symbol.start_line, symbol.end_line,
                               config.max_syntax_lines, config.max_syntax_lines)
        signature = _first_signature_line(symbol, out, lines)
        for number, (a, b) in enumerate(pieces):
            extra = [] if number == 0 else [signature, _indent_of(lines[a - 1]) + "..."]
            chunks.append(_make(path, lines, a, b, comment, "syntax", context + extra,
                                part=number, **meta))

    for symbol in visible:
        if symbol.parent is None or symbol.parent not in by_name:
            emit(symbol)
    return chunks


def _indent_of(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _first_signature_line(symbol: Symbol, out: FileOutline, lines: list[str]) -> str:
    """The line of a definition that holds its keyword/name (skips Python decorators)."""
    for number in range(symbol.start_line, symbol.end_line + 1):
        stripped = lines[number - 1].lstrip()
        if stripped and not stripped.startswith("@"):
            return lines[number - 1]
    return lines[symbol.start_line - 1]


def chunk_file(path: str, text: str, config: ChunkerConfig = ChunkerConfig()) -> FileChunks:
    """Every chunk kind for one file (blocks only, no outline, for file types we do not parse)."""
    out = outline(path, text)
    if out is None:
        return FileChunks(path, None, [], block_chunks(path, text, config), None)
    return FileChunks(
        path=path,
        outline=out,
        syntax=syntax_chunks(path, text, out, config),
        blocks=block_chunks(path, text, config, out.language.comment),
        abstract=file_abstract(path, out, config),
    )


def chunk_for_index(path: str, text: str) -> list[Chunk] | None:
    """Chunker for `Collection.add_paths(chunker=...)`: syntax chunks, blocks for the lines no
    definition covers (module-level code), and the file abstract; None for other file types."""
    if language_for_path(path) is None:
        return None
    config = ChunkerConfig()
    out = outline(path, text)
    syntax = syntax_chunks(path, text, out, config)
    covered = set()
    for chunk in syntax:
        covered.update(range(chunk.start_line, chunk.end_line + 1))
    n_lines = len(text.split("\n"))
    gaps, start = [], None
    for number in range(1, n_lines + 2):
        inside = number <= n_lines and number not in covered
        if inside and start is None:
            start = number
        elif not inside and start is not None:
            gaps.append((start, number - 1))
            start = None
    blocks = block_chunks(path, text, config, out.language.comment, ranges=gaps)
    abstract = file_abstract(path, out, config)
    chunks = sorted(syntax + blocks, key=lambda c: (c.start_line, c.end_line))
    return chunks + ([abstract] if abstract else [])
