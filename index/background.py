"""Embedding in the background: a server answers from BM25 at once, dense vectors follow.

`DenseFiller` runs `Collection.fill_dense` on a thread (after an optional `scan` that reads,
chunks and commits the files for BM25, state "scanning") and keeps a status a face can show
(`/health`, LSP work-done progress, a progress line on stderr): chunks and documents done of
the total, vectors embedded now vs found in the cache, rate over the last 30 s, ETA, and the
share of chunks the committed dense index covers (what a search can use right now).

Example::

    filler = DenseFiller(collection, write_lock=rwlock.write, on_progress=printer.update).start()
    ...                       # searches run; each commit makes more of the dense side usable
    filler.stop()             # between batches; what was embedded is committed or cached
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any, Callable

from index.progress import Rate

STATES = ("waiting", "scanning", "loading model", "embedding", "done", "stopped", "failed")


class _Stopped(Exception):
    """Raised from the scan's progress callback to end a scan that was asked to stop."""


class DenseFiller:
    """A thread that embeds a collection's pending chunks and commits them in batches.

    Args:
        collection: an open `index.Collection` (shared with the searches).
        write_lock: context-manager factory held around each commit (a face's RW lock).
        batch_size / commit_every_s: see `Collection.fill_dense`.
        pause_s: sleep between batches, leaving the cores to queries on a small machine.
        on_progress: called with `status()` after every batch (and `final=True` at the end).
        prepare: called on the thread before embedding (default: load the embedder).
        scan: called on the thread first with a progress callback, e.g.
            ``lambda report: collection.add_paths(paths, defer_dense=True, on_scan=report)``:
            while it runs the state is "scanning" with files done/total; `stop` ends it at
            the next file, before its commit (the next run scans again).
    """

    def __init__(self, collection, write_lock: Callable[[], Any] | None = None,
                 batch_size: int = 256, commit_every_s: float = 15.0, pause_s: float = 0.0,
                 on_progress: Callable[..., None] | None = None,
                 prepare: Callable[[], Any] | None = None,
                 scan: Callable[[Callable[[dict[str, int]], None]], Any] | None = None) -> None:
        self.collection = collection
        self.write_lock = write_lock
        self.batch_size, self.commit_every_s, self.pause_s = batch_size, commit_every_s, pause_s
        self.on_progress = on_progress
        self.prepare = prepare or (lambda: collection.embedder.dim)
        self.scan = scan
        self.scan_result: Any = None  # what `scan` returned (e.g. an IndexReport)
        self._scanned: dict[str, int] = {"files_done": 0, "files_total": 0, "chunks": 0}
        self._file_rate = Rate(30.0)
        self.state = "waiting"
        self.error: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._rate = Rate(30.0)
        self._started: float | None = None
        self._finished: float | None = None
        self._embedded = self._cached = self._commits = 0
        self._doc_of: dict[int, int] = {}
        self._pending: set[int] = set()
        self._doc_pending: Counter = Counter()
        self._documents_total = 0
        self._thread = threading.Thread(target=self._run, name=f"codehop-embed-{collection.name}",
                                        daemon=True)

    # ---- control

    def start(self) -> "DenseFiller":
        self._snapshot()
        self._thread.start()
        return self

    def stop(self, wait: bool = True, timeout: float | None = None) -> None:
        """Ask the thread to stop after its current batch (committing what it embedded)."""
        self._stop.set()
        if wait and self._thread.is_alive():
            self._thread.join(timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the end; True when the thread has finished."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def done(self) -> bool:
        return self.state in ("done", "stopped", "failed")

    # ---- status

    def status(self) -> dict[str, Any]:
        """What a face reports: counts, rate, ETA and the committed dense share."""
        with self._lock:
            total = len(self._doc_of)
            done = total - len(self._pending)
            docs_open = sum(1 for n in self._doc_pending.values() if n > 0)
            rate = self._rate.per_second()
            file_rate = self._file_rate.per_second()
            files_left = self._scanned["files_total"] - self._scanned["files_done"]
            end = self._finished or time.monotonic()
            status = {
                "collection": self.collection.name, "state": self.state,
                "chunks_total": total, "chunks_done": done,
                "documents_total": self._documents_total,
                "documents_done": max(0, self._documents_total - docs_open),
                "embedded": self._embedded, "reused_from_cache": self._cached,
                "commits": self._commits,
                "files_total": self._scanned["files_total"], "files_done": self._scanned["files_done"],
                "files_chunks": self._scanned["chunks"],
                "rate_files_per_s": None if file_rate is None else round(file_rate, 2),
                "rate_chunks_per_s": None if rate is None else round(rate, 2),
                # of the phase running: the scan's files, then the pending chunks
                "eta_s": (None if not file_rate else round(files_left / file_rate, 1))
                if self.state == "scanning" else (None if not rate else round(len(self._pending) / rate, 1)),
                "elapsed_s": None if self._started is None else round(end - self._started, 1),
                "error": self.error,
            }
        try:
            status["dense_fraction"] = round(self.collection.dense_fraction(), 4)
        except Exception:  # a status must not fail because the collection is mid-repair
            status["dense_fraction"] = None
        return status

    # ---- the thread

    def _snapshot(self) -> None:
        """Totals from the store and the committed pending set (again when new chunks appear)."""
        store, name = self.collection.store, self.collection.name
        doc_of = store.chunk_documents(name)
        pending = {int(i) for i in self.collection.pending_ids()}
        with self._lock:
            self._doc_of = doc_of
            self._pending = pending & doc_of.keys()
            self._doc_pending = Counter(doc_of[i] for i in self._pending)
            self._documents_total = store.counts(name)["documents"]

    def _progress(self, step: dict[str, Any]) -> None:
        if any(i not in self._doc_of for i in step["ids"]):
            self._snapshot()  # another writer added chunks since the snapshot
        with self._lock:
            self._rate.add(step["embedded"] - self._embedded)
            self._embedded, self._cached = step["embedded"], step["cached"]
            self._commits = step.get("commits", self._commits)
            for i in step["ids"]:
                if i in self._pending:
                    self._pending.discard(i)
                    self._doc_pending[self._doc_of[i]] -= 1
        self._report()

    def _scan_progress(self, step: dict[str, int]) -> None:
        if self._stop.is_set():
            raise _Stopped()
        with self._lock:
            self._file_rate.add(step["files_done"] - self._scanned["files_done"])
            self._scanned = {key: step[key] for key in ("files_done", "files_total", "chunks")}
        self._report()

    def _report(self, final: bool = False) -> None:
        if self.on_progress is not None:
            try:
                self.on_progress(self.status(), final=final)
            except Exception:  # a broken reporter must not stop the embedding
                pass

    def _run(self) -> None:
        self._started = time.monotonic()
        try:
            if self.scan is not None:
                self.state = "scanning"  # reported once the files are listed (`_scan_progress`)
                self._file_rate.add(0)
                self.scan_result = self.scan(self._scan_progress)
                self._snapshot()  # the chunks the scan left pending
            if not self._pending:
                self.state = "done"
                return
            self.state = "loading model"
            self._report()
            self.prepare()
            self.state = "embedding"
            self._rate.add(0)
            counts = self.collection.fill_dense(
                batch_size=self.batch_size, commit_every_s=self.commit_every_s,
                progress=self._progress, stop=lambda: self._stop.wait(self.pause_s),
                write_lock=self.write_lock)
            self._commits = counts["commits"]
            self._snapshot()
            self.state = "stopped" if self._stop.is_set() and self._pending else "done"
        except _Stopped:
            self.state = "stopped"
        except Exception as error:  # recorded and shown; searches keep working on BM25
            self.error = f"{type(error).__name__}: {error}"
            self.state = "failed"
        finally:
            self._finished = time.monotonic()
            self._report(final=True)
