"""index.walk: the one tree walker (skip list, hidden entries, nested .gitignore files)."""

from index.walk import SKIP_DIRS, WalkConfig, skipped_dir, walk, walk_tree
from tests.special_files import special_files


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


def test_walk_yields_regular_files_only_and_reports_each_special_file(tmp_path):
    (tmp_path / "ok.txt").write_text("regular words")
    with special_files(tmp_path) as expected:
        skipped = []
        assert _walked_with(tmp_path, skipped) == ["ok.txt"]
        assert dict(skipped) == expected
        named = []
        assert list(walk([tmp_path / "fifo.txt"], on_skip=lambda p, r: named.append(r))) == []
        assert named == ["not a regular file (FIFO)"]


def _walked_with(root, skipped, **kwargs):
    def on_skip(path, reason):
        skipped.append((path.relative_to(root).as_posix(), reason))
    return [p.relative_to(root.resolve()).as_posix() for p in walk([root], on_skip=on_skip, **kwargs)]


def test_walk_never_leaves_its_roots_through_a_symbolic_link(tmp_path):
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.txt").write_text("the key")
    (outside / "dir" / "more.txt").write_text("more")
    root = tmp_path / "root"
    _files(root, ["a.txt", "sub/b.txt", ".env", "node_modules/m.js"])
    (root / "key.txt").symlink_to(outside / "secret.txt")
    (root / "relative.txt").symlink_to("../outside/secret.txt")
    (root / "outdir").symlink_to(outside / "dir", target_is_directory=True)
    (root / "alias.txt").symlink_to(root / "sub" / "b.txt")  # inside: read where it lies
    (root / "insidedir").symlink_to(root / "sub", target_is_directory=True)  # walked as sub/
    (root / "env.txt").symlink_to(".env")  # a hidden file stays hidden behind a link
    (root / "mod.js").symlink_to(root / "node_modules" / "m.js")
    (root / "dangling.txt").symlink_to(root / "gone.txt")
    (root / "loop.txt").symlink_to(root / "loop.txt")
    skipped = []
    assert _walked_with(root, skipped) == ["a.txt", "sub/b.txt", "sub/b.txt"]  # alias -> its target
    assert sorted(skipped) == [
        ("dangling.txt", "dangling link"),
        ("env.txt", "link into a hidden, dependency or build directory"),
        ("key.txt", "link to a path outside the indexed directories"),
        ("loop.txt", "link loop"),
        ("mod.js", "link into a hidden, dependency or build directory"),
        ("outdir", "link to a directory outside the indexed directories"),
        ("relative.txt", "link to a path outside the indexed directories")]
    # A link may point into any of `within` (a server's roots), and a named link is a choice.
    assert "secret.txt" in [p.name for p in walk([root], within=[root, outside])]
    assert list(walk([root / "key.txt"])) == [(outside / "secret.txt").resolve()]


def test_generated_artefacts_are_left_out_by_name_unless_included_and_excludes_add(tmp_path):
    _files(tmp_path, ["src/app.py", "uv.lock", "web/package-lock.json", "web/app.min.js",
                      "web/app.js.map", "web/app.js", "docs/benchmarks/x/raw.json",
                      "docs/benchmarks/report.md", "docs/results.json", "data/notes.csv"])
    skipped = []
    assert _walked_with(tmp_path, skipped) == [
        "data/notes.csv", "docs/results.json", "docs/benchmarks/report.md", "src/app.py", "web/app.js"]
    assert sorted(p for p, _ in skipped) == ["docs/benchmarks/x/raw.json", "uv.lock", "web/app.js.map",
                                             "web/app.min.js", "web/package-lock.json"]
    assert {r for _, r in skipped} == {"generated artefact"}
    config = WalkConfig(exclude=("data/", "docs/*.json"), include=("uv.lock", "docs/benchmarks/**"))
    assert _walked_with(tmp_path, [], config=config) == [
        "uv.lock", "docs/benchmarks/report.md", "docs/benchmarks/x/raw.json", "src/app.py", "web/app.js"]
    everything = _walked_with(tmp_path, [], config=WalkConfig(skip_generated=False))
    assert len(everything) == 10
