"""python -m eval_suites.lintseq_bench [--out DIR] [--data DIR] [--pylint-programs 60]

LintSeq throughput and edit statistics on the MBPP and HumanEval canonical solutions of
CodeRAG-Bench, single process (programs/s per core), for the fast linter (pyflakes +
compile()) and the reference linter (pylint E/F + bad-indentation), 5 sequences per program.
Side by side with the shortcut docs/methods.md warns about (random deletion without a linter): the
share of its intermediate states that do not lint clean is what the linter loop buys.
Every sequence is replayed and checked to rebuild its program exactly.
pylint costs ~100x pyflakes, so it runs on the first --pylint-programs programs per set.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

from tqdm import tqdm

from code_tools.lintseq import (LintSeqConfig, edit_paths, get_linter, normalize, replay, sample_states,
                                states_to_edit_path)
from eval_suites.report import Report

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def load_programs(data: Path) -> dict[str, list[tuple[str, str]]]:
    """{dataset: [(task id, program)]}: MBPP code; HumanEval prompt + canonical solution."""
    sets = {}
    with open(data / "coderag" / "mbpp_solutions.jsonl") as handle:
        sets["mbpp"] = [(str(r["task_id"]), r["code"]) for r in map(json.loads, handle)]
    with open(data / "coderag" / "humaneval_solutions.jsonl") as handle:
        sets["humaneval"] = [(r["task_id"], r["prompt"] + r["canonical_solution"]) for r in map(json.loads, handle)]
    return sets


def measure(name: str, programs: list[tuple[str, str]], linter: str, samples: int, seed: int,
            ignore_source_errors: bool = False) -> dict:
    config = LintSeqConfig(linter=linter, samples=samples, seed=seed, ignore_source_errors=ignore_source_errors)
    lint = get_linter(linter)
    lint("x = 1\n")  # warm-up (pylint builds its linter once per process)
    edits, lines, exact, clean_src = [], [], 0, 0
    start = time.process_time()
    wall = time.perf_counter()
    for key, code in tqdm(programs, desc=f"{name}/{linter}", unit="prog", leave=False):
        paths = edit_paths(code, config, key=key)
        edits.extend(len(p) for p in paths)
        lines.append(len(normalize(code).splitlines()))
    cpu = time.process_time() - start
    wall = time.perf_counter() - wall
    for key, code in programs:  # correctness check, outside the timed loop
        paths = edit_paths(code, config, key=key)
        exact += all(replay(p) == normalize(code) for p in paths)
        clean_src += not lint(normalize(code))
    return {"dataset": name, "linter": linter + (" (source errors ignored)" if ignore_source_errors else ""),
            "programs": len(programs), "samples": samples,
            "programs/s per core": len(programs) / cpu, "sequences/s per core": len(programs) * samples / cpu,
            "cpu s": cpu, "wall s": wall, "edits per sequence": statistics.mean(edits),
            "edits per sequence (median)": statistics.median(edits), "lines per program": statistics.mean(lines),
            "source lint-clean %": 100 * clean_src / len(programs), "replay exact %": 100 * exact / len(programs)}


def shortcut(name: str, programs: list[tuple[str, str]], samples: int, seed: int) -> dict:
    """Random deletion (with children) and no linter: how many intermediate states are broken?"""
    check = get_linter("pyflakes")
    states = broken = 0
    edits = []
    start = time.process_time()
    for key, code in programs:
        for sample in range(samples):
            rng = random.Random(f"shortcut:{seed}:{key}:{sample}")
            trajectory = sample_states(code, rng, lambda text: set())
            edits.append(len(states_to_edit_path(trajectory)))
            for state in trajectory[1:-1]:
                states += 1
                broken += bool(check(state))
    cpu = time.process_time() - start
    return {"dataset": name, "method": "shortcut: random deletion, no linter", "intermediate states": states,
            "states with lint errors %": 100 * broken / max(1, states), "edits per sequence": statistics.mean(edits),
            "programs/s per core": len(programs) / cpu}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/benchmarks/lintseq_bench")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--pylint-programs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    if not (data / "coderag" / "mbpp_solutions.jsonl").is_file():
        sys.exit(f"no CodeRAG-Bench data under {data}/coderag (pass --data)")
    sets = load_programs(data)
    rows, baseline = [], []
    for name, programs in sets.items():
        rows.append(measure(name, programs, "pyflakes", args.samples, args.seed))
        rows.append(measure(name, programs[:args.pylint_programs], "pylint", args.samples, args.seed))
        if rows[-1]["source lint-clean %"] < 100:
            rows.append(measure(name, programs[:args.pylint_programs], "pylint", args.samples, args.seed,
                                ignore_source_errors=True))
        baseline.append(shortcut(name, programs, args.samples, args.seed))
        ours = next(r for r in rows if r["dataset"] == name and r["linter"] == "pyflakes")
        baseline.append({"dataset": name, "method": "LintSeq (pyflakes loop)",
                         "intermediate states": "", "states with lint errors %": 0.0,
                         "edits per sequence": ours["edits per sequence"],
                         "programs/s per core": ours["programs/s per core"]})
    report = Report("LintSeq: edit-sequence generation throughput (MBPP, HumanEval)",
                    settings={"samples": args.samples, "seed": args.seed, "pylint_programs": args.pylint_programs,
                              "process": "single process, one core"})
    report.add_table("Throughput and edit statistics", rows,
                     note=f"pylint runs on the first {args.pylint_programs} programs of each set. "
                          "'replay exact' = all sequences of a program rebuild it exactly; every "
                          "intermediate state is lint-clean by construction (and by the tests); with source "
                          "errors ignored, clean apart from the errors the program already had on those lines.")
    speed = {(r["dataset"], r["linter"]): r["programs/s per core"] for r in rows}
    report.add("Why pylint finds errors in MBPP sources",
               "Under pylint about half of the MBPP solutions are not clean at the start: every message is "
               "bad-indentation (tab or 2-space indented code), which the reference counts as an error. "
               "Without `ignore_source_errors` (the authors' `ignore_init_errors`, off by default) the first "
               "backward step deletes those lines, so sequences are shorter; the extra row shows the option on.")
    ratios = "\n".join(f"- {d}: pyflakes loop is {speed[(d, 'pyflakes')] / speed[(d, 'pylint')]:.0f}x faster "
                       f"than the pylint reference ({speed[(d, 'pyflakes')]:.1f} vs {speed[(d, 'pylint')]:.2f} "
                       f"programs/s per core)" for d in sets)
    report.add("Linter speed ratio", ratios)
    report.add_table("Versus the shortcut (random deletion without a linter), states checked with pyflakes",
                     baseline)
    report.results = {"throughput": rows, "shortcut": baseline}

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    labels = [f"{r['dataset']}\n{r['linter'].replace(' (source errors ignored)', '*')}" for r in rows]
    axes[0].bar(labels, [r["programs/s per core"] for r in rows], color="tab:blue")
    axes[0].set_yscale("log")
    axes[0].set_title("programs/s per core (5 sequences each)")
    axes[1].bar(labels, [r["edits per sequence"] for r in rows], color="tab:green")
    axes[1].set_title("edits per sequence (mean)")
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    fig.text(0.5, -0.04, "* pylint with ignore_source_errors", ha="center", fontsize=8)
    report.add_figure(fig, out, "lintseq_bench.png", "LintSeq throughput and sequence length")
    print(report.write(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
