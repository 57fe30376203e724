"""tree-sitter languages: file types, parsers and the queries that find definitions, imports, calls.

One `LanguageSpec` per language holds three tree-sitter queries (0.25+ API: `Query(lang, src)`,
`QueryCursor(query).matches(node)`), written against tree-sitter-language-pack 0.13's grammars:

- definitions capture the whole definition as `@definition.function|class|method` and its name
  as `@name` (C/C++ capture `@declarator` instead; the name is the innermost declarator);
- imports capture the imported module/file as `@module` and imported names as `@name`;
- calls capture the called name as `@call` (`obj.method(...)` -> "method").

`outline(path, text)` parses once and returns a `FileOutline` with all three, e.g. for
``class A:\\n    def f(self): return g()`` -> symbols [A (class, 1-2), A.f (method, 2-2)],
calls [g].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import PurePosixPath

from runtime.errors import MissingDependencyError


@dataclass(frozen=True)
class LanguageSpec:
    """How one language is parsed: tree-sitter grammar name, file suffixes, queries."""

    name: str
    grammar: str
    suffixes: tuple[str, ...]
    comment: str  # line-comment prefix used for chunk headers
    definitions: str
    imports: str
    calls: str
    body_field: str = "body"  # the field whose text an abstract replaces by "..."


_PY = LanguageSpec(
    name="python",
    grammar="python",
    suffixes=(".py", ".pyi"),
    comment="#",
    definitions="""
    (function_definition name: (identifier) @name) @definition.function
    (class_definition name: (identifier) @name) @definition.class
    """,
    imports="""
    (import_statement name: (dotted_name) @module)
    (import_statement name: (aliased_import name: (dotted_name) @module))
    (import_from_statement module_name: (_) @module name: (dotted_name) @name)
    (import_from_statement module_name: (_) @module name: (aliased_import name: (dotted_name) @name))
    (import_from_statement module_name: (_) @module (wildcard_import))
    """,
    calls="""
    (call function: (identifier) @call)
    (call function: (attribute attribute: (identifier) @call))
    (decorator (identifier) @call)
    """,
)

_JS_DEFS = """
    (function_declaration name: (identifier) @name) @definition.function
    (generator_function_declaration name: (identifier) @name) @definition.function
    (method_definition name: (property_identifier) @name) @definition.method
    (lexical_declaration (variable_declarator name: (identifier) @name
        value: [(arrow_function) (function_expression)])) @definition.function
    (variable_declaration (variable_declarator name: (identifier) @name
        value: [(arrow_function) (function_expression)])) @definition.function
"""
_JS_IMPORTS = """
    (import_statement source: (string (string_fragment) @module))
    (import_specifier name: (identifier) @name)
    (import_clause (identifier) @name)
    (call_expression function: (identifier) @_require
        arguments: (arguments (string (string_fragment) @module)) (#eq? @_require "require"))
"""
_JS_CALLS = """
    (call_expression function: (identifier) @call)
    (call_expression function: (member_expression property: (property_identifier) @call))
    (new_expression constructor: (identifier) @call)
"""

_JS = LanguageSpec(
    name="javascript",
    grammar="javascript",
    suffixes=(".js", ".jsx", ".mjs", ".cjs"),
    comment="//",
    definitions=_JS_DEFS + "(class_declaration name: (identifier) @name) @definition.class",
    imports=_JS_IMPORTS,
    calls=_JS_CALLS,
)

_TS_DEFS = _JS_DEFS + """
    (class_declaration name: (type_identifier) @name) @definition.class
    (abstract_class_declaration name: (type_identifier) @name) @definition.class
    (interface_declaration name: (type_identifier) @name) @definition.class
    (enum_declaration name: (identifier) @name) @definition.class
    (function_signature name: (identifier) @name) @definition.function
"""

_TS = LanguageSpec(
    name="typescript",
    grammar="typescript",
    suffixes=(".ts", ".mts", ".cts"),
    comment="//",
    definitions=_TS_DEFS,
    imports=_JS_IMPORTS,
    calls=_JS_CALLS,
)
_TSX = LanguageSpec(
    name="tsx", grammar="tsx", suffixes=(".tsx",), comment="//",
    definitions=_TS_DEFS, imports=_JS_IMPORTS, calls=_JS_CALLS,
)

_JAVA = LanguageSpec(
    name="java",
    grammar="java",
    suffixes=(".java",),
    comment="//",
    definitions="""
    (class_declaration name: (identifier) @name) @definition.class
    (interface_declaration name: (identifier) @name) @definition.class
    (enum_declaration name: (identifier) @name) @definition.class
    (record_declaration name: (identifier) @name) @definition.class
    (method_declaration name: (identifier) @name) @definition.method
    (constructor_declaration name: (identifier) @name) @definition.method
    """,
    imports="(import_declaration [(scoped_identifier) (identifier)] @module)",
    calls="""
    (method_invocation name: (identifier) @call)
    (object_creation_expression type: (type_identifier) @call)
    """,
)

_GO = LanguageSpec(
    name="go",
    grammar="go",
    suffixes=(".go",),
    comment="//",
    definitions="""
    (function_declaration name: (identifier) @name) @definition.function
    (method_declaration name: (field_identifier) @name) @definition.method
    (type_declaration (type_spec name: (type_identifier) @name)) @definition.class
    """,
    imports="(import_spec path: (interpreted_string_literal) @module)",
    calls="""
    (call_expression function: (identifier) @call)
    (call_expression function: (selector_expression field: (field_identifier) @call))
    """,
)

_RUST = LanguageSpec(
    name="rust",
    grammar="rust",
    suffixes=(".rs",),
    comment="//",
    definitions="""
    (function_item name: (identifier) @name) @definition.function
    (function_signature_item name: (identifier) @name) @definition.function
    (struct_item name: (type_identifier) @name) @definition.class
    (enum_item name: (type_identifier) @name) @definition.class
    (trait_item name: (type_identifier) @name) @definition.class
    (impl_item type: (type_identifier) @name) @definition.class
    (impl_item type: (generic_type type: (type_identifier) @name)) @definition.class
    (mod_item name: (identifier) @name body: (_)) @definition.namespace
    """,
    imports="""
    (use_declaration argument: (_) @module)
    (mod_item name: (identifier) @module !body)
    """,
    calls="""
    (call_expression function: (identifier) @call)
    (call_expression function: (field_expression field: (field_identifier) @call))
    (call_expression function: (scoped_identifier name: (identifier) @call))
    (macro_invocation macro: (identifier) @call)
    """,
)

_C_CALLS = """
    (call_expression function: (identifier) @call)
    (call_expression function: (field_expression field: (field_identifier) @call))
"""

_C = LanguageSpec(
    name="c",
    grammar="c",
    suffixes=(".c", ".h"),
    comment="//",
    definitions="""
    (function_definition declarator: (_) @declarator) @definition.function
    (struct_specifier name: (type_identifier) @name body: (_)) @definition.class
    (enum_specifier name: (type_identifier) @name body: (_)) @definition.class
    (union_specifier name: (type_identifier) @name body: (_)) @definition.class
    """,
    imports="(preproc_include path: (_) @module)",
    calls=_C_CALLS,
)

_CPP = LanguageSpec(
    name="cpp",
    grammar="cpp",
    suffixes=(".cc", ".cpp", ".cxx", ".hpp", ".hh", ".hxx"),
    comment="//",
    definitions="""
    (function_definition declarator: (_) @declarator) @definition.function
    (class_specifier name: (type_identifier) @name body: (_)) @definition.class
    (struct_specifier name: (type_identifier) @name body: (_)) @definition.class
    (enum_specifier name: (type_identifier) @name body: (_)) @definition.class
    (namespace_definition name: (namespace_identifier) @name) @definition.namespace
    """,
    imports="(preproc_include path: (_) @module)",
    calls=_C_CALLS + """
    (call_expression function: (qualified_identifier name: (identifier) @call))
    (call_expression function: (template_function name: (identifier) @call))
    """,
)

LANGUAGES: dict[str, LanguageSpec] = {
    spec.name: spec for spec in (_PY, _JS, _TS, _TSX, _JAVA, _GO, _RUST, _C, _CPP)
}
_BY_SUFFIX = {suffix: spec for spec in LANGUAGES.values() for suffix in spec.suffixes}


def language_for_path(path: str) -> LanguageSpec | None:
    """The language of a file by its suffix, or None when we do not parse that file type."""
    return _BY_SUFFIX.get(PurePosixPath(path).suffix.lower())


@lru_cache(maxsize=None)
def _compiled(grammar: str, kind: str):
    try:
        from tree_sitter import Query
        from tree_sitter_language_pack import get_language
    except ImportError as error:  # pragma: no cover - core dependency
        raise MissingDependencyError(
            "code parsing needs tree-sitter==0.26 and tree-sitter-language-pack==0.13.0"
        ) from error
    spec = next(s for s in LANGUAGES.values() if s.grammar == grammar)
    return Query(get_language(grammar), getattr(spec, kind))


@lru_cache(maxsize=None)
def parser_for(grammar: str):
    """A cached tree-sitter parser for a grammar name (parsers are reusable, not thread-safe)."""
    from tree_sitter_language_pack import get_parser

    return get_parser(grammar)


@dataclass(frozen=True)
class Symbol:
    """A definition: `qualname` is "Class.method" for methods; lines are 1-based inclusive."""

    name: str
    qualname: str
    kind: str  # "function", "class", "method" or "namespace" (C++ namespace, Rust mod)
    start_line: int
    end_line: int
    start_byte: int
    end_byte: int
    parent: str | None = None


@dataclass(frozen=True)
class Import:
    """One import: the module/file as written (quotes stripped) and the names it brings in."""

    module: str
    names: tuple[str, ...] = ()
    line: int = 0


@dataclass
class FileOutline:
    """Everything one parse tells us about a file."""

    language: LanguageSpec
    tree: object  # tree_sitter.Tree
    source: bytes
    symbols: list[Symbol] = field(default_factory=list)
    imports: list[Import] = field(default_factory=list)
    calls: list[tuple[str, int]] = field(default_factory=list)  # (name, 1-based line)


def _text(node, source: bytes) -> str:
    return source[node.start_byte:node.end_byte].decode("utf-8", "replace")


def _declarator_name(node, source: bytes) -> str | None:
    # C/C++: int *(*f)(int) nests declarators; the name is the innermost one.
    while node is not None:
        inner = node.child_by_field_name("declarator")
        if inner is None:
            if node.type == "qualified_identifier":
                name = node.child_by_field_name("name")
                return _text(name, source) if name is not None else _text(node, source)
            if node.type in ("identifier", "field_identifier", "destructor_name", "operator_name"):
                return _text(node, source)
            return None
        node = inner
    return None


def _statement(node):
    # The enclosing statement of an import capture (its parent chain up to a named statement).
    while node.parent is not None and node.parent.parent is not None and not (
        node.type.endswith(("statement", "declaration", "include", "spec"))
    ):
        node = node.parent
    return node


def _strip_module(text: str) -> str:
    return text.strip().strip("\"'<>`")


def parse(spec: LanguageSpec, source: bytes):
    """Parse bytes with the language's cached parser."""
    return parser_for(spec.grammar).parse(source)


def outline(path: str, text: str | bytes, spec: LanguageSpec | None = None) -> FileOutline | None:
    """Parse a file and extract its definitions, imports and calls.

    Args:
        path: file path (its suffix picks the language unless `spec` is given).
        text: file contents.
    Returns:
        A FileOutline, or None when the file type is not one we parse.
    """
    spec = spec or language_for_path(path)
    if spec is None:
        return None
    source = text.encode("utf-8", "replace") if isinstance(text, str) else text
    tree = parse(spec, source)
    root = tree.root_node
    return FileOutline(language=spec, tree=tree, source=source,
                       symbols=_nest(_definitions(spec, root, source)),
                       imports=_imports(spec, root, source), calls=_calls(spec, root, source))


def _definitions(spec: LanguageSpec, root, source: bytes) -> list[tuple[str, str, object]]:
    """(kind, name, node) of every definition the language's query captures, once each,
    ordered by start (an enclosing definition before the ones inside it)."""
    from tree_sitter import QueryCursor

    raw: list[tuple[str, str, object]] = []
    seen: set[tuple[int, int]] = set()
    for _, caps in QueryCursor(_compiled(spec.grammar, "definitions")).matches(root):
        kind_key = next((k for k in caps if k.startswith("definition.")), None)
        if kind_key is None:
            continue
        node = caps[kind_key][0]
        if node.parent is not None and node.parent.type == "decorated_definition":
            node = node.parent  # a Python definition starts at its first decorator
        if "name" in caps:
            name = _text(caps["name"][0], source)
        else:
            name = _declarator_name(caps["declarator"][0], source)
        if not name or (node.start_byte, node.end_byte) in seen:
            continue
        seen.add((node.start_byte, node.end_byte))
        raw.append((kind_key.split(".", 1)[1], name, node))
    raw.sort(key=lambda item: (item[2].start_byte, -item[2].end_byte))
    return raw


def _nest(raw: list[tuple[str, str, object]]) -> list[Symbol]:
    """Symbols with qualified names from definitions ordered by start: a definition inside
    another gets "Outer.name", and a function directly inside a class is a "method"."""
    symbols: list[Symbol] = []
    stack: list[tuple[int, str, str]] = []  # (end_byte, qualname, kind) of open definitions
    for kind, name, node in raw:
        while stack and stack[-1][0] <= node.start_byte:
            stack.pop()
        parent = stack[-1] if stack else None
        if kind == "function" and parent is not None and parent[2] == "class":
            kind = "method"
        qualname = f"{parent[1]}.{name}" if parent is not None else name
        symbols.append(Symbol(
            name=name, qualname=qualname, kind=kind,
            start_line=node.start_point[0] + 1, end_line=node.end_point[0] + 1,
            start_byte=node.start_byte, end_byte=node.end_byte,
            parent=parent[1] if parent is not None else None,
        ))
        stack.append((node.end_byte, qualname, kind))
    return symbols


def _imports(spec: LanguageSpec, root, source: bytes) -> list[Import]:
    """Imports by line; `import a, b` is two imports of one statement."""
    from tree_sitter import QueryCursor

    # (statement start, module) -> (module, names, line)
    imports: dict[tuple[int, str], tuple[str, list[str], int]] = {}
    for _, caps in QueryCursor(_compiled(spec.grammar, "imports")).matches(root):
        if "module" in caps:
            module_node = caps["module"][0]
            module = _strip_module(_text(module_node, source))
            statement = _statement(module_node)
            entry = imports.setdefault(
                (statement.start_byte, module), (module, [], statement.start_point[0] + 1)
            )
            for name_node in caps.get("name", []):
                entry[1].append(_text(name_node, source))
        elif "name" in caps:  # JS/TS import specifiers: attach to their import statement
            node = caps["name"][0]
            statement = node
            while statement is not None and statement.type != "import_statement":
                statement = statement.parent
            if statement is not None:
                src = statement.child_by_field_name("source")
                module = _strip_module(_text(src, source)) if src is not None else ""
                entry = imports.setdefault(
                    (statement.start_byte, module), (module, [], statement.start_point[0] + 1)
                )
                entry[1].append(_text(node, source))
    found = [Import(module=module, names=tuple(dict.fromkeys(names)), line=line)
             for module, names, line in imports.values()]
    return sorted(found, key=lambda imp: imp.line)


def _calls(spec: LanguageSpec, root, source: bytes) -> list[tuple[str, int]]:
    """(called name, 1-based line) of every call, by line."""
    from tree_sitter import QueryCursor

    nodes = QueryCursor(_compiled(spec.grammar, "calls")).captures(root).get("call", [])
    # Source order (line, then column): captures come back grouped by pattern, not by position.
    nodes = sorted(nodes, key=lambda node: node.start_byte)
    return [(_text(node, source), node.start_point[0] + 1) for node in nodes]
