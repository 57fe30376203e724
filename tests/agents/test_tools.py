import pytest

from agents.tools import ToolBox
from runtime.errors import InvalidInputError, NotFoundError


def test_read_file_is_bounded_and_numbered(tools):
    text = tools.call("read_file", {"path": "shapes/geometry.py", "start_line": 5, "end_line": 6})
    assert "shapes/geometry.py lines 5-6" in text
    assert "    5  class Circle:" in text
    long = tools.call("read_file", {"path": "shapes/geometry.py"})
    assert long.count("\n") <= tools.config.max_read_lines + 1


def test_paths_outside_the_root_are_refused(small_repo, tools, tmp_path):
    (tmp_path / "secret.txt").write_text("password")
    for path in ("../secret.txt", str(tmp_path / "secret.txt"), "shapes/../../secret.txt"):
        with pytest.raises(InvalidInputError, match="outside"):
            tools.call("read_file", {"path": path})
    (small_repo / "link.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(InvalidInputError, match="outside"):
        tools.call("read_file", {"path": "link.txt"})
    with pytest.raises(InvalidInputError, match="outside"):
        tools.call("list_symbols", {"path": "../secret.txt"})
    with pytest.raises(InvalidInputError, match="outside"):
        tools.call("run_tests", {"path": "../secret.txt"})


def test_argument_validation(tools):
    with pytest.raises(InvalidInputError, match="needs argument 'path'"):
        tools.call("read_file", {})
    with pytest.raises(InvalidInputError, match="unknown argument"):
        tools.call("read_file", {"path": "x", "mode": "w"})
    with pytest.raises(NotFoundError):
        tools.call("read_file", {"path": "missing.py"})
    with pytest.raises(InvalidInputError, match="identifier"):
        tools.call("find_references", {"symbol": "a b; rm"})


def test_find_references_and_list_symbols(tools):
    refs = tools.call("find_references", {"symbol": "Circle"})
    assert "shapes/report.py:1:" in refs and "shapes/geometry.py:5:" in refs
    symbols = tools.call("list_symbols", {"path": "shapes/geometry.py"})
    assert "class Circle" in symbols and "method Square.area" in symbols


def test_list_symbols_reads_the_file_as_it_is_now(small_repo, tools):
    (small_repo / "shapes/extra.py").write_text("def late():\n    return 1\n")
    assert "function late" in tools.call("list_symbols", {"path": "shapes/extra.py"})
    (small_repo / "notes.txt").write_text("plain text")
    assert "not in a language we parse" in tools.call("list_symbols", {"path": "notes.txt"})


def test_definitions_and_search_through_repo_index(tools):
    assert "shapes/geometry.py:13" in tools.call("find_definition", {"symbol": "Square"})
    assert "no definition" in tools.call("find_definition", {"symbol": "Triangle"})


def test_describe_lists_every_tool(tools):
    description = tools.describe()
    for name in ("search_code", "read_file", "find_definition", "find_references",
                 "list_symbols", "run_python", "run_tests"):
        assert f"- {name}(" in description


def test_tools_without_their_objects_are_not_offered(small_repo):
    bare = ToolBox(small_repo)
    assert bare.names == ["read_file"]
    with pytest.raises(InvalidInputError, match="unknown tool 'run_python'"):
        bare.call("run_python", {"code": "print(1)"})


def test_run_tests_in_a_sandboxed_copy_with_and_without_patch(small_repo, tools):
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
    from agents.tools import build_toolbox
    from code_tools.sandbox import SandboxLimits, runner

    tools = build_toolbox(small_repo, runner(SandboxLimits(timeout_s=3, cpu_s=2, memory_mb=1024)))
    out = tools.call("run_python", {"code": "from shapes import Square\nprint(Square(2).area())"})
    assert out.startswith("exit code 0") and "4" in out
    spin = tools.call("run_python", {"code": "while True: pass"})
    assert spin.startswith("TIMEOUT") or "cpu" in spin.lower(), spin


def test_run_python_is_memory_limited(small_repo):
    from agents.tools import build_toolbox
    from code_tools.sandbox import SandboxLimits, runner

    tools = build_toolbox(small_repo, runner(SandboxLimits(timeout_s=20, cpu_s=10, memory_mb=256)))
    out = tools.call("run_python", {"code": "blob = bytearray(512 * 1024 * 1024)\nprint('allocated')"})
    assert "allocated" not in out.split("stderr:")[0] and "memory" in out.lower(), out
