"""Per-execution cost of the sandbox: the same programs, jail vs the unsafe plain subprocess.

Runs are interleaved (jail, unsafe, jail, unsafe, ...) so that load on shared cores hits both
mechanisms alike; each figure is a wall-clock time of one whole `run_python` call.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from code_tools.sandbox import SandboxLimits, run_python, sandbox_status

# A trivial program (pure start-up cost) and one that imports numpy (a DS-1000-like import).
PROGRAMS = {"print": "print(1)", "import numpy": "import numpy\nprint(numpy.ones(3).sum())"}
# The agent's case: a writable scratch copy, which the jail hands to its uid, measures against
# the disk quota and sweeps afterwards (owners, setuid bits). `print(1)` with this many files.
WRITABLE_FILES = 500


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure_overhead(runs: int = 20, programs: dict[str, str] = PROGRAMS,
                     limits: SandboxLimits = SandboxLimits(timeout_s=60, cpu_s=30, memory_mb=2048)) -> dict:
    """p50/p95 ms per execution of each program under the jail and the unsafe runner.

    Returns {"jail": sandbox_status().describe(), "rows": [{program, mechanism, p50_ms, p95_ms,
    mean_ms}], "overhead": [{program, p50 jail - unsafe ms, ratio p50}]}.
    """
    unsafe = replace(limits, isolation="unsafe")
    rows, overhead = [], []
    scratch = _scratch(WRITABLE_FILES)
    cases = [(name, code, ()) for name, code in programs.items()]
    cases.append((f"print, writable dir of {WRITABLE_FILES} files", "print(1)", (str(scratch),)))
    try:
        for name, code, writable in cases:
            _measure(name, code, writable, runs, limits, unsafe, rows, overhead)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"jail": sandbox_status(limits).describe(), "rows": rows, "overhead": overhead}


def _scratch(files: int) -> Path:
    """A scratch directory like the agent's repository copy: `files` small files in 10 dirs."""
    root = Path(tempfile.mkdtemp(prefix="codehop-sandbox-bench-"))
    for i in range(files):
        sub = root / f"pkg{i % 10}"
        sub.mkdir(exist_ok=True)
        (sub / f"module{i}.py").write_text(f"VALUE = {i}\n")
    return root


def _measure(name: str, code: str, writable: tuple[str, ...], runs: int, limits: SandboxLimits,
             unsafe: SandboxLimits, rows: list, overhead: list) -> None:
    """Interleaved runs of one case under both mechanisms; appends its rows."""
    times: dict[str, list[float]] = {"jail": [], "unsafe": []}
    for limits_i in (limits, unsafe):  # warm the page cache and the probes
        run_python(code, limits_i, writable)
    for _ in range(runs):
        for label, limits_i in (("jail", limits), ("unsafe", unsafe)):
            started = time.perf_counter()
            result = run_python(code, limits_i, writable)
            times[label].append((time.perf_counter() - started) * 1000)
            if not result.passed:
                raise RuntimeError(f"{label} run of {name!r} failed: {result.stderr[-500:]}")
    stats = {}
    for label, values in times.items():
        stats[label] = {"p50": statistics.median(values), "p95": _percentile(values, 0.95)}
        rows.append({"program": name, "mechanism": label, "runs": runs,
                     "p50 ms": round(stats[label]["p50"], 1), "p95 ms": round(stats[label]["p95"], 1),
                     "mean ms": round(statistics.fmean(values), 1)})
    overhead.append({"program": name,
                     "jail - unsafe p50 ms": round(stats["jail"]["p50"] - stats["unsafe"]["p50"], 1),
                     "jail / unsafe p50": round(stats["jail"]["p50"] / stats["unsafe"]["p50"], 2),
                     "jail / unsafe p95": round(stats["jail"]["p95"] / stats["unsafe"]["p95"], 2)})
