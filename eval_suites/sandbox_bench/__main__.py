"""python -m eval_suites.sandbox_bench [--out DIR] [--runs 30]

Per-execution overhead of code_tools.sandbox's jail (bubblewrap + cgroup) against the old
plain-subprocess runner, kept only as the explicit unsafe mode: the same programs, interleaved,
p50/p95 wall-clock ms of one `run_python` call each, and their ratios.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

from eval_suites.report import Report
from eval_suites.sandbox_bench.overhead import measure_overhead


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval_suites.sandbox_bench")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/sandbox_bench"))
    parser.add_argument("--runs", type=int, default=30, help="runs per program and mechanism")
    args = parser.parse_args(argv)
    results = measure_overhead(args.runs)
    bwrap = shutil.which("bwrap")
    version = (subprocess.run([bwrap, "--version"], capture_output=True, text=True).stdout.strip()
               if bwrap else "not installed")
    report = Report("Sandbox: per-execution cost of the jail vs the unsafe plain subprocess",
                    settings={"runs": args.runs, "jail": results["jail"], "bwrap": version})
    report.results = results
    report.add("Mechanism", f"Jail on this machine: {results['jail']}. The unsafe runner is the "
               "old plain subprocess (rlimits, own session, temp dir; no namespaces), which now "
               "runs only when asked for explicitly (`--unsafe-exec`). The old runner also "
               "wrapped the child in `unshare -rn` where permitted (one more exec, a few ms); "
               "that network namespace alone is not measured here.")
    report.add_table("Wall-clock ms per run_python call (interleaved runs)", results["rows"])
    report.add_table("Overhead of the jail", results["overhead"],
                     "Ratios > 1: the jail is slower. The jail's extra cost is bwrap's namespace "
                     "and mount setup plus creating and removing the run's cgroup.")
    print(report.write(args.out).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
