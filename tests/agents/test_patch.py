import pytest

from agents.patch import apply_patch
from runtime.errors import InvalidInputError

ORIGINAL = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"

PATCH = """--- a/calc.py
+++ b/calc.py
@@ -4,3 +4,7 @@
 
 def sub(a, b):
     return a - b
+
+
+def mul(a, b):
+    return a * b
"""


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "calc.py").write_text(ORIGINAL)
    return tmp_path


def test_patch_applies_and_dry_run_changes_nothing(repo):
    result = apply_patch(repo, PATCH, dry_run=True)
    assert result.files == ("calc.py",) and result.hunks == 1
    assert (repo / "calc.py").read_text() == ORIGINAL
    apply_patch(repo, PATCH)
    assert (repo / "calc.py").read_text() == ORIGINAL + "\n\ndef mul(a, b):\n    return a * b\n"


def test_patch_tolerates_drifted_line_numbers(repo):
    (repo / "calc.py").write_text("import math\n\n" + ORIGINAL)
    apply_patch(repo, PATCH)
    assert (repo / "calc.py").read_text().endswith("return a * b\n")


def test_new_file_and_removal(repo):
    diff = "--- /dev/null\n+++ b/pkg/new.py\n@@ -0,0 +1,2 @@\n+X = 1\n+Y = 2\n"
    apply_patch(repo, diff)
    assert (repo / "pkg" / "new.py").read_text() == "X = 1\nY = 2\n"


def test_mismatched_context_is_rejected_and_nothing_written(repo):
    bad = PATCH.replace("     return a - b", "     return a - c")
    with pytest.raises(InvalidInputError, match="does not apply"):
        apply_patch(repo, bad)
    assert (repo / "calc.py").read_text() == ORIGINAL


@pytest.mark.parametrize("diff", ["", "just some prose", "--- a/x\n+++ b/x\n@@ garbage"])
def test_malformed_patches(repo, diff):
    with pytest.raises(InvalidInputError):
        apply_patch(repo, diff)


def test_paths_outside_the_root_are_refused(repo):
    escape = PATCH.replace("a/calc.py", "a/../outside.py").replace("b/calc.py", "b/../outside.py")
    with pytest.raises(InvalidInputError, match="outside"):
        apply_patch(repo, escape)


def test_missing_target_file(repo):
    with pytest.raises(InvalidInputError, match="does not exist"):
        apply_patch(repo, PATCH.replace("calc.py", "nope.py"))
