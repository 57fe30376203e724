"""Every package imports with only the core dependencies (optional stacks stay lazy)."""

import importlib
import pkgutil

import pytest

PACKAGES = ["index", "rag", "code_tools", "agents", "eval_suites", "codehop"]


def _modules():
    for package in PACKAGES:
        module = importlib.import_module(package)
        yield package
        for info in pkgutil.walk_packages(module.__path__, prefix=package + "."):
            if not info.name.endswith("__main__"):  # importing a __main__ runs its program
                yield info.name


@pytest.mark.parametrize("name", list(_modules()))
def test_module_imports_without_optional_stacks(name):
    importlib.import_module(name)
