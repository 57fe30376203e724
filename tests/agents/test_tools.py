import pytest

from agents.tools import ToolBox
from index.errors import InvalidInputError, NotFoundError


def test_read_file_is_bounded_and_numbered(small_repo):
    tools = ToolBox(small_repo)
    text = tools.call("read_file", {"path": "shapes/geometry.py", "start_line": 5, "end_line": 6})
    assert "shapes/geometry.py lines 5-6" in text
    assert "    5  class Circle:" in text
    tools.config.__class__  # config is frozen; bounded reads use max_read_lines
    long = tools.call("read_file", {"path": "shapes/geometry.py"})
    assert long.count("\n") <= tools.config.max_read_lines + 1


def test_paths_outside_the_root_are_refused(small_repo, tmp_path):
    (tmp_path / "secret.txt").write_text("password")
    tools = ToolBox(small_repo)
    for path in ("../secret.txt", str(tmp_path / "secret.txt"), "shapes/../../secret.txt"):
        with pytest.raises(InvalidInputError, match="outside"):
            tools.call("read_file", {"path": path})
    (small_repo / "link.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(InvalidInputError, match="outside"):
        tools.call("read_file", {"path": "link.txt"})


def test_argument_validation(small_repo):
    tools = ToolBox(small_repo)
    with pytest.raises(InvalidInputError, match="needs argument 'path'"):
        tools.call("read_file", {})
    with pytest.raises(InvalidInputError, match="unknown argument"):
        tools.call("read_file", {"path": "x", "mode": "w"})
    with pytest.raises(NotFoundError):
        tools.call("read_file", {"path": "missing.py"})
    with pytest.raises(InvalidInputError, match="identifier"):
        tools.call("find_references", {"symbol": "a b; rm"})


def test_find_references_and_list_symbols(small_repo):
    tools = ToolBox(small_repo)
    refs = tools.call("find_references", {"symbol": "Circle"})
    assert "shapes/report.py:1:" in refs and "shapes/geometry.py:5:" in refs
    symbols = tools.call("list_symbols", {"path": "shapes/geometry.py"})
    assert "class Circle" in symbols and "method Square.area" in symbols


def test_definitions_and_search_through_repo_index(small_repo):
    from code_tools.repo import RepoIndex

    tools = ToolBox(small_repo, repo_index=RepoIndex.open(small_repo))
    assert "shapes/geometry.py:13" in tools.call("find_definition", {"symbol": "Square"})
    assert "no definition" in tools.call("find_definition", {"symbol": "Triangle"})


def test_describe_lists_every_tool(small_repo):
    description = ToolBox(small_repo).describe()
    for name in ("search_code", "read_file", "find_definition", "find_references",
                 "list_symbols", "run_python", "run_tests"):
        assert f"- {name}(" in description


def test_run_tests_in_a_sandboxed_copy_with_and_without_patch(small_repo):
    tools = ToolBox(small_repo)
    passing = tools.call("run_tests", {"path": "tests/test_geometry.py"})
    assert passing.startswith("exit code 0"), passing
    breaking = ("--- a/shapes/geometry.py\n+++ b/shapes/geometry.py\n@@ -18,1 +18,1 @@\n"
                "-        return self.side * self.side\n+        return self.side + self.side\n")
    failing = tools.call("run_tests", {"path": "tests/test_geometry.py", "patch": breaking})
    assert failing.startswith("exit code 1"), failing
    assert "assert 6 == 9" in failing
    # The real repository is untouched by the patched run.
    assert "self.side * self.side" in (small_repo / "shapes/geometry.py").read_text()


def test_run_python_sees_the_repository_and_is_time_limited(small_repo):
    from agents.tools import ToolConfig

    tools = ToolBox(small_repo, config=ToolConfig(sandbox_wall_s=3, sandbox_cpu_s=2))
    out = tools.call("run_python", {"code": "from shapes import Square\nprint(Square(2).area())"})
    assert out.startswith("exit code 0") and "4" in out
    spin = tools.call("run_python", {"code": "while True: pass"})
    assert spin.startswith("TIMEOUT") or "cpu" in spin.lower(), spin
