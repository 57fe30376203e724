"""python -m eval_suites.sandbox_bench [--out DIR] [--runs 30]

Per-execution overhead of code_tools.sandbox's jail (bubblewrap + cgroup + seccomp, as an
unprivileged uid) against the plain-subprocess runner, kept only as the explicit unsafe mode:
the same programs, interleaved, p50/p95 wall-clock ms of one `run_python` call each, and
their ratios; one case binds a writable directory (the agent's scratch copy).
"""

from __future__ import annotations

import argparse
import os
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
    load_before = os.getloadavg()[0]
    results = measure_overhead(args.runs)
    load = f"{load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    bwrap = shutil.which("bwrap")
    version = (subprocess.run([bwrap, "--version"], capture_output=True, text=True).stdout.strip()
               if bwrap else "not installed")
    report = Report("Sandbox: per-execution cost of the jail vs the unsafe plain subprocess",
                    settings={"runs": args.runs, "jail": results["jail"], "bwrap": version,
                              "load average (1 min)": load})
    report.results = results
    report.add("Mechanism", f"Jail on this machine: {results['jail']}. As root, each run gets a "
               "fresh unprivileged uid, a private mount namespace that stages the interpreter's "
               "directories for it, a cgroup (memory, pids, CPU share), a seccomp filter and a "
               "new session keyring. The unsafe runner is a plain subprocess (rlimits, own "
               "session, temp dir; no namespaces), run only when asked for explicitly "
               "(`--unsafe-exec`). Both run the program under the same harness (a fork that "
               "reports the real exit status under a per-run nonce), so the difference is the "
               "jail alone.")
    report.add_table("Wall-clock ms per run_python call (interleaved runs)", results["rows"])
    report.add_table("Overhead of the jail", results["overhead"],
                     "Ratios > 1: the jail is slower. The jail's extra cost is bwrap's namespace "
                     "and mount setup, the staged mounts, creating and removing the run's cgroup "
                     "and, with a writable directory, handing it to the jail's uid, measuring it "
                     "against the disk quota and sweeping it (owners, setuid bits) afterwards.")
    print(report.write(args.out).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
