"""index.walk: the one tree walker (skip list, hidden entries, nested .gitignore files)."""

from index.walk import SKIP_DIRS, skipped_dir, walk, walk_tree


def _files(root, names):
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x")


def _walked(root):
    return [p.relative_to(root).as_posix() for p in walk([root])]


def test_walk_skips_hidden_entries_and_tool_dependency_build_dirs(tmp_path):
    _files(tmp_path, ["ok.txt", "sub/b.md", ".env", ".git/HEAD", ".codehop/store.sqlite",
                      "node_modules/x.js", ".venv/lib.py", "vendor/v.go", "build/out.py",
                      "dist/pkg.whl", "target/debug.rs", "pkg.egg-info/PKG-INFO",
                      "src/__pycache__/m.pyc", "src/m.py"])
    assert _walked(tmp_path) == ["ok.txt", "src/m.py", "sub/b.md"]
    assert list(walk([tmp_path / "ok.txt"])) == [tmp_path / "ok.txt"]
    assert all(skipped_dir(name) for name in SKIP_DIRS) and not skipped_dir("src")


def test_walk_honours_gitignore_files_below_their_directory(tmp_path):
    (tmp_path / ".gitignore").write_text("generated/\n*.log\n!keep.log\n")
    _files(tmp_path, ["a.py", "generated/out.py", "debug.log", "keep.log", "pkg/b.py",
                      "pkg/gen.py", "pkg/deep/gen.py", "other/gen.py"])
    (tmp_path / "pkg" / ".gitignore").write_text("gen.py\n")
    assert _walked(tmp_path) == ["a.py", "keep.log", "other/gen.py", "pkg/b.py"]
    assert list(walk([tmp_path / "debug.log"])) == [tmp_path / "debug.log"]  # named explicitly


def test_walk_tree_gives_paths_relative_to_the_root_and_survives_a_bad_gitignore(tmp_path):
    _files(tmp_path, ["a/b/c.py", "a/d.py"])
    (tmp_path / "a" / ".gitignore").write_bytes(b"\xff\xfe d.py\n")  # not UTF-8: read with errors="replace"
    walked = list(walk_tree(tmp_path))
    assert [relative for _, relative in walked] == ["a/d.py", "a/b/c.py"]  # a directory's files first
    assert all(path == tmp_path / relative for path, relative in walked)
