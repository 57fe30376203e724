"""ImportResolver: an import as written -> repository files, per language family."""

from code_tools.languages import Import
from code_tools.repo_imports import ImportResolver, python_module_names

FILES = ["src/pkg/__init__.py", "src/pkg/models.py", "src/pkg/sub/util.py", "web/app.ts",
         "web/api.ts", "web/lib/index.js", "c/main.c", "c/include/vec.h", "java/com/acme/Cart.java",
         "go/store/db.go", "go/store/cache.go", "rs/main.rs", "rs/net/mod.rs"]


def _resolver():
    resolver = ImportResolver()
    for path in FILES:
        resolver.add(path)
    return resolver


def test_python_module_names_are_every_suffix_of_the_package_path():
    assert python_module_names("src/pkg/sub/__init__.py") == ["src.pkg.sub", "pkg.sub", "sub"]
    assert python_module_names("a/b.py") == ["a.b", "b"]


def test_python_absolute_relative_and_submodule_imports():
    r = _resolver()
    assert r.resolve("x.py", Import("pkg.models", ("User",))) == ["src/pkg/models.py"]
    # `from pkg import models, Thing`: the submodule, and the package for the other name
    assert r.resolve("x.py", Import("pkg", ("models", "Thing"))) == ["src/pkg/__init__.py", "src/pkg/models.py"]
    assert r.resolve("src/pkg/sub/util.py", Import("..models", ("User",))) == ["src/pkg/models.py"]
    assert r.resolve("src/pkg/models.py", Import(".", ("sub",))) == ["src/pkg/__init__.py"]
    assert r.resolve("src/pkg/models.py", Import("numpy", ())) == []


def test_other_families_and_never_the_importing_file_itself():
    r = _resolver()
    assert r.resolve("web/app.ts", Import("./api")) == ["web/api.ts"]
    assert r.resolve("web/app.ts", Import("./lib")) == ["web/lib/index.js"]
    assert r.resolve("web/app.ts", Import("react")) == []
    assert r.resolve("c/main.c", Import("vec.h")) == ["c/include/vec.h"]
    assert r.resolve("Main.java", Import("com.acme.Cart")) == ["java/com/acme/Cart.java"]
    assert r.resolve("main.go", Import("go/store")) == ["go/store/cache.go", "go/store/db.go"]
    assert r.resolve("rs/main.rs", Import("net")) == ["rs/net/mod.rs"]
    assert r.resolve("web/api.ts", Import("./api")) == []
    r.remove("web/api.ts")
    assert r.resolve("web/app.ts", Import("./api")) == []
    assert r.resolve("notes.md", Import("./api")) == []


def test_go_imports_resolve_through_the_module_path_in_go_mod(tmp_path):
    (tmp_path / "svc" / "store").mkdir(parents=True)
    (tmp_path / "svc" / "go.mod").write_text("module github.com/acme/shop\n\ngo 1.22\n")
    resolver = ImportResolver(tmp_path)
    for path in ["svc/main.go", "svc/store/db.go", "other/store/db.go"]:
        resolver.add(path)
    assert resolver.resolve("svc/main.go", Import("github.com/acme/shop/store")) == ["svc/store/db.go"]
    assert resolver.resolve("svc/main.go", Import("github.com/other/lib")) == []
    assert resolver.resolve("svc/main.go", Import("fmt")) == []
