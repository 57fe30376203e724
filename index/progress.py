"""Progress of a long indexing run that a person can read: counts, rate, ETA.

`Rate` estimates throughput over a sliding window (the last `window_s` seconds), so a rate
measured while the model was loading or the machine busy does not linger in the ETA.
`ProgressPrinter` shows a status on a stream: a tqdm bar when the stream is a terminal, else
one plain line every `interval_s` seconds (logs, systemd, docker) and a last line when done.

Example lines (the scan of the files, then the embedding)::

    codehop: scanning default: 120/221 files (54.3%), 1,310 chunks, 40.1 files/s, ETA 3s
    codehop: embedding default: 1,204/2,243 chunks (53.7%), 96/221 documents, 15.2 chunks/s, ETA 1m08s
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from typing import Any, Callable, TextIO


class Rate:
    """Items per second over the last `window_s` seconds of `add` calls."""

    def __init__(self, window_s: float = 30.0) -> None:
        self.window_s = window_s
        self._events: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def add(self, n: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._events.append((now, n))
            while len(self._events) > 2 and now - self._events[1][0] > self.window_s:
                self._events.popleft()

    def per_second(self, now: float | None = None) -> float | None:
        """None until two events span some time (the first event only marks the start)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if len(self._events) < 2:
                return None
            start = self._events[0][0]
            items = sum(n for _, n in list(self._events)[1:])
        span = max(now, self._events[-1][0]) - start
        return items / span if span > 0 else None


def format_duration(seconds: float | None) -> str:
    """`75` -> "1m15s", `3725` -> "1h02m", None -> "?"."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def status_line(status: dict[str, Any]) -> str:
    """One line from a filler status (see index.background.DenseFiller.status)."""
    if status["state"] == "scanning":
        done, total = status["files_done"], status["files_total"]
        share = 100.0 * done / total if total else 0.0
        rate = status.get("rate_files_per_s")
        return (f"codehop: scanning {status['collection']}: {done:,}/{total:,} files ({share:.1f}%), "
                f"{status['files_chunks']:,} chunks" + (f", {rate:.1f} files/s" if rate else ", rate ?")
                + f", ETA {format_duration(status.get('eta_s'))}")
    done, total = status["chunks_done"], status["chunks_total"]
    share = 100.0 * done / total if total else 100.0
    rate = status.get("rate_chunks_per_s")
    text = f"codehop: {status['state']} {status['collection']}: {done:,}/{total:,} chunks ({share:.1f}%)"
    if status.get("documents_total"):
        text += f", {status['documents_done']:,}/{status['documents_total']:,} documents"
    if status["state"] == "embedding":
        text += f", {rate:.1f} chunks/s" if rate else ", rate ?"
        text += f", ETA {format_duration(status.get('eta_s'))}"
    elif status["state"] in ("done", "stopped", "failed") and status.get("elapsed_s") is not None:
        text += f" in {format_duration(status['elapsed_s'])}"
    if status.get("error"):
        text += f" (error: {status['error']})"
    return text


class ProgressPrinter:
    """Shows statuses on `stream`: a bar on a terminal, else a line every `interval_s`.

    `clock` (seconds, monotonic) decides when the next line is due; tests pass their own.
    """

    def __init__(self, stream: TextIO | None = None, interval_s: float = 5.0,
                 tty: bool | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream or sys.stderr
        self.interval_s = interval_s
        self.clock = clock
        self.tty = self.stream.isatty() if tty is None else tty
        self._bar = None
        self._last: float | None = None  # the first status is always shown
        self._lock = threading.Lock()

    def update(self, status: dict[str, Any], final: bool = False) -> None:
        """Show `status`: on a terminal always, else at most one line per `interval_s`
        (and always the `final` one)."""
        with self._lock:
            if self.tty:
                self._update_bar(status, final)
                return
            now = self.clock()
            if final or self._last is None or now - self._last >= self.interval_s:
                self._last = now
                self.stream.write(status_line(status) + "\n")  # one write: other threads log too
                self.stream.flush()

    def watch(self, status: Callable[[], dict[str, Any]], done: Callable[[], bool]) -> threading.Thread:
        """Print `status()` every `interval_s` on a daemon thread until `done()` (a line even
        when no batch finished in between: a person sees the run is alive)."""

        def loop() -> None:
            while not done():
                time.sleep(min(self.interval_s, 1.0) if self.tty else self.interval_s)
                if not done():
                    self.update(status())

        thread = threading.Thread(target=loop, name="codehop-progress", daemon=True)
        thread.start()
        return thread

    def _update_bar(self, status: dict[str, Any], final: bool) -> None:
        from tqdm import tqdm

        scanning = status["state"] == "scanning"
        desc = f"{'scan' if scanning else 'embed'} {status['collection']}"
        if self._bar is not None and self._bar.desc != desc:  # the scan is over: a new bar
            self._bar.close()
            self._bar = None
        total = status["files_total" if scanning else "chunks_total"]
        if self._bar is None:
            self._bar = tqdm(total=total, desc=desc, unit="file" if scanning else "chunk",
                             file=self.stream, leave=False)
        self._bar.total = total
        self._bar.n = status["files_done" if scanning else "chunks_done"]
        self._bar.refresh()
        if final:
            self._bar.close()
            self._bar = None
            print(status_line(status), file=self.stream, flush=True)


class RunStatus:
    """Statuses of a one-shot indexing run (`codehop index`) in the shape `status_line` and
    `ProgressPrinter` read: feed it `Collection.add_paths`'s `on_scan` and `on_embed` steps
    (or `fill_dense`'s) and it adds rates and ETA and hands each status to `show`."""

    def __init__(self, collection: str, show: Callable[..., None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.collection, self.show, self.clock = collection, show, clock
        self.started = clock()
        self.status: dict[str, Any] = {
            "collection": collection, "state": "scanning", "files_done": 0, "files_total": 0,
            "files_chunks": 0, "chunks_done": 0, "chunks_total": 0, "documents_total": 0,
            "documents_done": 0, "rate_files_per_s": None, "rate_chunks_per_s": None,
            "eta_s": None, "elapsed_s": None, "error": None}
        self._files, self._chunks = Rate(30.0), Rate(30.0)
        self._files.add(0, clock())

    def scan(self, step: dict[str, int]) -> None:
        """One `on_scan` step: {"files_done", "files_total", "chunks", ...}."""
        now = self.clock()
        self._files.add(step["files_done"] - self.status["files_done"], now)
        rate = self._files.per_second(now)
        left = step["files_total"] - step["files_done"]
        self.status.update(state="scanning", files_done=step["files_done"],
                           files_total=step["files_total"], files_chunks=step["chunks"],
                           rate_files_per_s=rate, eta_s=left / rate if rate else None)
        self.show(dict(self.status))

    def embed(self, step: dict[str, int]) -> None:
        """One `on_embed` step: {"done", "total"} chunks."""
        now = self.clock()
        if self.status["state"] != "embedding":
            self.status["state"] = "embedding"
            self._chunks.add(0, now)  # the rate counts from the first batch on
        else:
            self._chunks.add(step["done"] - self.status["chunks_done"], now)
        rate = self._chunks.per_second(now)
        self.status.update(chunks_done=step["done"], chunks_total=step["total"],
                           rate_chunks_per_s=rate,
                           eta_s=(step["total"] - step["done"]) / rate if rate else None)
        self.show(dict(self.status))

    def finish(self) -> None:
        """The last status ("done", with the elapsed time), shown whatever the throttle."""
        self.status.update(state="done", elapsed_s=self.clock() - self.started, eta_s=None)
        self.show(dict(self.status), final=True)
