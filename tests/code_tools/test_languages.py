"""Symbol, import and call extraction per language on small real snippets."""

from __future__ import annotations

import pytest

from code_tools.languages import LANGUAGES, language_for_path, outline

CASES = {
    "a.py": (
        "import os, sys\nfrom .b import c as d, e\n\nclass A(B):\n    \"\"\"Doc.\"\"\"\n\n"
        "    @dec\n    def f(self, x):\n        return g(x).h()\n\ndef top():\n    return os.path.join('a')\n",
        {("A", "class", 4, 9), ("A.f", "method", 7, 9), ("top", "function", 11, 12)},
        {"os": (), "sys": (), ".b": ("c", "e")},
        {"dec", "g", "h", "join"},
    ),
    "a.js": (
        "const x = require('./y');\nimport z from 'w';\nclass A {\n  constructor() { foo(); }\n"
        "  m() { return this.bar(); }\n}\nfunction q() { return new A(); }\nconst r = (a) => a;\n",
        {("A", "class", 3, 6), ("A.constructor", "method", 4, 4), ("A.m", "method", 5, 5),
         ("q", "function", 7, 7), ("r", "function", 8, 8)},
        {"./y": (), "w": ("z",)},
        {"require", "foo", "bar", "A"},
    ),
    "a.ts": (
        "import {a, b as c} from './m';\nexport class K<T> {\n  m(x: number): void { this.n(); }\n}\n"
        "interface I { x: number }\nexport function g(): void { a(); }\n",
        {("K", "class", 2, 4), ("K.m", "method", 3, 3), ("I", "class", 5, 5), ("g", "function", 6, 6)},
        {"./m": ("a", "b")},
        {"n", "a"},
    ),
    "A.java": (
        "package p;\nimport java.util.List;\n\npublic class A {\n  public A() { init(); }\n"
        "  void f() {\n    g(1);\n    new B();\n  }\n}\n",
        {("A", "class", 4, 10), ("A.A", "method", 5, 5), ("A.f", "method", 6, 9)},
        {"java.util.List": ()},
        {"init", "g", "B"},
    ),
    "a.go": (
        "package m\n\nimport (\n\t\"fmt\"\n\tx \"a/b\"\n)\n\ntype S struct{ X int }\n\n"
        "func (s *S) F() { fmt.Println(1) }\n\nfunc G() int { return x.Y() }\n",
        {("S", "class", 8, 8), ("F", "method", 10, 10), ("G", "function", 12, 12)},
        {"fmt": (), "a/b": ()},
        {"Println", "Y"},
    ),
    "a.rs": (
        "use std::io::Read;\nmod util;\n\nstruct Foo;\n\nimpl Foo {\n    fn f(&self) {\n"
        "        bar();\n        self.x();\n        println!(\"{}\", 1);\n    }\n}\n",
        {("Foo", "class", 4, 4), ("Foo", "class", 6, 12), ("Foo.f", "method", 7, 11)},
        {"std::io::Read": (), "util": ()},
        {"bar", "x", "println"},
    ),
    "a.c": (
        "#include \"a.h\"\n#include <stdio.h>\n\nstruct P { int a; };\n\n"
        "static int *f(int x) {\n    return g(x);\n}\n",
        {("P", "class", 4, 4), ("f", "function", 6, 8)},
        {"a.h": (), "stdio.h": ()},
        {"g"},
    ),
    "a.cpp": (
        "#include <vector>\nnamespace n {\nclass A {\n public:\n  int f() { return g(); }\n};\n}\n"
        "int A::h(int x) { return std::max(x, 0); }\n",
        {("n", "namespace", 2, 7), ("n.A", "class", 3, 6), ("n.A.f", "method", 5, 5), ("h", "function", 8, 8)},
        {"vector": ()},
        {"g", "max"},
    ),
}


@pytest.mark.parametrize("path", sorted(CASES))
def test_outline_extracts_definitions_imports_calls(path):
    source, symbols, imports, calls = CASES[path]
    out = outline(path, source)
    assert {(s.qualname, s.kind, s.start_line, s.end_line) for s in out.symbols} == symbols
    assert {imp.module: imp.names for imp in out.imports} == imports
    assert {name for name, _ in out.calls} == calls


def test_every_language_compiles_its_queries():
    for spec in LANGUAGES.values():
        assert outline("x" + spec.suffixes[0], "") is not None


def test_unknown_file_types_are_not_parsed():
    assert language_for_path("README.md") is None
    assert outline("notes.txt", "hello") is None
    assert language_for_path("Lib/X.PY").name == "python"


def test_broken_code_still_yields_the_complete_definitions():
    out = outline("a.py", "def ok(a):\n    return a\n\ndef broken(:\n")
    assert "ok" in {s.name for s in out.symbols}


def test_calls_come_in_source_order_within_a_line():
    out = outline("m.py", "x = outer(inner(1), other(2)).method()\ny = last()\n")
    assert out.calls == [("outer", 1), ("inner", 1), ("other", 1), ("method", 1), ("last", 2)]
