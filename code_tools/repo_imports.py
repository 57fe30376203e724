"""Import resolution for the repository index: an import as written -> repository files.

One method per language family; each knows that family's module naming:
Python dotted and relative modules (a package's __init__.py), JS/TS relative specifiers with
their implicit suffixes, C/C++ includes, Java packages, Go package directories, Rust `mod`s.
"""

from __future__ import annotations

import os
import re
from functools import cached_property
from pathlib import Path

from code_tools.languages import Import, language_for_path

_JS_SUFFIXES = ("", ".ts", ".tsx", ".js", ".jsx", ".mjs", ".d.ts", "/index.ts", "/index.tsx",
                "/index.js")


def python_module_names(path: str) -> list[str]:
    """Dotted names a .py file may be imported as: every suffix of its package path.

    Example: "src/pkg/sub/__init__.py" -> ["src.pkg.sub", "pkg.sub", "sub"].
    """
    parts = path[: -len(Path(path).suffix)].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return [".".join(parts[i:]) for i in range(len(parts)) if parts[i:]]


class ImportResolver:
    """Maps an import as written to repository files, per language family.

    `root` (optional) is the repository on disk: Go imports are resolved through the module
    paths its go.mod files declare (`module github.com/acme/shop` in `svc/go.mod` makes
    `github.com/acme/shop/store` the directory `svc/store`).
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else None
        self.files: set[str] = set()
        self.py_modules: dict[str, set[str]] = {}

    def add(self, path: str) -> None:
        self.files.add(path)
        if path.endswith(".go"):
            self.__dict__.pop("_go_modules", None)  # a new directory may sit under a go.mod
        if path.endswith((".py", ".pyi")):
            for name in python_module_names(path):
                self.py_modules.setdefault(name, set()).add(path)

    def remove(self, path: str) -> None:
        self.files.discard(path)
        if path.endswith(".go"):
            self.__dict__.pop("_go_modules", None)
        if path.endswith((".py", ".pyi")):
            for name in python_module_names(path):
                self.py_modules.get(name, set()).discard(path)

    def resolve(self, path: str, imp: Import) -> list[str]:
        """Repository files that `imp`, written in `path`, refers to (never `path` itself)."""
        spec = language_for_path(path)
        if spec is None:
            return []
        here = Path(path).parent.as_posix()
        here = "" if here == "." else here
        by_family = {"python": self._python, "javascript": self._javascript,
                     "typescript": self._javascript, "tsx": self._javascript, "c": self._c,
                     "cpp": self._c, "java": self._java, "go": self._go, "rust": self._rust}
        family = by_family.get(spec.name)
        found = family(here, imp) if family is not None else []
        return [f for f in dict.fromkeys(found) if f != path]

    def _py(self, dotted: str) -> str | None:
        candidates = self.py_modules.get(dotted)
        return min(candidates, key=lambda p: (len(p), p)) if candidates else None

    def _python(self, here: str, imp: Import) -> list[str]:
        # `from pkg import a, b`: a and b may be submodules; the package itself counts only
        # when some imported name is not a submodule (then it is defined in pkg/__init__).
        module = imp.module
        if module.startswith("."):
            level = len(module) - len(module.lstrip("."))
            base = here.split("/") if here else []
            base = base[: len(base) - (level - 1)] if level > 1 else base
            rest = module.lstrip(".")
            stem = "/".join(base + (rest.split(".") if rest else []))

            def lookup(target: str) -> str | None:
                for candidate in (f"{target}.py", f"{target}/__init__.py"):
                    if candidate.lstrip("/") in self.files:
                        return candidate.lstrip("/")
                return None

            package = lookup(stem)
            subs = [lookup(f"{stem}/{name}") for name in imp.names]
        else:
            package = self._py(module)
            subs = [self._py(f"{module}.{name}") for name in imp.names]
        found = [sub for sub in subs if sub]
        if package and (not imp.names or not all(subs)):
            found.insert(0, package)
        return found

    def _javascript(self, here: str, imp: Import) -> list[str]:
        if not imp.module.startswith("."):
            return []  # a package from node_modules
        stem = os.path.normpath(os.path.join(here, imp.module)).replace(os.sep, "/")
        return next(([stem + suffix] for suffix in _JS_SUFFIXES if stem + suffix in self.files), [])

    def _c(self, here: str, imp: Import) -> list[str]:
        local = os.path.normpath(os.path.join(here, imp.module)).replace(os.sep, "/")
        if local in self.files:
            return [local]
        return sorted(f for f in self.files if f == imp.module or f.endswith("/" + imp.module))[:1]

    def _java(self, here: str, imp: Import) -> list[str]:
        tail = imp.module.replace(".", "/") + ".java"
        return sorted(f for f in self.files if f == tail or f.endswith("/" + tail))[:1]

    def _go(self, here: str, imp: Import) -> list[str]:
        for directory, module in self._go_modules.items():
            if imp.module == module or imp.module.startswith(module + "/"):
                target = "/".join(p for p in (directory, imp.module[len(module):].strip("/")) if p)
                found = sorted(f for f in self.files
                               if f.endswith(".go") and _parent(f) == target)
                if found:
                    return found
        # No go.mod says where the import lives: a directory whose path ends with the import.
        return sorted(f for f in self.files
                      if f.endswith(".go") and ("/" + _parent(f)).endswith("/" + imp.module))

    @cached_property
    def _go_modules(self) -> dict[str, str]:
        """Directory (relative, "" for the root) -> module path, from the go.mod files above the
        repository's .go files; the deepest module first, as Go itself picks the nearest one."""
        if self.root is None:
            return {}
        directories = {""}
        for path in self.files:
            if path.endswith(".go"):
                parts = _parent(path).split("/") if _parent(path) else []
                directories.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
        modules = {}
        for directory in sorted(directories, key=lambda d: -d.count("/") - bool(d)):
            try:
                text = (self.root / directory / "go.mod").read_text(errors="replace")
            except OSError:
                continue
            match = re.search(r"^\s*module\s+\"?([^\s\"]+)", text, re.MULTILINE)
            if match:
                modules[directory] = match.group(1)
        return modules

    def _rust(self, here: str, imp: Import) -> list[str]:
        name = imp.module.split("::")[-1].strip("{} ")
        return [candidate.lstrip("/") for candidate in (f"{here}/{name}.rs", f"{here}/{name}/mod.rs")
                if candidate.lstrip("/") in self.files]


def _parent(path: str) -> str:
    parent = Path(path).parent.as_posix()
    return "" if parent == "." else parent
