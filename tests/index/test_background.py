"""Progressive indexing: BM25 first, vectors later (Collection.fill_dense, DenseFiller).

Runs on the tiny static embedder (tests/static_model.py): fast, deterministic vectors.
"""

import pytest

pytest.importorskip("model2vec")

from index import Collection, CollectionConfig  # noqa: E402
from index.background import DenseFiller  # noqa: E402
from index.progress import ProgressPrinter  # noqa: E402
from tests.static_model import tiny_static_model  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_static_model(tmp_path_factory.mktemp("static") / "tiny")


@pytest.fixture
def config(model):
    return CollectionConfig(embedding_backend="static", embedding_model=str(model))


def _tree(root, files=40, paragraphs=5):
    root.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        text = "\n\n".join(f"Paragraph {p} of file {f}: alpha{f} beta{p} gamma{f * p} " + "filler " * 100
                           for p in range(paragraphs))
        (root / f"doc{f:03d}.txt").write_text(text)
    return root


def _results(collection, query, mode):
    return [(r.id, r.path, r.start_line, round(r.score, 5)) for r in collection.search(query, k=10, mode=mode)]


def test_deferred_commit_serves_bm25_and_says_dense_is_partial(tmp_path, config):
    tree = _tree(tmp_path / "tree")
    with Collection.open(tmp_path / "ws", config=config) as collection:
        report = collection.add_paths([tree], progress=False, defer_dense=True)
        assert report.chunks_embedded == 0 and report.chunks == 200
        assert collection.dense_fraction() == 0.0 and len(collection.pending_ids()) == 200
        assert collection.search("alpha7 beta3", k=1, mode="bm25")[0].path.endswith("doc007.txt")
        assert collection.search("alpha7", k=5, mode="dense") == []  # nothing embedded yet
        assert collection.search("alpha7 beta3", k=1, mode="hybrid")[0].path.endswith("doc007.txt")
        steps = []
        counts = collection.fill_dense(batch_size=64, commit_every_s=0.0, progress=steps.append)
        assert counts["embedded"] == 200 and counts["cached"] == 0 and counts["commits"] >= 3
        assert [s["done"] for s in steps] == [64, 128, 192, 200]
        assert collection.dense_fraction() == 1.0 and not len(collection.pending_ids())
    # the pending state is on disk: a fresh open agrees
    with Collection.open(tmp_path / "ws") as again:
        assert again.dense_fraction() == 1.0 and len(again.search("alpha7", k=5, mode="dense")) == 5


def test_stop_midway_then_resume_reuses_cache_and_equals_one_shot(tmp_path, config):
    tree = _tree(tmp_path / "tree")
    with Collection.open(tmp_path / "ws", config=config) as collection:
        collection.add_paths([tree], progress=False, defer_dense=True)
        calls = iter(range(1000))
        counts = collection.fill_dense(batch_size=50, commit_every_s=3600,
                                       stop=lambda: next(calls) >= 2)  # two batches, then stop
        assert counts["embedded"] == 100 and counts["commits"] == 1
        assert collection.dense_fraction() == pytest.approx(0.5)
        # a third batch reaches the cache but not a commit (as if killed before committing)
        collection.get_vectors(collection.pending_ids()[:50].tolist())
    with Collection.open(tmp_path / "ws") as resumed:
        assert len(resumed.pending_ids()) == 100
        counts = resumed.fill_dense(batch_size=50)
        assert (counts["embedded"], counts["cached"]) == (50, 50)  # nothing embedded twice
        with Collection.open(tmp_path / "one-shot", config=config) as one_shot:
            one_shot.add_paths([tree], progress=False)
            for query in ("alpha3 beta1", "gamma12 filler", "file 39"):
                for mode in ("hybrid", "dense", "bm25"):
                    assert _results(resumed, query, mode) == _results(one_shot, query, mode)


def test_changes_during_a_partial_state_keep_pending_honest(tmp_path, config):
    tree = _tree(tmp_path / "tree", files=10)
    with Collection.open(tmp_path / "ws", config=config) as collection:
        collection.add_paths([tree], progress=False, defer_dense=True)
        collection.fill_dense(batch_size=20, commit_every_s=3600, stop=iter([False, True]).__next__)
        assert len(collection.pending_ids()) == 30
        (tree / "doc009.txt").unlink()  # its chunks leave the pending set and the indexes
        (tree / "new.txt").write_text("brand new text about zeta")
        collection.add_paths([tree], progress=False)  # not deferred: the new chunk is embedded
        pending = collection.pending_ids()
        assert len(pending) == 25 and collection.dense_fraction() == pytest.approx(1 - 25 / 46)
        assert collection.search("zeta", k=1, mode="dense")[0].path.endswith("new.txt")
        collection.fill_dense()
        assert collection.dense_fraction() == 1.0
        assert not [r for r in collection.search("alpha9", k=50, mode="hybrid") if r.path.endswith("doc009.txt")]


def test_repair_after_a_crash_between_store_and_manifest_uses_only_cached_vectors(tmp_path, config):
    tree = _tree(tmp_path / "tree", files=10)
    with Collection.open(tmp_path / "ws", config=config) as collection:
        collection.add_paths([tree], progress=False, defer_dense=True)
        collection.fill_dense(batch_size=20, commit_every_s=3600, stop=iter([False, True]).__next__)
        with collection.store.transaction():  # the store one generation ahead of the manifest
            generation = collection.store.collection(collection.name)["generation"]
            collection.store.set_generation(collection.name, generation + 1)
    with Collection.open(tmp_path / "ws") as repaired:
        assert len(repaired.pending_ids()) == 30 and repaired.embedder.loaded is False


def test_dense_filler_reports_progress_and_lines(tmp_path, config, capsys):
    import io

    tree = _tree(tmp_path / "tree", files=20)
    stream = io.StringIO()
    printer = ProgressPrinter(stream, interval_s=0.0, tty=False)
    with Collection.open(tmp_path / "ws", config=config) as collection:
        collection.add_paths([tree], progress=False, defer_dense=True)
        filler = DenseFiller(collection, batch_size=25, commit_every_s=0.0, on_progress=printer.update)
        assert filler.status()["state"] == "waiting"
        filler.start()
        assert filler.join(30)
        status = filler.status()
    assert status["state"] == "done" and status["chunks_done"] == status["chunks_total"] == 100
    assert status["documents_done"] == status["documents_total"] == 20
    assert status["embedded"] == 100 and status["dense_fraction"] == 1.0 and status["error"] is None
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("codehop: done default: 100/100 chunks (100.0%), 20/20 documents")
    assert any("chunks/s, ETA" in line for line in lines)


def test_the_scan_reports_files_and_chunks_as_it_goes(tmp_path, config):
    import io
    import threading

    tree = _tree(tmp_path / "tree", files=12)
    (tmp_path / "tree" / "unreadable.bin").write_bytes(bytes(range(256)))
    clock = iter(float(t) for t in range(10_000))  # one second per status: a line every 4 statuses
    stream = io.StringIO()
    printer = ProgressPrinter(stream, interval_s=4.0, tty=False, clock=clock.__next__)
    statuses, reached, release = [], threading.Event(), threading.Event()

    def chunker(path, text):  # the real chunkers, but the 7th file waits until the test has looked
        if path.endswith("doc006.txt"):
            reached.set()
            assert release.wait(30)
        return None

    with Collection.open(tmp_path / "ws", config=config) as collection:
        filler = DenseFiller(collection, batch_size=25, on_progress=lambda s, final=False: (
            statuses.append(s), printer.update(s, final=final)), scan=lambda report: collection.add_paths(
                [tree], chunker=chunker, progress=False, defer_dense=True, on_scan=report)).start()
        assert reached.wait(30)
        during = filler.status()  # what /health shows mid-scan
        release.set()
        assert filler.join(30)
        final = filler.status()
    assert during["state"] == "scanning" and during["files_total"] == 13
    assert during["files_done"] == 6 and during["files_chunks"] == 6 * 5  # 5 paragraphs a file
    assert during["chunks_total"] == 0  # nothing committed yet
    scans = [s for s in statuses if s["state"] == "scanning"]
    assert [s["files_done"] for s in scans] == list(range(14))  # listed, then after every file
    assert scans[-1]["files_chunks"] == 60 and final["state"] == "done"
    assert final["chunks_done"] == final["chunks_total"] == 60 and final["files_done"] == 13
    assert filler.scan_result.added == 12 and len(filler.scan_result.skipped) == 1
    lines = stream.getvalue().splitlines()
    scan_lines = [line for line in lines if line.startswith("codehop: scanning")]
    # statuses at clock 0, 1, 2, ...: a line at 0, 4, 8 and 12 (the printer's interval)
    assert scan_lines[0] == "codehop: scanning default: 0/13 files (0.0%), 0 chunks, rate ?, ETA ?"
    assert [line.split(": ")[2].split(" files")[0] for line in scan_lines] == ["0/13", "4/13", "8/13", "12/13"]
    assert all("files/s, ETA" in line for line in scan_lines[1:])
    assert lines[-1].startswith("codehop: done default: 60/60 chunks")


def test_a_stopped_scan_commits_nothing(tmp_path, config):
    import threading

    tree = _tree(tmp_path / "tree", files=6)
    reached, release = threading.Event(), threading.Event()

    def chunker(path, text):
        if path.endswith("doc002.txt"):
            reached.set()
            assert release.wait(30)
        return None

    with Collection.open(tmp_path / "ws", config=config) as collection:
        filler = DenseFiller(collection, scan=lambda report: collection.add_paths(
            [tree], chunker=chunker, progress=False, defer_dense=True, on_scan=report)).start()
        assert reached.wait(30)
        filler.stop(wait=False)
        release.set()
        assert filler.join(30)
        assert filler.status()["state"] == "stopped" and filler.status()["files_done"] == 2
        assert len(collection) == 0  # ended before its commit: the next run scans again


def test_dense_filler_records_a_failure(tmp_path, config):
    tree = _tree(tmp_path / "tree", files=2)
    with Collection.open(tmp_path / "ws", config=config) as collection:
        collection.add_paths([tree], progress=False, defer_dense=True)

        def broken():
            raise RuntimeError("model exploded")

        filler = DenseFiller(collection, prepare=broken).start()
        assert filler.join(30)
        status = filler.status()
        assert status["state"] == "failed" and "model exploded" in status["error"]
        assert collection.search("alpha1", k=1, mode="bm25")  # BM25 still answers


def test_vectors_of_another_backend_are_refused(tmp_path, config, model):
    from runtime.errors import EmbedderMismatchError

    tree = _tree(tmp_path / "tree", files=2)
    with Collection.open(tmp_path / "ws", config=config) as collection:
        collection.add_paths([tree], progress=False)
    with pytest.raises(EmbedderMismatchError, match="rebuild"):
        Collection.open(tmp_path / "ws", config=CollectionConfig(embedding_backend="onnx-int8",
                                                                 embedding_model=str(model)))
