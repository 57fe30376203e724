"""Progress lines a person can read: rate over a window, durations, line cadence off a tty."""

import io

from index.progress import ProgressPrinter, Rate, RunStatus, format_duration, status_line

STATUS = {"collection": "default", "state": "embedding", "chunks_total": 2243, "chunks_done": 1204,
          "documents_total": 221, "documents_done": 96, "rate_chunks_per_s": 15.24, "eta_s": 68.2,
          "elapsed_s": 80.0, "error": None}


def test_rate_counts_only_the_recent_window():
    rate = Rate(window_s=10)
    assert rate.per_second(now=0) is None
    rate.add(0, now=0)  # the start mark
    rate.add(100, now=10)
    assert rate.per_second(now=10) == 10.0
    rate.add(10, now=30)  # the first 100 items fall out of the window
    assert rate.per_second(now=30) == 0.5


def test_durations_and_lines():
    assert [format_duration(s) for s in (None, 4.4, 75, 3725)] == ["?", "4s", "1m15s", "1h02m"]
    assert status_line(STATUS) == ("codehop: embedding default: 1,204/2,243 chunks (53.7%), "
                                   "96/221 documents, 15.2 chunks/s, ETA 1m08s")
    done = {**STATUS, "state": "done", "chunks_done": 2243, "documents_done": 221}
    assert status_line(done).endswith("2,243/2,243 chunks (100.0%), 221/221 documents in 1m20s")
    failed = {**STATUS, "state": "failed", "error": "boom", "documents_total": 0}
    assert "documents" not in status_line(failed) and status_line(failed).endswith("(error: boom)")


def test_printer_writes_a_line_per_interval_off_a_terminal():
    stream = io.StringIO()
    printer = ProgressPrinter(stream, interval_s=3600, tty=False)
    printer.update(STATUS)
    printer.update({**STATUS, "chunks_done": 1300})  # within the interval: not printed
    printer.update({**STATUS, "state": "done", "chunks_done": 2243}, final=True)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "1,204/2,243" in lines[0] and lines[1].startswith("codehop: done")


SCAN = {**STATUS, "state": "scanning", "chunks_total": 0, "chunks_done": 0, "files_total": 221,
        "files_done": 120, "files_chunks": 1310, "rate_files_per_s": 40.1, "eta_s": 2.5}


def test_the_scan_has_its_own_line_and_bar():
    assert status_line(SCAN) == ("codehop: scanning default: 120/221 files (54.3%), 1,310 chunks, "
                                 "40.1 files/s, ETA 2s")
    assert status_line({**SCAN, "files_done": 0, "files_chunks": 0, "rate_files_per_s": None, "eta_s": None}) == \
        "codehop: scanning default: 0/221 files (0.0%), 0 chunks, rate ?, ETA ?"
    stream = io.StringIO()
    printer = ProgressPrinter(stream, tty=True)  # a bar per phase: files, then chunks
    printer.update(SCAN)
    assert printer._bar.desc == "scan default" and (printer._bar.n, printer._bar.total) == (120, 221)
    printer.update(STATUS)
    assert printer._bar.desc == "embed default" and (printer._bar.n, printer._bar.total) == (1204, 2243)
    printer.update({**STATUS, "state": "done", "chunks_done": 2243, "documents_done": 221}, final=True)
    assert printer._bar is None and stream.getvalue().endswith("2,243/2,243 chunks (100.0%), 221/221 documents in 1m20s\n")


def test_a_one_shot_run_reports_rates_and_eta_per_phase():
    """`codehop index` off a terminal: the scan's and the embedding's steps become lines with
    counts, a rate over the recent window and the ETA it implies, then a last 'done' line."""
    now = [0.0]
    stream = io.StringIO()
    printer = ProgressPrinter(stream, interval_s=5, tty=False, clock=lambda: now[0])
    run = RunStatus("docs", printer.update, clock=lambda: now[0])
    run.scan({"files_done": 0, "files_total": 40, "chunks": 0})
    now[0] = 2.0
    run.scan({"files_done": 10, "files_total": 40, "chunks": 120})  # within 5 s: throttled
    now[0] = 8.0
    run.scan({"files_done": 40, "files_total": 40, "chunks": 480})
    now[0] = 10.0
    run.embed({"done": 100, "total": 480})  # starts the rate: none yet
    now[0] = 20.0
    run.embed({"done": 300, "total": 480})  # 200 chunks in 10 s -> 20/s, 180 left -> 9 s
    now[0] = 21.0
    run.finish()
    lines = stream.getvalue().splitlines()
    assert lines == [
        "codehop: scanning docs: 0/40 files (0.0%), 0 chunks, rate ?, ETA ?",
        "codehop: scanning docs: 40/40 files (100.0%), 480 chunks, 5.0 files/s, ETA 0s",
        "codehop: embedding docs: 300/480 chunks (62.5%), 20.0 chunks/s, ETA 9s",
        "codehop: done docs: 300/480 chunks (62.5%) in 21s",
    ]
