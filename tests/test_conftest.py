"""The suite's CI rule (tests/conftest.py): under CI a skip fails unless the test is `optional`,
and a module that skips at import escapes only when its syntax marks it optional."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import module_is_optional

SKIPS_AT_IMPORT = 'import pytest\n{marks}\npytest.importorskip("no_such_module_codehop")\n\n{tests}\n'


def test_the_optional_mark_is_read_from_the_syntax_not_the_text():
    assert module_is_optional("import pytest\npytestmark = [pytest.mark.optional, pytest.mark.slow]\n")
    assert module_is_optional("import pytest\npytestmark = pytest.mark.optional\n")
    assert module_is_optional("from pytest import mark\npytestmark = mark.optional(reason='gpu')\n")
    assert module_is_optional("import pytest\n@pytest.mark.optional\ndef test_a(): pass\n"
                              "@pytest.mark.optional\nclass TestB: pass\n")
    assert not module_is_optional("import pytest\n# pytest.mark.optional would hide this module\n"
                                  "def test_a(): pass\n")
    assert not module_is_optional('"""Not pytest.mark.optional."""\nX = "mark.optional"\n')
    assert not module_is_optional("import pytest\npytestmark = [pytest.mark.slow]\n")
    # one optional test does not make the module optional: its other tests must run under CI
    assert not module_is_optional("import pytest\n@pytest.mark.optional\ndef test_a(): pass\n"
                                  "def test_b(): pass\n")


def test_under_ci_a_module_skipped_at_import_fails_unless_marked_optional(tmp_path):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    optional: may skip\n")
    (tmp_path / "test_mentions.py").write_text(SKIPS_AT_IMPORT.format(
        marks="# not optional, though this comment says pytest.mark.optional", tests="def test_a(): pass"))
    (tmp_path / "test_marked.py").write_text(SKIPS_AT_IMPORT.format(
        marks="pytestmark = pytest.mark.optional", tests="def test_a(): pass"))
    # the outer run's PYTEST_* variables (xdist worker, current test) must not leak into this one
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")},
           "CI": "true", "PYTHONPATH": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(tmp_path)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = run.stdout + run.stderr
    assert run.returncode != 0, out
    assert "ERROR collecting test_mentions.py" in out and "module skipped under CI=true" in out, out
    assert "SKIPPED [1] test_marked.py" in out and "1 skipped, 1 error" in out, out
