"""End to end through the `codehop` CLI: index a small real tree, search it in every mode,
survive a kill -9 during indexing, and turn bad input into one error line."""

import argparse
import gzip
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from codehop.cli import main

pytestmark = pytest.mark.slow  # embeds with the shipped MiniLM

REPO = Path(__file__).resolve().parents[2]
PAGES = {  # devdocs page id -> file written into the tree (first ~5,000 characters)
    "numpy~1.22/reference/generated/numpy.linspace.txt": "numpy/linspace.txt",
    "pandas~1/reference/api/pandas.dataframe.where.txt": "pandas/where.md",
    "python~3.9/library/heapq.txt": "python/heapq.txt",
    "python~3.9/library/zipfile.txt": "python/zipfile.md",
    "pygame/ref/mixer.txt": "pygame/mixer.txt",
}
PYTHON_FILES = {
    "src/geometry.py": "import math\n\n\ndef circle_area(radius):\n    \"\"\"Area of a circle.\"\"\"\n"
                       "    return math.pi * radius ** 2\n\n\ndef rectangle_perimeter(width, height):\n"
                       "    return 2 * (width + height)\n",
    "src/retry.py": "import time\n\n\ndef retry_with_backoff(call, attempts=5, base_delay=0.5):\n"
                    "    \"\"\"Call again after failures, doubling the delay each time.\"\"\"\n"
                    "    for attempt in range(attempts):\n        try:\n            return call()\n"
                    "        except ConnectionError:\n            time.sleep(base_delay * 2 ** attempt)\n"
                    "    raise RuntimeError('gave up')\n",
}
QUERIES = {  # query -> the file that must come first, in every mode
    "evenly spaced numbers over a specified interval": "numpy/linspace.txt",
    "replace values where the condition is False": "pandas/where.md",
    "heap queue priority queue algorithm": "python/heapq.txt",
    "read and write ZIP archive files": "python/zipfile.md",
    "play sounds and music through mixer channels": "pygame/mixer.txt",
    "area of a circle from its radius": "src/geometry.py",
    "retry a failing call with exponential backoff": "src/retry.py",
}


def _devdocs(shared_data, ids):
    pages = {}
    with gzip.open(shared_data / "coderag" / "devdocs.jsonl.gz", "rt") as handle:
        for line in handle:
            record = json.loads(line)
            if record["id"] in ids:
                pages[record["id"]] = record["text"]
                if len(pages) == len(ids):
                    break
    return pages


def _write_tree(root, shared_data):
    for page_id, text in _devdocs(shared_data, set(PAGES)).items():
        path = root / PAGES[page_id]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text[:5000])
    for name, text in PYTHON_FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def _count_vectors(cache):
    with sqlite3.connect(cache, timeout=30) as conn:
        return conn.execute("SELECT count(*) FROM vectors").fetchone()[0]


# `codehop` in a child process that stops mid-run at a known point: right after the vector
# cache commits its first batch of the new pages, it writes a marker and holds there until it
# is killed, so the kill always lands mid-run (no race with the run finishing first).
HOLD_AFTER_FIRST_COMMIT = """
import sys, threading
from pathlib import Path

import runtime.embed

marker = Path(sys.argv[1])
put = runtime.embed._VectorCache.put


def put_then_hold(self, items):
    put(self, items)
    marker.with_suffix(".tmp").write_text(str(len(items)))
    marker.with_suffix(".tmp").replace(marker)
    threading.Event().wait()


runtime.embed._VectorCache.put = put_then_hold
from codehop.cli import main

sys.exit(main(sys.argv[2:]))
"""


def _cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, shared_data):
    base = tmp_path_factory.mktemp("e2e")
    tree = _write_tree(base / "tree", shared_data)
    workspace = base / "ws"
    code = main(["index", str(tree), "--workspace", str(workspace), "--no-progress"])
    assert code == 0
    return tree, workspace


@pytest.mark.parametrize("mode", ["bm25", "dense", "hybrid"])
def test_search_finds_the_right_file_first(indexed, capsys, mode):
    tree, workspace = indexed
    for query, expected in QUERIES.items():
        code, out, err = _cli(capsys, "search", query, "--mode", mode, "--k", "3", "--json",
                              "--workspace", str(workspace))
        assert code == 0, err
        results = json.loads(out)["results"]  # exactly one JSON document on stdout
        assert results and set(results[0]) == {"id", "score", "path", "start_line", "end_line", "text"}
        assert results[0]["path"] == str(tree / expected), (mode, query)
        top = results[0]
        lines = Path(top["path"]).read_text().splitlines()[top["start_line"] - 1 : top["end_line"]]
        if top["path"].endswith(".py"):  # code chunks may carry a header or be an abstract
            name = expected.split("/")[-1]
            assert any(line.startswith("def ") and line.split("(")[0][4:] in top["text"]
                       for line in lines), (name, top)
        else:
            assert top["text"].split() == " ".join(lines).split()  # the span holds that text


def test_reindex_is_incremental_and_human_output_readable(indexed, capsys, monkeypatch):
    tree, workspace = indexed
    monkeypatch.setenv("CODEHOP_WORKSPACE", str(workspace))  # default workspace from the env
    code, out, _ = _cli(capsys, "index", str(tree), "--no-progress")
    assert code == 0 and f"0 added, 0 updated, {len(PAGES) + len(PYTHON_FILES)} unchanged" in out
    assert "(0 embedded)" in out
    assert "hybrid search: convex fusion, dense weight " in out  # the fusion in use, and why
    assert "each side scores a chunk by its own score and its whole document's" in out
    code, out, _ = _cli(capsys, "search", "circle area", "--mode", "bm25", "--k", "2")
    first = out.splitlines()[0]
    assert code == 0 and first.startswith(" 1. ") and f"{tree / 'src/geometry.py'}:" in first
    assert "def circle_area" in out


def test_index_off_a_terminal_prints_progress_lines(indexed, capsys, tmp_path):
    """stderr is not a terminal here (as in logs or docker): plain lines, not tqdm bars."""
    tree, workspace = indexed
    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "notes.md").write_text("Rotate the signing keys every ninety days.\n")
    code, out, err = _cli(capsys, "index", str(extra), "--workspace", str(ws))
    assert code == 0 and "(1 embedded)" in out
    lines = err.splitlines()
    assert lines[0] == "codehop: scanning default: 0/1 files (0.0%), 0 chunks, rate ?, ETA ?"
    assert lines[-1].startswith("codehop: done default: 1/1 chunks (100.0%) in ")
    assert "\r" not in err  # no bar redraws
    code, out, err = _cli(capsys, "index", str(extra), "--workspace", str(ws), "--no-progress")
    assert code == 0 and err == ""


def test_search_filters_by_path_prefix_and_kind(indexed, capsys):
    tree, workspace = indexed

    def search(*options):
        code, out, err = _cli(capsys, "search", "area of a circle from its radius", "--json",
                              "--workspace", str(workspace), *options)
        assert code == 0, err
        return json.loads(out)["results"]

    prefix = str(tree / "python") + "/"  # the query's best file lies elsewhere (src/)
    found = search("--k", "2", "--path-prefix", prefix)
    assert len(found) == 2 and all(r["path"].startswith(prefix) for r in found)
    unfiltered = [r["path"] for r in search("--k", "20", "--mode", "bm25")]
    assert any(p.endswith(".py") for p in unfiltered) and any(not p.endswith(".py") for p in unfiltered)
    passages = search("--k", "20", "--mode", "bm25", "--kind", "passage")
    assert passages and not any(r["path"].endswith(".py") for r in passages)


def test_search_group_by_document_gives_each_file_once(indexed, capsys):
    tree, workspace = indexed
    argv = ["search", "area of a circle from its radius", "--json", "--k", "20", "--mode", "bm25",
            "--workspace", str(workspace)]
    code, out, err = _cli(capsys, *argv)
    chunks = [r["path"] for r in json.loads(out)["results"]]
    assert code == 0 and len(set(chunks)) < len(chunks)  # some files give several chunks
    code, out, err = _cli(capsys, *argv, "--group-by", "document")
    grouped = [r["path"] for r in json.loads(out)["results"]]
    firsts = list(dict.fromkeys(chunks))  # each file where its best chunk ranks
    assert code == 0 and len(grouped) == len(set(grouped)) and grouped[: len(firsts)] == firsts


def test_search_applies_search_settings_of_the_config_without_storing_them(indexed, capsys, tmp_path):
    """An edited [collection] fusion reaches `codehop search` at once (no re-index), and the
    collection keeps what indexing stored."""
    from index.store import Store

    tree, workspace = indexed
    argv = ["search", "heap queue priority queue algorithm", "--json", "--k", "5", "--workspace", str(workspace)]
    code, out, err = _cli(capsys, *argv)
    convex = json.loads(out)["results"]
    rrf_k = 7
    config = tmp_path / "codehop.toml"
    config.write_text(f'[collection]\nfusion = "rrf"\nrrf_k = {rrf_k}\n')
    code_rrf, out, err = _cli(capsys, "--config", str(config), *argv)
    fused = json.loads(out)["results"]
    assert code == code_rrf == 0, err
    # reciprocal rank: the top chunk is first (or tied) in both voters, so its score is 2/(k+1)
    # or just below; a convex score lies in [0, 1] with the top near 1
    assert fused[0]["score"] <= 2 / (rrf_k + 1) + 1e-9 < convex[0]["score"]
    assert fused[0]["path"] == convex[0]["path"] == str(tree / "python/heapq.txt")
    store = Store(workspace / "store.sqlite")
    try:
        assert store.collection("default")["config"]["fusion"] == "auto"
    finally:
        store.close()


def test_bad_input_gives_one_error_line(indexed, capsys, tmp_path):
    tree, workspace = indexed
    ws = ["--workspace", str(workspace)]
    code, out, err = _cli(capsys, "index", str(tmp_path / "missing"), *ws)
    assert code == 3 and err.strip().count("\n") == 0 and "does not exist" in err
    code, out, err = _cli(capsys, "search", "   ", *ws)
    assert code == 2 and err.startswith("codehop: error: empty query")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200))
    code, out, err = _cli(capsys, "index", str(tmp_path / "image.png"), *ws)
    assert code == 2 and "binary file" in err and err.strip().count("\n") == 0
    code, out, err = _cli(capsys, "search", "x", "--collection", "nope", *ws)
    assert code == 3 and "no collection 'nope'" in err
    code, out, err = _cli(capsys, "search", "x", "--workspace", str(tmp_path / "no-ws"))
    assert code == 3 and "no workspace" in err


def test_corrupt_workspace_gives_one_error_line_without_traceback(indexed, capsys, tmp_path):
    _, workspace = indexed
    broken = tmp_path / "ws"
    shutil.copytree(workspace, broken)
    manifest = broken / "collections" / "default" / "manifest.json"
    manifest.write_text(manifest.read_text()[:50])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "codehop", "search", "heap", "--mode", "bm25",
                          "--workspace", str(broken)], capture_output=True, text=True, env=env,
                         timeout=120)
    assert run.returncode == 4 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [run.stderr.strip()] and "manifest" in run.stderr
    code, out, err = _cli(capsys, "index", "--rebuild", "--no-progress", "--workspace", str(broken))
    assert code == 0 and out.startswith("rebuilt ") and "(0 embedded)" in out  # repaired
    code, out, _ = _cli(capsys, "search", "heap queue", "--mode", "bm25", "--json",
                        "--workspace", str(broken))
    assert code == 0 and json.loads(out)["results"][0]["path"].endswith("heapq.txt")
    store = broken / "store.sqlite"
    store.write_bytes(store.read_bytes()[:3000])
    for suffix in ("-wal", "-shm"):
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    code, out, err = _cli(capsys, "search", "heap", "--workspace", str(broken))
    assert code == 4 and err.count("\n") == 1 and "store" in err


def test_a_reader_that_leaves_early_ends_the_command_quietly(indexed, tmp_path):
    """`codehop search ... | head -1`: the pipe closes before codehop writes; no traceback."""
    tree, workspace = indexed
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "codehop.cli", "search", "heap queue",
                                "--workspace", str(workspace)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    process.stdout.close()  # the reader is gone before the first line
    stderr = process.stderr.read().decode(errors="replace")
    assert process.wait(timeout=120) == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_a_broken_pipe_of_the_commands_own_is_not_taken_for_the_reader_leaving(monkeypatch):
    """Only stdout's reader leaving ends quietly: a BrokenPipeError from a pipe the command
    opened itself (a model server's socket, a subprocess) still surfaces."""
    from codehop import cli

    read, write = os.pipe()
    with os.fdopen(write, "w") as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        assert not cli._reader_left()  # someone still reads stdout
        os.close(read)
        assert cli._reader_left()

    def broken(args):
        raise BrokenPipeError("the model server closed the connection")

    monkeypatch.setattr(sys, "stdout", sys.__stdout__)
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(parser, "parse_args", lambda argv: argparse.Namespace(func=broken))
    with pytest.raises(BrokenPipeError):
        cli.main(["search", "x"])


def test_kill_during_indexing_leaves_previous_state_searchable(indexed, capsys, shared_data, tmp_path):
    tree, workspace = indexed
    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws)
    before = _cli(capsys, "search", "heap queue", "--mode", "hybrid", "--json", "--workspace", str(ws))
    # A larger tree: many more devdocs pages (their passages must all be embedded).
    big = tmp_path / "big"
    with gzip.open(shared_data / "coderag" / "devdocs.jsonl.gz", "rt") as handle:
        for number, line in enumerate(handle):
            if number >= 400:
                break
            record = json.loads(line)
            (big / f"page{number:04d}.txt").parent.mkdir(parents=True, exist_ok=True)
            (big / f"page{number:04d}.txt").write_text(record["text"][:600])
    # Small embedding batches: the cache commits every 8 batches (16 passages).
    (tmp_path / "codehop.toml").write_text("[embedding]\nbatch_size = 2\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cache = next((ws / "embeddings").glob("*.sqlite"))
    cached_before = _count_vectors(cache)
    log, marker = tmp_path / "stderr.txt", tmp_path / "committed"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", HOLD_AFTER_FIRST_COMMIT, str(marker), "--config", str(tmp_path / "codehop.toml"),
             "index", str(tree), str(big), "--workspace", str(ws)],
            stderr=stderr, stdout=subprocess.DEVNULL, env=env)
    # Kill once it is really embedding: the child has committed its first batch and holds.
    deadline = time.time() + 150
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists() and process.poll() is None, log.read_text(errors="replace")[-500:]
    committed = int(marker.read_text())
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    assert committed == 16 and _count_vectors(cache) == cached_before + committed  # the work done is kept
    after = _cli(capsys, "search", "heap queue", "--mode", "hybrid", "--json", "--workspace", str(ws))
    assert after[0] == 0 and json.loads(after[1]) == json.loads(before[1])
    code, out, _ = _cli(capsys, "search", "zipfile archive", "--mode", "bm25", "--json", "--k", "50",
                        "--workspace", str(ws))
    paths = {r["path"] for r in json.loads(out)["results"]}
    assert paths and not any(str(big) in p for p in paths)  # nothing of the killed run


def _bad_input_tree(base):
    """A tree with links out of it, a lock file, and Latin-1 and UTF-16 text."""
    outside = base / "outside"
    (outside / "keys").mkdir(parents=True)
    (outside / "id_rsa").write_text("PRIVATE KEY zebraquartz\n")
    (outside / "keys" / "more.txt").write_text("another zebraquartz secret\n")
    tree = base / "tree"
    tree.mkdir()
    (tree / "latin.txt").write_bytes("Le café crème est très réputé à Montréal.\n".encode("latin-1"))
    (tree / "wide.md").write_bytes("# Notes\n\nThe marsupial wombat digs burrows.\n".encode("utf-16"))
    (tree / "poetry.lock").write_text("[[package]]\nname = 'x'\n")
    (tree / "id_rsa.txt").symlink_to(outside / "id_rsa")
    (tree / "keys").symlink_to(outside / "keys", target_is_directory=True)
    return tree


def test_index_of_a_tree_with_special_files_and_links_out_finishes_and_says_why(tmp_path):
    """A FIFO, a unix socket and a device node (where the test may make one) among them."""
    from tests.special_files import special_files

    tree = _bad_input_tree(tmp_path)
    workspace = tmp_path / "ws"
    codehop = [sys.executable, "-m", "codehop"]
    with special_files(tree) as special:
        started = time.monotonic()
        done = subprocess.run(codehop + ["index", str(tree), "--workspace", str(workspace), "--no-progress"],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert elapsed < 120  # before the fix: never (open() of the FIFO waited for a writer)
    err = done.stderr
    for name, reason in special.items():
        assert f"skipped {tree}/{name}: {reason}" in err
    assert f"skipped {tree}/id_rsa.txt: link to a path outside the indexed directories" in err
    assert f"skipped {tree}/keys: link to a directory outside the indexed directories" in err
    summary = next(line for line in err.splitlines() if line.startswith("skipped 2 symbolic links ("))
    assert "1 link to a path outside the indexed directories" in summary
    assert "1 link to a directory outside the indexed directories" in summary
    assert "left out 1 generated artefact (lock files, minified assets, benchmark data: poetry.lock)" in err
    assert "2 added" in done.stdout

    def search(query):
        found = subprocess.run(codehop + ["search", query, "--workspace", str(workspace), "--mode", "bm25",
                                          "--json"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert found.returncode == 0, found.stderr
        return json.loads(found.stdout)

    hits = search("café crème Montréal")
    assert hits["results"][0]["path"].endswith("latin.txt")
    assert search("marsupial wombat")["results"][0]["path"].endswith("wide.md")
    assert search("zebraquartz private key")["results"] == []
